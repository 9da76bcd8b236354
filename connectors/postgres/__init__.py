"""PostgreSQL source (`type: postgres`): logical replication with pgoutput, through psycopg 3.

config.py holds the config class, source.py the Source; see lakeward.core.registry.
"""
