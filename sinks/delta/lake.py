"""One Delta table as the sink sees it: blocking delta-rs calls, run in a worker thread.

The Kafka offsets a table has applied live in its Delta log: every commit carries an app
transaction `lakeward:<topic>:<partition>` whose version is the last offset the commit covers, and
custom metadata with the newest source position applied (hex). Both are written atomically with
the data, and a commit on a stale snapshot that races another writer with the same app id fails
with CommitFailedError (fencing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import (
    CommitProperties,
    DeltaTable,
    TableFeatures,
    Transaction,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lakeward.core import metrics
from lakeward.core.errors import CommitConflict, SchemaChangeError
from lakeward.core.retry import Backoff, is_retriable
from lakeward.sinks.delta.arrow import (
    TIMESTAMP_NTZ_FEATURE,
    required_features,
    same_storage,
    to_storage,
)
from lakeward.sinks.delta.batch import DELETE_FLAG, KEEP_PREFIX, Plan
from lakeward.sinks.delta.errors import deterministic

log = logging.getLogger(__name__)

POSITION_KEY = "lakeward.position"
PARTITION_KEY = "lakeward.partition"
TOPIC_KEY = "lakeward.topic"
OFFSETS_KEY = "lakeward.offsets"
SINK_KEY = "lakeward.sink"
PROTOCOL_KEY = "lakeward.protocol"
"""Commit metadata of a protocol upgrade commit: the features it added."""

FEATURES = {TIMESTAMP_NTZ_FEATURE: TableFeatures.TimestampWithoutTimezone}
"""Table features a column type may need (arrow.required_features) -> delta-rs' enum."""

__all__ = ["LakeTable", "LakeState", "Committed", "classify", "is_retriable", "app_id", "arrow_filesystem"]


def arrow_filesystem(dt: DeltaTable) -> pafs.FileSystem | None:
    """Arrow's own filesystem rooted at a local table, for `to_pyarrow_dataset`; None (delta-rs'
    object store, through Python) for a remote one.

    delta-rs' default is a PyFileSystem: every read Arrow's I/O threads make calls back into Python
    and takes the GIL. A scan DuckDB stops early (a LIMIT) leaves such reads in flight, and one that
    wants the GIL while the interpreter finalizes exits its thread under C++ frames that cannot
    unwind: `lakeward query` died by SIGSEGV or SIGABRT, or hung, after printing the right result."""
    uri = dt.table_uri  # for a local table a file:// URL, percent-encoded
    if not uri.startswith("file://"):
        return None
    return pafs.SubTreeFileSystem(unquote(uri.removeprefix("file://")), pafs.LocalFileSystem())


def app_id(topic: str, partition: int) -> str:
    return f"lakeward:{topic}:{partition}"


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(slots=True)
class LakeState:
    exists: bool
    version: int | None = None
    txn: int | None = None
    """Last Kafka offset applied (our app transaction's version), None when never written."""
    position: bytes | None = None
    """Newest source position applied (from the commit metadata), None when unknown."""
    schema: pa.Schema | None = None
    committed_at: float | None = None


@dataclass(slots=True)
class Committed:
    ok: bool
    version: int | None = None
    txn: int | None = None
    """When not ok: the txn version another writer left in the table; resume after it."""
    committed_at: float | None = None


def classify(exc: BaseException, table: str) -> BaseException:
    """Turn a delta-rs error into a terminal one when retrying cannot help; return it unchanged otherwise."""
    if deterministic(exc):
        return SchemaChangeError(f"table {table}: the Delta table rejected the batch ({exc.__class__.__name__}: {exc}); stopped this table")
    return exc


