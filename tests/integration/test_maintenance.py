"""`lakeward lake optimize|vacuum|checkpoint` while the sink writes the same tables; automatic checkpoints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
from deltalake import DeltaTable

from .harness import sql, wait_until, write_config
from .lakecheck import lake_equals_source

pytestmark = pytest.mark.integration


def lakeward(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeward.app.cli", "-c", str(cfg), *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_maintenance_while_the_sink_merges_keeps_lake_equal_to_source(database, prefix, tmp_path, workers):
    sql(database, "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)",
        "INSERT INTO items SELECT g, 0, 'n' || g FROM generate_series(1, 2000) g")
    lake = tmp_path / "lake"
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=lake,
                       extra_sink="    checkpoint_interval: 5\n")
    worker = workers(cfg).start()
    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=60, what="the snapshot")

    # A steady stream of small transactions, mostly new keys: each MERGE prunes the old files by key
    # range and adds a small one, so OPTIMIZE has files to compact while MERGEs keep committing.
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            statements = [f"INSERT INTO items VALUES ({10_000 + i}, {i}, 'new')"]
            if i % 5 == 0:
                statements.append(f"UPDATE items SET v = v + 1 WHERE id BETWEEN {10_000 + i - 20} AND {10_000 + i - 1}")
            if i % 7 == 0:
                statements.append(f"DELETE FROM items WHERE id = {10_000 + i - 3}")
            sql(database, *statements)
            time.sleep(0.02)

    loader = threading.Thread(target=load)
    loader.start()
    results = []
    try:
        time.sleep(3)
        for _ in range(3):
            for op in (["optimize"], ["checkpoint"], ["vacuum", "--retention-hours", "1"]):
                r = lakeward(cfg, "lake", *op, "--table", "shop.public.items")
                assert r.returncode == 0, r.stdout + r.stderr
                results.append((op[0], r.stdout))
            time.sleep(1)
    finally:
        stop.set()
        loader.join()

    wait_until(lambda: lake_equals_source(database, lake, "items"), timeout=60, what="lake == source after maintenance")
    assert worker.alive(), worker.output()
    # no error of Lakeward's own (aiokafka may log a benign metadata race for a just-created topic)
    assert not [line for line in worker.output().splitlines() if " ERROR " in line and " lakeward." in line], worker.output()[-3000:]

    dt = DeltaTable(str(lake / "shop" / "public" / "items"))
    ops = [h.get("operation") for h in dt.history()]
    assert "OPTIMIZE" in ops and "MERGE" in ops, results
    removed = [int(m) for op, out in results if op == "optimize" for m in re.findall(r"files_removed=(\d+)", out)]
    assert len(removed) == 3 and max(removed) > 1, results
    # automatic checkpoints every 5 commits (checkpoint_interval), besides the ones asked for
    log_dir = lake / "shop" / "public" / "items" / "_delta_log"
    checkpoints = sorted(int(p.name.split(".")[0]) for p in log_dir.glob("*.checkpoint.parquet"))
    assert len([v for v in checkpoints if (v + 1) % 5 == 0]) >= 3, checkpoints  # delta-rs: after every 5th commit
    assert dt.metadata().configuration.get("delta.checkpointInterval") == "5"
    assert worker.terminate() == 0


def test_maintenance_errors_name_the_table_and_the_fix(database, prefix, tmp_path):
    cfg = write_config(tmp_path / "lakeward.yaml", dsn=database, prefix=prefix, lake=tmp_path / "lake")
    r = lakeward(cfg, "lake", "optimize", "--table", "shop.public.nope")
    assert r.returncode == 1 and "no lake table shop.public.nope" in r.stderr
    r = lakeward(cfg, "lake", "vacuum", "--retention-hours", "0.5")
    assert r.returncode == 1 and "retention 0.5h is below 1.0h" in r.stderr and "--retention-hours 1" in r.stderr
