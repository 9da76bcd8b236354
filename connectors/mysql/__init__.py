"""MySQL / MariaDB source (`type: mysql`): row-based binlog through python-mysql-replication.

config.py holds the config class, source.py the Source; see lakeward.core.registry.
"""