class LakeTable:
    """Not thread-safe: the owning TableWriter runs one call at a time (through asyncio.to_thread)."""

    def __init__(self, uri: str, storage_options: dict[str, str], topic: str, partition: int, table: str, sink: str,
                 *, properties: dict[str, str] | None = None):
        self.uri = uri
        self.properties = properties or None
        """Delta table properties set when this writer creates the table (e.g. delta.checkpointInterval)."""
        self.storage_options = dict(storage_options) or None
        self.app_id = app_id(topic, partition)
        self.topic = topic
        self.partition = partition
        self.table = table
        self.sink = sink
        self.dt: DeltaTable | None = None
        self._suspect = False
        """A write failed in a way that may have committed anyway: reload and check the txn first."""

    # --- reading the state ----------------------------------------------------------------------

    def load(self) -> LakeState:
        """Open (or reload) the table: applied offset, applied position, schema."""
        self._suspect = False
        try:
            if self.dt is None:
                self.dt = DeltaTable(self.uri, storage_options=self.storage_options)
            else:
                self.dt.update_incremental()
        except TableNotFoundError:
            self.dt = None
            return LakeState(exists=False)
        dt = self.dt
        position, committed_at = self._recover_position(dt)
        return LakeState(
            exists=True,
            version=dt.version(),
            txn=dt.transaction_version(self.app_id),
            position=position,
            schema=pa.schema(dt.schema().to_arrow()),
            committed_at=committed_at,
        )

    def _recover_position(self, dt: DeltaTable) -> tuple[bytes | None, float | None]:
        """Newest commit of our partition with a position; other commits (OPTIMIZE, VACUUM ...) are skipped."""
        committed_at = None
        for limit in (16, 512, None):
            history = dt.history(limit)
            if history and committed_at is None:
                committed_at = history[0].get("timestamp", 0) / 1000
            for h in history:
                pos = h.get(POSITION_KEY)
                if pos is not None and str(h.get(PARTITION_KEY, self.partition)) == str(self.partition):
                    return bytes.fromhex(pos), committed_at
            if limit is None or len(history) < limit:
                break
        return None, committed_at

    def txn(self) -> int | None:
        return self.dt.transaction_version(self.app_id) if self.dt is not None else None

    def _reload_txn(self) -> int | None:
        try:
            if self.dt is None:
                self.dt = DeltaTable(self.uri, storage_options=self.storage_options)
            else:
                self.dt.update_incremental()
        except TableNotFoundError:
            self.dt = None
            return None
        return self.dt.transaction_version(self.app_id)

    def schema(self) -> pa.Schema | None:
        return pa.schema(self.dt.schema().to_arrow()) if self.dt is not None else None

    def lookup(self, keys: pa.Table, columns: list[str]) -> pa.Table | None:
        """Rows whose primary key (the columns of `keys`) is one of `keys`, with the key and `columns`
        (those the table has); None without a table. Reads the snapshot as loaded, never a newer one:
        the next commit is fenced on it (the values of key changes, see batch.plan_mirror)."""
        if self.dt is None:
            return None
        ds = self.dt.to_pyarrow_dataset(filesystem=arrow_filesystem(self.dt))
        pk = keys.column_names
        expr = None
        for c in pk:
            typ = ds.schema.field(c).type
            field = pc.field(c)
            if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
                # MERGE writes Utf8View files under a `string` schema: compare by value, not by file statistics.
                typ = pa.large_binary() if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) else pa.large_string()
                field = field.cast(typ)
            values = keys.column(c).cast(typ).unique()
            expr = field.isin(values) if expr is None else expr & field.isin(values)
        return ds.to_table(columns=pk + [c for c in columns if c in ds.schema.names and c not in pk], filter=expr)

    # --- writing --------------------------------------------------------------------------------

    def commit(self, plan: Plan, *, expected: int | None, txn: int, position: bytes | None, first: int) -> Committed:
        """Write `plan` with txn version `txn` (the last offset it covers) in one Delta commit.

        `expected` is the txn version the table had when the batch started; when the table shows
        another one (someone else wrote these offsets, or ours landed despite an error), nothing is
        written and the caller resumes after the txn found.
        """
        if self._suspect or (self.dt is None and DeltaTable.is_deltatable(self.uri, self.storage_options)):
            # A write may have landed despite its error, or someone created the table since we
            # looked: never write on a reloaded snapshot without checking its txn first.
            found = self._reload_txn()
            self._suspect = False
            if found != expected:
                return Committed(ok=False, txn=found)
        meta: dict[str, Any] = {
            TOPIC_KEY: self.topic,
            PARTITION_KEY: str(self.partition),
            OFFSETS_KEY: f"{first}-{txn}",
            SINK_KEY: self.sink,
        }
        if position is not None:
            meta[POSITION_KEY] = position.hex()
        props = CommitProperties(app_transactions=[Transaction(self.app_id, txn)], custom_metadata=meta)
        backoff = Backoff(initial=0.05, maximum=1.0)
        for _ in range(6):
            try:
                if not self._write(plan, props):
                    return Committed(ok=True, version=None)
                assert self.dt is not None
                return Committed(ok=True, version=self.dt.version(), committed_at=time.time())
            except CommitFailedError as e:
                metrics.DELTA_CONFLICTS.labels(self.sink, self.table).inc()
                found = self._reload_txn()
                if found != expected:
                    log.info("%s: commit conflict and txn %s (expected %s): another writer applied these offsets", self.table, found, expected)
                    return Committed(ok=False, txn=found)
                log.info("%s: commit conflict with another writer (%s); retrying on the new snapshot", self.table, e)
                backoff.wait_sync()
            except BaseException as e:
                err = classify(e, self.table)
                if err is e:
                    self._suspect = True
                raise err from e
        raise CommitConflict(f"table {self.table}: commit kept conflicting with other writers; will retry")

    def _write(self, plan: Plan, props: CommitProperties) -> bool:
        """One commit; False when nothing was written (an empty batch and no table yet).

        Every commit kind writes the same physical types (arrow.storage_type), and a column
        that needs a table feature (timestamp_ntz) gets it in a commit before the data's.
        """
        if plan.kind == "none":
            if self.dt is None:
                return False
            empty = to_storage(self.schema().empty_table())  # type: ignore[union-attr]
            write_deltalake(self.dt, empty, mode="append", commit_properties=props)
            return True
        assert plan.data is not None
        if self.dt is None:
            # A new table: a merge into nothing is an insert of its upserts. Creating a table
            # enables the features its columns need (checked by the tests).
            data = to_storage(plan.plain() if plan.kind == "merge" else plan.data)
            write_deltalake(self.uri, data, mode="append", storage_options=self.storage_options, commit_properties=props,
                            configuration=self.properties)
            self.dt = DeltaTable(self.uri, storage_options=self.storage_options)
            return True
        data = to_storage(plan.data)
        self.upgrade_protocol(data.schema)
        if plan.kind == "append":
            write_deltalake(self.dt, data, mode="append", schema_mode="merge", commit_properties=props)
        elif plan.kind == "overwrite":
            # After a truncate the table is exactly `data`: when a column changed type (a source re-read
            # the table after ALTER ... TYPE), the table takes the new schema instead of merging into it.
            schema_mode: Literal["merge", "overwrite"] = "overwrite" if self._retyped(data.schema) else "merge"
            write_deltalake(self.dt, data, mode="overwrite", schema_mode=schema_mode, commit_properties=props)
        elif plan.kind == "merge":
            self._merge(plan, data, props)
        else:
            raise ValueError(plan.kind)
        return True

    def _retyped(self, schema: pa.Schema) -> bool:
        """Whether a column of `schema` has another type than the table's column of that name."""
        current = self.schema()
        assert current is not None
        return any(f.name in current.names and not same_storage(current.field(f.name).type, f.type) for f in schema)

    def missing_features(self, schema: pa.Schema) -> set[str]:
        """Table features the columns of `schema` need that the table's protocol lacks."""
        assert self.dt is not None
        needed: set[str] = set()
        for f in schema:
            needed |= required_features(f.type)
        if not needed:
            return needed
        p = self.dt.protocol()
        have = set(p.reader_features or ()) & set(p.writer_features or ())
        return needed - have

    def upgrade_protocol(self, schema: pa.Schema) -> None:
        """Enable the table features the columns of `schema` need, in a commit of its own.

        delta-rs' MERGE adds a timestamp_ntz column without the `timestampNtz` feature, and the
        table is then unreadable. The upgrade commit carries no data and no app transaction (so it
        moves no offset and no position) and is idempotent: a crash after it changes nothing.
        """
        missing = self.missing_features(schema)
        if not missing:
            return
        assert self.dt is not None
        names = sorted(missing)
        self.dt.alter.add_feature([FEATURES[n] for n in names], allow_protocol_versions_increase=True,
                                  commit_properties=CommitProperties(custom_metadata={SINK_KEY: self.sink, PROTOCOL_KEY: ",".join(names)}))
        p = self.dt.protocol()
        log.info("%s: enabled Delta table feature(s) %s for new columns (protocol now reader %s / writer %s)", self.table,
                 ", ".join(names), p.min_reader_version, p.min_writer_version)

    def _merge(self, plan: Plan, src: pa.Table, props: CommitProperties) -> None:
        assert self.dt is not None
        target = set(self.schema().names)  # type: ignore[union-attr]
        names = [n for n in src.column_names if not n.startswith("__lw_")]
        updates = {quote(n): f"s.{quote(n)}" for n in names if n not in plan.pk}
        for c in plan.keep:
            if c in target:
                updates[quote(c)] = f"CASE WHEN s.{quote(KEEP_PREFIX + c)} THEN t.{quote(c)} ELSE s.{quote(c)} END"
        inserts = {quote(n): f"s.{quote(n)}" for n in names}
        predicate = " AND ".join(f"t.{quote(c)} = s.{quote(c)}" for c in plan.pk)
        has_deletes = pc.any(src.column(DELETE_FLAG)).as_py()
        merger = self.dt.merge(
            src,
            predicate,
            source_alias="s",
            target_alias="t",
            merge_schema=True,
            streamed_exec=False,  # lets delta-rs prune target files by the source's key range
            commit_properties=props,
        )
        if has_deletes:
            flag = f"s.{quote(DELETE_FLAG)}"
            merger = (merger.when_matched_delete(flag)
                      .when_matched_update(updates, predicate=f"NOT {flag}")
                      .when_not_matched_insert(inserts, predicate=f"NOT {flag}"))
        else:
            merger = merger.when_matched_update(updates).when_not_matched_insert(inserts)
        merger.execute()

