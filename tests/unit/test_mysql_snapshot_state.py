"""The MySQL source's state document across a restart of an initial snapshot (no server needed)."""

import orjson

from lakeward.connectors.mysql.snapshot import (
    BinlogPoint,
    ChunkProgress,
    key_condition,
    key_from_json,
    key_to_json,
)
from lakeward.connectors.mysql.source import SourceState, carry_on_snapshot
from lakeward.core.snapshot import IncrementalJob


def test_state_round_trips_progress_and_jobs():
    state = SourceState("e", "mariadb:1", BinlogPoint("mysql-bin.000003", 42, "0-1-7"), {"d.a": "00"}, False,
                        {"d.b": ChunkProgress("01", 9, 4, [7, "x"], 4000)}, [IncrementalJob("resume", "d.c", "resume", after=[3])])
    back = SourceState.from_json(state.to_json())
    assert back == state
    old = SourceState.from_json(b'{"epoch": "e", "server": "s", "resume": null, "tables": ["d.a"]}')
    assert old.progress == {} and old.jobs == [] and old.tables == {"d.a": ""}


def test_restart_turns_progress_into_what_continues_it():
    state = SourceState("e", "s", BinlogPoint("f.000001", 4), {"d.done": "aa"}, False, {
        "d.keyed": ChunkProgress("bb", 10, 3, [300], 3000),  # with a key, in part: a resume job
        "d.keyless": ChunkProgress("cc", 1, 0),  # without a key: read whole again
        "d.started": ChunkProgress("dd", 10, 0),  # no chunk acknowledged: read whole again
        "d.finished": ChunkProgress("ee", 2, 2, [9], 20),  # the last chunk acknowledged
        "d.gone": ChunkProgress("ff", 5, 2, [1], 2),  # no longer captured
    })
    assert carry_on_snapshot(state, {"d.done", "d.keyed", "d.keyless", "d.started", "d.finished"})
    assert state.tables == {"d.done": "aa", "d.keyed": "bb", "d.finished": "ee"}
    assert state.jobs == [IncrementalJob("resume", "d.keyed", "resume", after=[300])]
    assert state.progress == {}
    assert not carry_on_snapshot(state, {"d.keyed"})  # nothing left to settle
    state.progress["d.keyed"] = ChunkProgress("bb", 10, 3, [300], 3000)
    assert carry_on_snapshot(state, {"d.keyed"}) and len(state.jobs) == 1  # the job is not added twice


def test_keys_survive_json_and_lay_out_as_query_arguments():
    assert key_from_json(orjson.loads(orjson.dumps(key_to_json((5, b"\x00\xff"))))) == [5, b"\x00\xff"]
    sql, args = key_condition(("a", "b"), ">")
    assert sql == "`a` >= %s AND ((`a` > %s) OR (`a` = %s AND `b` > %s))"
    assert args([1, 2]) == [1, 1, 1, 2]
    sql, args = key_condition(("a", "b"), "<=")
    assert sql == "`a` <= %s AND ((`a` < %s) OR (`a` = %s AND `b` <= %s))"
    assert key_condition(("a",), ">")[0] == "`a` > %s"
