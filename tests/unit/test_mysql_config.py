"""The `type: mysql` source config: the issue's example as written, masking, the startup checks' verdicts."""

from __future__ import annotations

import pytest

from lakeward.connectors.mysql.catalog import SETUP_VARIABLES, setup_problem
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.core.config import config_as_dict, parse_config
from lakeward.core.errors import ConfigError

EXAMPLE = """\
sources:
  - name: legacy
    type: mysql
    host: ${LEGACY_HOST:127.0.0.1}
    port: 3306
    user: ${LEGACY_USER:lakeward}
    password: ${LEGACY_PASSWORD:lakeward}
    tables: [inventory.*]
"""


def test_example_is_accepted_as_written(monkeypatch):
    for var in ("LEGACY_HOST", "LEGACY_USER", "LEGACY_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    src = parse_config(EXAMPLE, "lakeward.yaml").sources[0]
    assert isinstance(src, MySQLSourceConfig)
    assert (src.host, src.port, src.user, src.password, src.tables) == ("127.0.0.1", 3306, "lakeward", "lakeward", ["inventory.*"])
    assert 1_000_000 <= src.effective_server_id < 2_000_000
    assert src.effective_server_id == MySQLSourceConfig(name="legacy", user="u", tables=["a.*"]).effective_server_id


def test_password_is_masked(monkeypatch):
    monkeypatch.setenv("LEGACY_PASSWORD", "s3cret")
    shown = config_as_dict(parse_config(EXAMPLE))["sources"][0]
    assert shown["password"] == "***" and "s3cret" not in repr(shown)


def test_typo_is_named():
    with pytest.raises(ConfigError, match=r"sources\[0\].tabels: unknown key 'tabels'; did you mean 'tables'\?"):
        parse_config(EXAMPLE.replace("tables:", "tabels:"), "lakeward.yaml")


GOOD = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL", "log_bin_compress": "OFF"}
WHERE = "MariaDB at db1:3306"


def problem(**changes) -> str | None:
    privs = changes.pop("privs", {"ALL PRIVILEGES"})
    flavor, version = changes.pop("flavor", "mariadb"), changes.pop("version", "10.11.6-MariaDB")
    return setup_problem(WHERE, flavor, version, {**GOOD, **changes}, privs, "cdc")


def test_a_well_set_up_server_passes():
    assert set(GOOD) <= set(SETUP_VARIABLES)
    assert problem() is None
    assert problem(privs={"REPLICATION SLAVE", "BINLOG MONITOR", "SELECT"}) is None
    assert problem(flavor="mysql", version="8.0.36", privs={"REPLICATION SLAVE", "REPLICATION CLIENT", "RELOAD"}) is None


def test_binlog_off():
    msg = problem(log_bin="OFF")
    assert msg.startswith("MariaDB at db1:3306 has the binary log off (log_bin=OFF)") and "config file and restart" in msg


@pytest.mark.parametrize(("name", "bad"), [("binlog_format", "STATEMENT"), ("binlog_row_image", "MINIMAL"), ("binlog_row_metadata", "MINIMAL")])
def test_row_settings(name, bad):
    assert f"has {name}={bad}; Lakeward needs" in problem(**{name: bad})


def test_compression_is_refused():
    assert "log_bin_compress=ON: compressed binlog events cannot be decoded" in problem(log_bin_compress="ON")
    msg = problem(flavor="mysql", version="8.0.36", binlog_transaction_compression="ON")
    assert "binlog_transaction_compression=ON" in msg and "SET GLOBAL binlog_transaction_compression = OFF" in msg


def test_old_versions_and_missing_privileges():
    assert "needs MariaDB 10.5+ or MySQL 8.0.14+" in problem(version="10.3.39-MariaDB")
    assert "needs MariaDB 10.5+ or MySQL 8.0.14+" in problem(flavor="mysql", version="5.7.44")
    assert "user 'cdc' on MariaDB at db1:3306 lacks REPLICATION SLAVE, BINLOG MONITOR" in problem(privs={"USAGE"})
    assert "lacks RELOAD" in problem(flavor="mysql", version="8.0.36", privs={"REPLICATION SLAVE", "REPLICATION CLIENT"})
