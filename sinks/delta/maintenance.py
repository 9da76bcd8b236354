"""Lake maintenance: compaction (OPTIMIZE), VACUUM and checkpoints of the sink's Delta tables.

Safe while a sink writes the same table, by Delta's optimistic concurrency rather than a lock:
each operation commits against the snapshot it read, and delta-rs refuses a commit that conflicts
with one made meanwhile. When OPTIMIZE loses (a MERGE removed a file it compacted), it reloads
the table and runs again; when the sink's MERGE loses, it keeps its txn fence and re-runs on the
new snapshot (sinks/delta/lake.py), so no change is lost or applied twice either way. Maintenance
commits carry no `lakeward.position`, which the sink skips when it recovers its position.
VACUUM never deletes files younger than `MIN_RETENTION_HOURS`: a MERGE or a reader that started
on an older snapshot may still be reading files an OPTIMIZE just removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from lakeward.core.errors import (
    ConfigError,
    LakewardError,
    TerminalError,
    TransientError,
)
from lakeward.core.retry import Backoff, is_retriable

log = logging.getLogger(__name__)

Operation = Literal["optimize", "vacuum", "checkpoint"]
MIN_RETENTION_HOURS = 1.0
CONFLICT_RETRIES = 10
MAINTENANCE_KEY = "lakeward.maintenance"


def check_retention(hours: float) -> None:
    if hours < MIN_RETENTION_HOURS:
        raise ConfigError(f"vacuum retention {hours}h is below {MIN_RETENTION_HOURS}h: a running sink or reader may still read "
                          "younger files. Use --retention-hours 1 or more")


@dataclass
class Result:
    table: str
    operation: Operation
    version_before: int
    version_after: int
    details: dict[str, Any] = field(default_factory=dict)
    conflicts: int = 0
    seconds: float = 0.0


def _props(operation: str) -> CommitProperties:
    return CommitProperties(custom_metadata={MAINTENANCE_KEY: operation})


def run(table: str, uri: str, operation: Operation, *, storage_options: dict[str, str] | None = None,
        retention_hours: float = 168.0, target_size: int | None = None, dry_run: bool = False) -> Result:
    """Run one maintenance operation on one table (blocking: call it from a thread in async code)."""
    if operation == "vacuum":
        check_retention(retention_hours)
    started = time.monotonic()
    try:
        dt = DeltaTable(uri, storage_options=storage_options or None)
        before = dt.version()
        backoff = Backoff(initial=0.2, maximum=2.0)
        while True:
            try:
                details = _apply(dt, operation, retention_hours=retention_hours, target_size=target_size, dry_run=dry_run)
            except CommitFailedError as e:
                if backoff.attempt >= CONFLICT_RETRIES:
                    raise TransientError(f"{operation} of {table}: kept conflicting with concurrent writers ({e}); try again") from e
                log.info("%s of %s conflicted with a concurrent commit (%s); reloading and retrying", operation, table, e)
                backoff.wait_sync()
                dt.update_incremental()
                continue
            break
        dt.update_incremental()
    except LakewardError:
        raise
    except Exception as e:  # storage or a damaged table: name it, don't dump a traceback
        what = f"{operation} of {table} at {uri} failed: {e.__class__.__name__}: {e}"
        if is_retriable(e):
            raise TransientError(what) from e
        raise TerminalError(f"{what}; retrying cannot help: check the table (lakeward status) and the storage") from e
    return Result(table, operation, before, dt.version(), details, backoff.attempt, round(time.monotonic() - started, 3))


def _apply(dt: DeltaTable, operation: Operation, *, retention_hours: float, target_size: int | None, dry_run: bool) -> dict[str, Any]:
    if operation == "optimize":
        metrics = dt.optimize.compact(target_size=target_size, commit_properties=_props("optimize"))
        return {"files_removed": metrics.get("numFilesRemoved", 0), "files_added": metrics.get("numFilesAdded", 0)}
    if operation == "vacuum":
        # Whole hours: delta-rs takes an int; round up so the guard above is never undercut.
        hours = int(-(-retention_hours // 1))
        deleted = dt.vacuum(retention_hours=hours, dry_run=dry_run, enforce_retention_duration=False, commit_properties=_props("vacuum"))
        return {"files_deleted" if not dry_run else "files_to_delete": len(deleted)}
    if operation == "checkpoint":
        dt.create_checkpoint()
        dt.cleanup_metadata()  # log files older than delta.logRetentionDuration (default 30 days) and a checkpoint
        return {"checkpoint_version": dt.version()}
    raise ValueError(operation)
