"""The pure parts of the binlog reader: where the stream is (GTIDs, resume points), the established
tables, and how driver errors reach the runner."""

from __future__ import annotations

import pymysql

from lakeward.connectors.mysql import errors
from lakeward.connectors.mysql.catalog import ER_MASTER_FATAL_READING_BINLOG
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.gtid import GtidState, StreamPosition
from lakeward.connectors.mysql.handover import Established
from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.stream import decode_row_pairs, decode_rows
from lakeward.core.errors import ConnectionFailed, SourceSetupError, TerminalError, TransientError
from lakeward.core.retry import is_retriable


def test_mariadb_gtid_state_keeps_one_gtid_per_domain():
    state = GtidState("0-1-5,1-2-7", mariadb=True)
    state.commit("0-1-6")
    state.commit(None)  # a transaction without a GTID changes nothing
    state.commit("2-1-1")
    assert state.text == "0-1-6,1-2-7,2-1-1"


def test_mysql_gtid_state_merges_into_the_executed_set():
    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    state = GtidState(f"{uuid}:1-5", mariadb=False)
    state.commit(f"{uuid}:6")
    assert state.text == f"{uuid}:1-6"


def test_stream_position_resumes_after_whole_transactions():
    at = StreamPosition(BinlogPoint("bin.000007", 400, "0-1-5"), mariadb=True)
    assert (at.file_index, at.file_json, at.txn_pos) == (7, b'"bin.000007"', None)
    at.gtid_event(400, "0-1-6", standalone=False)
    assert at.event(480) == 400, "a transaction's positions start at its GTID event"
    at.rows = True
    assert at.commit(900) == BinlogPoint("bin.000007", 900, "0-1-6")
    assert (at.txn_pos, at.gtid, at.gtid_json, at.rows) == (None, None, b"null", False)
    assert at.event(950) == 950, "without a GTID event the first event starts the transaction"
    at.gtid_event(1000, "0-1-7", standalone=None)
    at.abandon()  # an XA PREPARE: its GTID is not committed
    at.rotate("bin.000008")
    assert at.commit(4) == BinlogPoint("bin.000008", 4, "0-1-6") and at.file_index == 8


def test_established_tables_are_shared_until_they_change():
    tables = Established({"d.a": "", "d.b": b"\x05".hex()})
    first = tables.now()
    assert tables.now() is first and "d.a" in tables and tables.names() == ["d.a", "d.b"]
    assert tables.snapshotted_since("d.b", b"\x04") and not tables.snapshotted_since("d.b", b"\x05")
    assert not tables.snapshotted_since("d.a", b"\x00"), "never snapshotted"
    tables.set("d.a", None)
    assert tables.now() is not first and tables.now() == {"d.b": "05"} and first == {"d.a": "", "d.b": "05"}


def test_rows_events_decode_every_image():
    def image(data: bytes, p: int) -> tuple[dict, int]:
        return {"v": data[p]}, p + 1

    assert decode_rows(image, b"\x00\x01\x02\x03", 1, 4) == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert decode_row_pairs(image, image, b"\x01\x02\x03\x04", 0, 4) == [({"v": 1}, {"v": 2}), ({"v": 3}, {"v": 4})]


def test_driver_errors_become_lakeward_errors():
    cfg = MySQLSourceConfig(name="inv", host="db", port=3306, user="u", tables=["d.*"])
    purged = errors.classify(pymysql.err.OperationalError(ER_MASTER_FATAL_READING_BINLOG, "Could not find first log file"), cfg)
    assert isinstance(purged, SourceSetupError) and "delete its state topic (<prefix>.inv.__state)" in str(purged)
    assert not is_retriable(purged)
    changed = errors.classify(pymysql.err.OperationalError(1412, "Table definition has changed"), cfg)
    assert isinstance(changed, TransientError) and is_retriable(changed)
    lost = errors.classify(pymysql.err.OperationalError(2013, "Lost connection"), cfg)
    assert isinstance(lost, ConnectionFailed) and str(lost) == "MySQL at db:3306: Lost connection (error 2013)" and is_retriable(lost)
    assert isinstance(errors.classify(ConnectionResetError("reset"), cfg), ConnectionFailed)
    terminal = TerminalError("x")
    assert errors.classify(terminal, cfg) is terminal
    assert "log_bin_compress=ON" in str(errors.compressed_event(cfg, 0xA9, "bin.000001:4"))
