"""`lakeward query` and `lakeward status` on damaged lakes and mixed files; the CLI's global options; the demo's config check.

The lakes here are real Delta tables on disk, written with deltalake as the sink writes them (plain
writes and MERGE), and damaged the way real lakes get damaged: a truncated commit, a protocol the
reader lacks, a log without a commit, a data file deleted behind the log's back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from .harness import BROKER, free_port, http_get, many_files, sql, topic_prefix, wait_until, write_config
from .lakecheck import lake_equals_source

pytestmark = pytest.mark.integration

# faulthandler: a native crash of the CLI shows where it was (in the stderr the assertions print)
ENV = dict(os.environ, COLUMNS="200", PYTHONFAULTHANDLER="1")


def lakeward(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeward.app.cli", *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def lake_config(path: Path, lake: Path) -> Path:
    path.write_text(f"broker:\n  bootstrap_servers: {BROKER}\nlake:\n  uri: {lake}\n")
    return path


def good_table(uri: Path, n: int = 5) -> None:
    write_deltalake(str(uri), pa.table({"id": pa.array(range(1, n + 1), pa.int32()),
                                        "name": pa.array([f"n{i}" for i in range(1, n + 1)], pa.large_string())}))


# --- one unreadable table ------------------------------------------------------------------------------


def _truncate_commit(table: Path) -> str:
    log = table / "_delta_log" / "00000000000000000001.json"
    log.write_bytes(log.read_bytes()[: len(log.read_bytes()) // 2])
    return "Json error"


def _unsupported_reader_feature(table: Path) -> str:
    log = table / "_delta_log" / "00000000000000000000.json"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for action in lines:
        if "protocol" in action:
            action["protocol"] = {"minReaderVersion": 3, "minWriterVersion": 7,
                                  "readerFeatures": ["lakewardFutureFeature"], "writerFeatures": ["lakewardFutureFeature"]}
    log.write_text("\n".join(json.dumps(a) for a in lines) + "\n")
    return "lakewardFutureFeature"


def _no_commit(table: Path) -> str:
    for f in (table / "_delta_log").iterdir():
        f.unlink()
    return "No files in log segment"


def _missing_data_file(table: Path) -> str:
    victim = next(table.glob("*.parquet"))
    victim.unlink()
    return victim.name


DAMAGE = {"truncated_commit": _truncate_commit, "unsupported_reader_feature": _unsupported_reader_feature,
          "log_without_commit": _no_commit, "missing_data_file": _missing_data_file}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_one_unreadable_table_does_not_take_the_others_down(tmp_path, damage):
    lake = tmp_path / "lake"
    good_table(lake / "shop" / "public" / "customers")
    good_table(lake / "shop" / "public" / "orders", 7)
    bad = lake / "shop" / "public" / "broken"
    good_table(bad)
    write_deltalake(str(bad), pa.table({"id": pa.array([99], pa.int32()), "name": pa.array(["x"], pa.large_string())}), mode="append")
    assert DeltaTable(str(bad)).to_pyarrow_table().num_rows == 6
    clue = DAMAGE[damage](bad)
    cfg = lake_config(tmp_path / "lakeward.yaml", lake)

    out = lakeward("query", "-c", str(cfg), "--format", "json",
                   "SELECT (SELECT count(*) FROM shop.public.customers) AS c, (SELECT sum(id)::BIGINT FROM shop.public.orders) AS o")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"c": 5, "o": 28}
    if damage != "missing_data_file":  # found when the table is read: only a query that reads it can tell
        assert "shop.public.broken" in out.stderr and clue in out.stderr, out.stderr

    named = lakeward("query", "-c", str(cfg), "SELECT * FROM shop.public.broken WHERE name > 'a'")
    assert named.returncode == 1
    assert "query failed: lake table shop.public.broken cannot be read" in named.stderr and clue in named.stderr, named.stderr
    assert "Traceback" not in named.stderr

    for query in ("SELECT count(*) FROM shop.public.orders o JOIN shop.public.broken b ON o.id = b.id",
                  "SELECT count(*) FROM shop.public.orders JOIN shop.public.broken USING (id)",
                  "WITH b AS (SELECT * FROM shop.public.broken) SELECT count(*) FROM b"):
        joined = lakeward("query", "-c", str(cfg), query)
        assert joined.returncode == 1 and "shop.public.broken" in joined.stderr.split("query failed:", 1)[1], joined.stderr


def test_status_reports_the_unreadable_table_and_the_others(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE orders (id int PRIMARY KEY, status text)", "CREATE TABLE items (id int PRIMARY KEY, v text)",
        "INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 10) g", "INSERT INTO items SELECT g, 'x' FROM generate_series(1, 4) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake)
    worker = workers(cfg).start()
    for t in ("orders", "items"):
        wait_until(lambda t=t: lake_equals_source(database, lake, t), timeout=60, what=f"the snapshot of {t}")
    assert worker.terminate() == 0
    _truncate_commit_0(lake / "shop" / "public" / "items")

    out = lakeward("status", "-c", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    tables = {t["table"]: t for t in json.loads(out.stdout)["sinks"][0]["tables"]}
    assert tables["shop.public.orders"]["version"] >= 0 and not tables["shop.public.orders"].get("error")
    assert tables["shop.public.items"].get("error"), tables
    shown = lakeward("status", "-c", str(cfg))
    assert shown.returncode == 0 and "shop.public.items" in shown.stdout and "shop.public.orders" in shown.stdout

    q = lakeward("query", "-c", str(cfg), "--format", "csv", "SELECT id, status FROM shop.public.orders WHERE status = 'new' ORDER BY id")
    assert q.returncode == 0, q.stderr
    assert q.stdout.splitlines() == ["id,status"] + [f"{i},new" for i in range(1, 11)]
    assert "lake table shop.public.items cannot be read" in q.stderr


def _truncate_commit_0(table: Path) -> None:
    log = table / "_delta_log" / "00000000000000000000.json"
    log.write_text(log.read_text()[:40])


# --- files with mixed physical types ----------------------------------------------------------------------


def test_filters_work_on_files_written_by_plain_writes_and_merge(tmp_path):
    """A plain write stores text as large_string, delta-rs' MERGE as string_view: filters must work on both."""
    uri = tmp_path / "lake" / "src" / "public" / "t"
    first = pa.table({"id": pa.array([1, 2, 3], pa.int32()), "b": pa.array(["apple", "kiwi", None], pa.large_string()),
                      "bin": pa.array([b"\x00a", b"k", None], pa.large_binary()),
                      "tags": pa.array([["x", None], [], None], pa.large_list(pa.large_string()))})
    write_deltalake(str(uri), first)
    write_deltalake(str(uri), pa.table({"id": pa.array([4, 5], pa.int32()), "b": pa.array(["fig", "date"], pa.large_string()),
                                        "bin": pa.array([b"f", b"d"], pa.large_binary()),
                                        "tags": pa.array([["f"], ["d"]], pa.large_list(pa.large_string()))}), mode="append")
    merge = pa.table({"id": pa.array([5, 6], pa.int32()), "b": pa.array(["plum", "zucchini"], pa.large_string()),
                      "bin": pa.array([b"p", b"z"], pa.large_binary()),
                      "tags": pa.array([["p"], ["z", "q"]], pa.large_list(pa.large_string()))})
    (DeltaTable(str(uri)).merge(merge, "t.id = s.id", source_alias="s", target_alias="t")
     .when_matched_update_all().when_not_matched_insert_all().execute())
    kinds = {str(pq.read_schema(f.removeprefix("file://")).field("b").type) for f in DeltaTable(str(uri)).file_uris()}
    assert kinds == {"large_string", "string_view"}, f"the table must really hold both physical types: {kinds}"
    cfg = lake_config(tmp_path / "lakeward.yaml", tmp_path / "lake")

    cases = {
        "b > 'f'": [2, 4, 5, 6],
        "b = 'plum'": [5],
        "b IN ('apple', 'zucchini')": [1, 6],
        "b LIKE '%i%'": [2, 4, 6],
        "b IS NULL": [3],
        "b <> 'kiwi' AND id > 1": [4, 5, 6],
        "bin = '\\x00a'::BLOB OR bin = 'z'::BLOB": [1, 6],
        "bin > 'e'::BLOB": [2, 4, 5, 6],
        "tags[1] = 'z'": [6],
        "len(tags) = 0": [2],
    }
    for where, ids in cases.items():
        q = f"SELECT id FROM src.public.t WHERE {where} ORDER BY id"
        for fmt in ("json", "csv", "table"):
            out = lakeward("query", "-c", str(cfg), "--format", fmt, q)
            assert out.returncode == 0, f"{where} ({fmt}): {out.stderr}"
            if fmt == "json":
                got = [json.loads(line)["id"] for line in out.stdout.splitlines()]
            elif fmt == "csv":
                got = [int(line) for line in out.stdout.splitlines()[1:]]
            else:
                got = [int(line.strip("│ ")) for line in out.stdout.splitlines() if line.startswith("│")]
            assert got == ids, f"{where} ({fmt})"
    whole = lakeward("query", "-c", str(cfg), "--format", "json", "SELECT * FROM src.public.t WHERE b >= 'a' ORDER BY id")
    rows = [json.loads(line) for line in whole.stdout.splitlines()]
    assert rows == [
        {"id": 1, "b": "apple", "bin": "AGE=", "tags": ["x", None]},
        {"id": 2, "b": "kiwi", "bin": "aw==", "tags": []},
        {"id": 4, "b": "fig", "bin": "Zg==", "tags": ["f"]},
        {"id": 5, "b": "plum", "bin": "cA==", "tags": ["p"]},
        {"id": 6, "b": "zucchini", "bin": "eg==", "tags": ["z", "q"]},
    ]


