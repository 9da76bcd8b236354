"""The Delta log of a lake table, read directly: cheap to poll, and the file mtimes say when a version
became visible to readers."""

from __future__ import annotations

import json
import os
from pathlib import Path


def delta_commits(table: Path) -> list[dict]:
    """[{version, mtime, position, last_offset}] of every commit file of a Delta table."""
    log_dir = table / "_delta_log"
    out: list[dict] = []
    try:
        names = sorted(n for n in os.listdir(log_dir) if n.endswith(".json") and n[:20].isdigit())
    except FileNotFoundError:
        return out
    for name in names:
        p = log_dir / name
        st = p.stat()
        info: dict = {}
        for line in p.read_text().splitlines():
            if line.startswith('{"commitInfo"'):
                info = json.loads(line)["commitInfo"]
                break
        offsets = info.get("lakeward.offsets")
        out.append({
            "version": int(name[:20]),
            "mtime": st.st_mtime_ns / 1e9,
            "position": info.get("lakeward.position"),
            "last_offset": int(offsets.split("-")[1]) if offsets else None,
        })
    return out


def delta_last_offset(table: Path) -> int | None:
    """The last Kafka offset the newest commit covers (our app transaction), from the newest log file."""
    log_dir = table / "_delta_log"
    try:
        names = [n for n in os.listdir(log_dir) if n.endswith(".json") and n[:20].isdigit()]
    except FileNotFoundError:
        return None
    for name in sorted(names, reverse=True):
        for line in (log_dir / name).read_text().splitlines():
            if line.startswith('{"commitInfo"'):
                offsets = json.loads(line)["commitInfo"].get("lakeward.offsets")
                if offsets:
                    return int(offsets.split("-")[1])
                break
    return None


def delta_count(table: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(table)).to_pyarrow_dataset().count_rows()

