"""`lakeward status` of sources: SourceStatus as JSON and as the Sources table."""

from __future__ import annotations

import io

from rich.console import Console

from lakeward.app import cli
from lakeward.core.snapshot import TableProgress
from lakeward.core.source import SourceStatus


def test_json_has_the_common_fields_then_the_source_specific_ones():
    status = SourceStatus("inv", "mysql", "binlog, server_id 5", exists=True, confirmed="b.000003:400", lag_bytes=12, active=False,
                          snapshot=[TableProgress("d.t", "initial", 5, chunks_done=1, chunks=3)], details={"gtid": "0-1-9"})
    assert status.to_dict() == {
        "source": "inv", "type": "mysql", "capture": "binlog, server_id 5", "exists": True, "confirmed": "b.000003:400", "lag_bytes": 12,
        "active": False, "snapshot": [{"table": "d.t", "kind": "initial", "rows": 5, "estimate": None, "chunks_done": 1, "chunks": 3,
                                       "done": False}], "gtid": "0-1-9"}
    assert SourceStatus("shop", "postgres", error="cannot connect [x]").to_dict() == {"source": "shop", "type": "postgres",
                                                                                    "error": "cannot connect [x]"}


def test_table_shows_position_missing_place_and_errors():
    report = {"sources": [SourceStatus("shop", "postgres", "slot lw_shop", exists=True, confirmed="0/16B3F10", lag_bytes=0, active=True),
                          SourceStatus("new", "postgres", "slot lw_new"),
                          SourceStatus("inv", "mysql", error="MySQL at db:3306: connection refused [2003]")], "sinks": []}
    out = io.StringIO()
    cli.print_status(report, Console(file=out, width=200, color_system=None))
    lines = out.getvalue().splitlines()
    shop = next(line for line in lines if "shop" in line)
    assert ["shop", "postgres", "slot lw_shop", "True", "0/16B3F10", "0"] == [c.strip() for c in shop.split("│")[1:-1]]
    new = next(line for line in lines if " new " in line)
    assert "missing" in new
    inv = next(line for line in lines if "inv" in line)
    assert "connection refused [2003]" in inv  # the error as written, not read as markup
