"""MySQL/MariaDB source (`type: mysql`): the binlog through python-mysql-replication and PyMySQL.

config.py holds the config class, source.py the Source (see lakeward.core.registry); binlog.py is
the reader thread (snapshot, then binlog), decode.py decodes row images, snapshot.py takes
consistent snapshots, history.py keeps the schema history, types.py maps column types, catalog.py
talks SQL to the server, tables.py builds a table's schema and decoders.
"""
