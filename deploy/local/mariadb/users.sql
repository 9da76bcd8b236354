-- Replication/test user for Lakeward's local MariaDB (applied by deploy/local/services.sh
-- as root over the unix socket; idempotent: re-applied when this file changes).
--
-- A production CDC user needs only:
--   GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SELECT, RELOAD ON *.* TO ...
-- The tests also create and drop their own databases, hence ALL PRIVILEGES here.

-- account changes stay out of the binlog the CDC tests read
SET SESSION sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'lakeward'@'127.0.0.1' IDENTIFIED BY 'lakeward';
CREATE USER IF NOT EXISTS 'lakeward'@'localhost' IDENTIFIED BY 'lakeward';
ALTER USER 'lakeward'@'127.0.0.1' IDENTIFIED BY 'lakeward';
ALTER USER 'lakeward'@'localhost' IDENTIFIED BY 'lakeward';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SELECT, RELOAD ON *.* TO 'lakeward'@'127.0.0.1';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SELECT, RELOAD ON *.* TO 'lakeward'@'localhost';
GRANT ALL PRIVILEGES ON *.* TO 'lakeward'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'lakeward'@'localhost';