def test_filters_on_a_column_that_older_files_lack(tmp_path):
    """Schema evolution leaves files without the new column: their rows are NULL there, for every filter."""
    uri = tmp_path / "lake" / "src" / "public" / "t"
    write_deltalake(str(uri), pa.table({"id": pa.array([1, 2], pa.int32())}))
    write_deltalake(str(uri), pa.table({"id": pa.array([3, 4], pa.int32()), "x": pa.array([5, None], pa.int64()),
                                        "s": pa.array(["a", "b"], pa.large_string())}), mode="append", schema_mode="merge")
    (DeltaTable(str(uri)).merge(pa.table({"id": pa.array([5], pa.int32()), "x": pa.array([7], pa.int64()), "s": pa.array([None], pa.large_string())}),
                                "t.id = s.id", source_alias="s", target_alias="t").when_not_matched_insert_all().execute())
    cfg = lake_config(tmp_path / "lakeward.yaml", tmp_path / "lake")
    cases = {
        "x IS NULL": [1, 2, 4],
        "x IS NOT NULL": [3, 5],
        "x > 4": [3, 5],
        "x IS DISTINCT FROM 5": [1, 2, 4, 5],
        "coalesce(x, 0) = 0": [1, 2, 4],
        "s IS NULL": [1, 2, 5],
        "s IS NOT NULL AND x IS NOT NULL": [3],
    }
    for where, ids in cases.items():
        out = lakeward("query", "-c", str(cfg), "--format", "json", f"SELECT id FROM src.public.t WHERE {where} ORDER BY id")
        assert out.returncode == 0, f"{where}: {out.stderr}"
        assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ids, where


