"""The pure parts of MySQL incremental snapshots: keyset queries, stored keys, positions, job bookkeeping, state."""

from __future__ import annotations

from lakeward.connectors.mysql import incremental
from lakeward.connectors.mysql.catalog import Server
from lakeward.connectors.mysql.config import MySQLSourceConfig
from lakeward.connectors.mysql.history import parse_ddl
from lakeward.connectors.mysql.incremental import (
    INCREMENTAL_SEQUENCE_BASE,
    Chunk,
    Jobs,
    chunk_args,
    chunk_query,
    decode_key,
    encode_key,
    last_key_query,
    touches,
)
from lakeward.connectors.mysql.snapshot import BinlogPoint
from lakeward.connectors.mysql.source import SourceState
from lakeward.connectors.mysql.types import ColumnDef
from lakeward.core.events import Position
from lakeward.core.snapshot import IncrementalJob


def col(name: str, data_type: str = "int") -> ColumnDef:
    return ColumnDef(name, data_type, data_type, True)


def test_chunk_query_single_key():
    defs = [col("id"), col("f", "float")]
    assert chunk_query("d", "t", defs, ("id",), False, None, 100) == "SELECT `id`, (`f` + 0E0) FROM `d`.`t` ORDER BY `id` LIMIT 100"
    assert chunk_query("d", "t", defs, ("id",), True, "f > 1 OR id = 3", 100) == (
        "SELECT `id`, (`f` + 0E0) FROM `d`.`t` WHERE (`id` > %s) AND (f > 1 OR id = 3) ORDER BY `id` LIMIT 100")
    assert chunk_args([7]) == [7]


def test_chunk_query_composite_key_is_an_index_range():
    defs = [col("a"), col("b"), col("c")]
    sql = chunk_query("d", "t", defs, ("a", "b"), True, None, 10)
    assert sql == ("SELECT `a`, `b`, `c` FROM `d`.`t` WHERE (`a` >= %s AND ((`a` > %s) OR (`a` = %s AND `b` > %s))) "
                   "ORDER BY `a`, `b` LIMIT 10")
    assert chunk_args([1, "x"]) == [1, 1, 1, "x"]
    assert chunk_args(None) == []


def test_chunk_query_stops_at_the_jobs_last_key():
    defs = [col("a"), col("b"), col("c")]
    sql = chunk_query("d", "t", defs, ("a", "b"), True, "c > 0", 10, until=True)
    assert sql == ("SELECT `a`, `b`, `c` FROM `d`.`t` WHERE (`a` >= %s AND ((`a` > %s) OR (`a` = %s AND `b` > %s))) "
                   "AND (`a` <= %s AND ((`a` < %s) OR (`a` = %s AND `b` <= %s))) AND (c > 0) ORDER BY `a`, `b` LIMIT 10")
    assert chunk_args([1, "x"], [9, "z"]) == [1, 1, 1, "x", 9, 9, 9, "z"]
    assert chunk_query("d", "t", defs[:1], ("a",), False, None, 10, until=True) == "SELECT `a` FROM `d`.`t` WHERE (`a` <= %s) ORDER BY `a` LIMIT 10"
    assert chunk_args(None, [9]) == [9]
    assert last_key_query("d", "t", [col("a"), col("f", "float")], ("f", "a"), "a > 1") == (
        "SELECT (`f` + 0E0), `a` FROM `d`.`t` WHERE (a > 1) ORDER BY `f` DESC, `a` DESC LIMIT 1")


def test_keys_survive_the_state_document():
    key = [1, "text", b"\x00\xff", "2024-01-01 00:00:00", "1.50"]
    stored = encode_key(key)
    assert stored[2] == {"hex": "00ff"}
    import orjson
    assert decode_key(orjson.loads(orjson.dumps(stored))) == key


def test_which_statements_touch_the_table():
    assert touches(parse_ddl("ALTER TABLE t ADD COLUMN x int", "d"), "d.t")
    assert not touches(parse_ddl("ALTER TABLE u ADD COLUMN x int", "d"), "d.t")
    assert touches(parse_ddl("RENAME TABLE d.t TO d.t2", "x"), "d.t")
    assert touches(parse_ddl("TRUNCATE t", "d"), "d.t")
    assert touches(parse_ddl("DROP DATABASE d", ""), "d.t")
    assert not touches(parse_ddl("DROP DATABASE e", ""), "d.t")


def test_chunk_positions_sort_exactly_at_their_point():
    p = 5000
    chunk = [Position.mysql(3, p, Position.SNAPSHOT, INCREMENTAL_SEQUENCE_BASE + c, n + 1) for c in (0, 1) for n in range(3)]
    assert chunk == sorted(chunk) and len(set(chunk)) == len(chunk)
    before = Position.mysql(3, p - 200, Position.STREAM, p - 100, 8)  # a transaction that started before P
    at = Position.mysql(3, p, Position.STREAM, p + 80, 0)  # the transaction starting at P
    next_file = Position.mysql(4, 4, Position.STREAM, 300, 0)
    assert before < chunk[0] and chunk[-1] < at < next_file
    # Above any initial snapshot at the same point (chunk_index << 32 | row), however many chunks it had.
    initial = Position.mysql(3, p, Position.SNAPSHOT, ((1 << 30) - 1) << 32 | 0xFFFFFFFF, 0)  # 2^30 chunks
    assert initial < chunk[0]


def jobs() -> Jobs:
    cfg = MySQLSourceConfig(name="s", user="u", tables=["d.*"])
    return Jobs(cfg, "p", Server("mariadb", "10.11", 1, None, True), "e", True)


def chunk_for(job: IncrementalJob, counter: int, rows: int, after: list, done: bool) -> Chunk:
    return Chunk(job, BinlogPoint("b.000001", 100), None, [()] * rows, after, done, counter)  # type: ignore[arg-type]


def test_jobs_run_one_after_another_and_count_chunks():
    j = jobs()
    assert not j.busy and j.next_job() is None
    j.add(IncrementalJob("r1", "d.a"))
    j.add(IncrementalJob("r1", "d.b", where="x > 1"))
    assert j.busy
    first = j.next_job()
    assert first is not None and first.table == "d.a"
    j.counter = 41
    done = j.published(chunk_for(first, 41, 10, [10], False))
    assert (done.after, done.rows, done.done, done.chunk_counter) == ([10], 10, False, 42)
    assert (first.after, first.rows, first.chunks) == ([10], 10, 1)
    last = j.published(chunk_for(first, 42, 3, [13], True))
    assert last.done and j.next_job().table == "d.b"
    stopped = j.stopped(j.next_job(), "the condition fails")
    assert stopped.table == "d.b" and j.next_job() is None and not j.busy and j.counter == 43


def test_a_job_added_while_settling_is_not_lost():
    j = jobs()
    j.busy = False
    j.inbox.put(IncrementalJob("r", "d.a"))  # as if added between the drain and the flag
    j._settle()
    assert j.busy


def test_state_document_keeps_jobs_counter_and_offset():
    s = SourceState("e", "mariadb:1", BinlogPoint("b.000002", 400, "0-1-9"), {"d.a": ""}, True,
                    jobs=[IncrementalJob("r1", "d.a", "request", "v = 1", encode_key([b"\x01", 2]), 500, 5)], chunk_counter=17,
                    signals_offset=3)
    back = SourceState.from_json(s.to_json())
    assert back.jobs == s.jobs and back.chunk_counter == 17 and back.signals_offset == 3
    assert decode_key(back.jobs[0].after) == [b"\x01", 2]
    old = SourceState.from_json(b'{"epoch": "e", "server": "mariadb:1", "resume": null, "tables": {}}')
    assert (old.jobs, old.chunk_counter, old.signals_offset) == ([], 0, 0)


def test_status_shows_a_job():
    p = IncrementalJob("r1", "d.a", "resume", None, [3], 300, 3).progress(1000).to_dict()
    assert p == {"table": "d.a", "kind": "incremental", "rows": 300, "estimate": 1000, "chunks_done": 3, "chunks": None,
                 "done": False, "id": "r1", "reason": "resume", "where": None}


def test_incremental_rows_say_so_in_the_envelope():
    assert incremental.SOURCE_SNAPSHOT == b"incremental"