def test_a_query_that_stops_reading_early_exits_cleanly(tmp_path):
    """A LIMIT ends the scan while Arrow still reads ahead on its I/O threads; the process must still
    print the row and exit 0 (it died by SIGSEGV/SIGABRT or hung at exit in about 2 of 3 runs)."""
    many_files(str(tmp_path / "lake" / "src" / "public" / "big"))
    cfg = lake_config(tmp_path / "lakeward.yaml", tmp_path / "lake")
    for run in range(6):
        out = lakeward("query", "-c", str(cfg), "--format", "csv", "SELECT count(*) AS n FROM (SELECT id FROM src.public.big LIMIT 3)",
                       timeout=60)
        assert (out.returncode, out.stdout.splitlines()) == (0, ["n", "3"]), f"run {run}: {out.stderr}"


# --- the CLI as users type it ------------------------------------------------------------------------------

COMMANDS = [
    ("validate",), ("config",), ("run", "--metrics-port", "0"), ("status",), ("query", "SELECT 1"),
    ("replay", "--sink", "lake", "--from-beginning"), ("lake", "optimize"), ("lake", "vacuum"), ("lake", "checkpoint"),
    ("demo", "setup"), ("demo", "load", "--seconds", "1"), ("demo", "check"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_global_options_before_and_after_every_subcommand(tmp_path, args):
    args = list(args)
    path = [a for a in args if not a.startswith("-") and a[0].islower()][: 2 if args[0] in ("lake", "demo") else 1]
    missing = tmp_path / "nowhere.yaml"
    placements = {
        "before": ["-c", str(missing), "--log-format", "json", "--log-level", "warning", *args],
        "after": [*args, "-c", str(missing), "--log-format", "json", "--log-level", "warning"],
        "long form after": [*args, f"--config={missing}", "--log-format=text", "--log-level=DEBUG"],
    }
    if len(path) == 2:
        placements["between"] = [path[0], "--config", str(missing), *args[1:]]
    for where, argv in placements.items():
        out = lakeward(*argv)
        assert out.returncode == 1, f"{where}: {out.stderr}"
        assert f"config file {missing} not found" in out.stderr, f"{where}: {argv}: {out.stderr}"
    helped = lakeward(*path, "--help")
    assert helped.returncode == 0
    for option in ("--config", "-c", "--log-format", "--log-level"):
        assert option in helped.stdout, f"{' '.join(path)} --help lacks {option}"


def healthy(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:  # not listening yet
        return False


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_options_after_the_subcommand_take_effect(tmp_path, where):
    """`lakeward run ... --log-format json` logs JSON lines; `--log-level warning` silences INFO."""
    cfg = tmp_path / "lakeward.yaml"
    prefix = topic_prefix()
    cfg.write_text(f"broker:\n  bootstrap_servers: {BROKER}\n  topic_prefix: {prefix}\nlake:\n  uri: {tmp_path / 'lake'}\n"
                   "sources:\n  - name: shop\n    type: postgres\n    dsn: postgresql://postgres@127.0.0.1:5432/postgres\n    tables: [public.nothing]\n"
                   f"sinks:\n  - name: lake\n    type: delta\n    sources: [shop]\n    group_id: lakeward.{prefix}\n")
    for level, expect_lines in (("info", True), ("warning", False)):
        port = free_port()
        opts = ["-c", str(cfg), "--log-format", "json", "--log-level", level]
        run = ["run", "--sink", "lake", "--metrics-port", str(port)]
        argv = [*opts, *run] if where == "before" else [*run, *opts]
        proc = subprocess.Popen([sys.executable, "-m", "lakeward.app.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)
        # Up once /healthz answers: by then the worker has logged (at INFO) that it serves metrics and started its sink.
        wait_until(lambda port=port, proc=proc: healthy(port) if proc.poll() is None else "the worker exited", timeout=60,
                   what="the worker's /healthz", interval=0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 0, stderr
        if expect_lines:
            assert lines, "the sink logs at INFO when it starts"
        docs = [json.loads(line) for line in lines]  # every line is JSON
        assert all(d["level"] in ("info", "warning", "error", "debug") for d in docs)
        if not expect_lines:
            assert not [d for d in docs if d["level"] == "info"], docs


# --- the demo's config check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sources", ["none", "postgres_only", "mysql_only"])
def test_demo_names_the_config_file_and_what_it_needs(tmp_path, sources):
    cfg = tmp_path / "my-config.yaml"
    pg = "  - name: shop\n    type: postgres\n    dsn: postgresql://postgres@127.0.0.1:5432/nowhere\n    tables: [public.*]\n"
    my = "  - name: inv\n    type: mysql\n    host: 127.0.0.1\n    user: u\n    password: p\n    tables: [inventory.*]\n"
    listed = {"none": "", "postgres_only": pg, "mysql_only": my}[sources]
    cfg.write_text(f"lake:\n  uri: {tmp_path / 'lake'}\nsources:{' []' if not listed else ''}\n{listed}")
    lacking = {"none": ("type: postgres", "type: mysql"), "postgres_only": ("type: mysql",), "mysql_only": ("type: postgres",)}[sources]
    for sub in (("demo", "setup"), ("demo", "setup", "--reset"), ("demo", "load", "--seconds", "1"), ("demo", "check")):
        out = lakeward(*sub, "-c", str(cfg))
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr and "AttributeError" not in out.stderr, out.stderr
        assert f"error: {cfg}: the demo needs a `type: postgres` source" in out.stderr, out.stderr
        tail = out.stderr.split("this config lacks", 1)[1]
        assert all(need in tail.split("(it has")[0] for need in lacking), out.stderr
    make_demo = subprocess.run([sys.executable, "-m", "lakeward.app.demo", str(cfg)], capture_output=True, text=True, timeout=60,
                               env=dict(ENV, DEMO_DIR=str(tmp_path / "demo")))
    assert make_demo.returncode == 1 and "Traceback" not in make_demo.stdout + make_demo.stderr
    assert f"{cfg}: the demo needs" in " ".join(make_demo.stdout.split()), make_demo.stdout
