"""A partition's Delta side: its table's progress, its columns, and commits with retries.

The committer reads the table's txn and position (`load`), keeps the lake table's columns
(`catalog`) and checks every new table schema against them (`admit`: schema evolution), and writes
a planned batch as one Delta commit fenced by the txn (`commit`), retrying what `core/retry.py`
calls retriable. Dead letters are acknowledged by the broker before the commit that covers them
(`send_dead`). The blocking delta-rs calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from lakeward.core import metrics
from lakeward.core.errors import LakewardError, SchemaChangeError, TerminalError, TransientError
from lakeward.core.events import TableSchema
from lakeward.core.retry import Backoff, is_retriable
from lakeward.sinks.delta.arrow import arrow_type, check_evolution, same_storage
from lakeward.sinks.delta.batch import RESERVED_PREFIXES, Catalog, Plan
from lakeward.sinks.delta.buffer import Batch, DeadLetter
from lakeward.sinks.delta.lake import Committed, LakeState, LakeTable

if TYPE_CHECKING:
    from lakeward.sinks.delta.table import PartitionWriter

log = logging.getLogger(__name__)

CLOSING_ATTEMPTS = 3
"""Attempts a commit (or dead-letter send) gets while its writer is shutting down or revoked."""


class DeadLetterSink(Protocol):
    """Where poison events go when the sink has a `dead_letter_topic` (the sink implements it)."""

    async def send(self, writer: PartitionWriter, letters: list[DeadLetter]) -> None:
        """Return once the broker acknowledged every letter; raise on failure."""


class Committer:
    def __init__(self, lake: LakeTable, qualified: str, mode: str, table_metrics: metrics.TableMetrics):
        self.lake = lake
        self.qualified = qualified
        self.mode = mode
        self._metrics = table_metrics
        self.catalog = Catalog()
        # the table's progress as of the last load or commit
        self.committed_offset: int | None = None
        self.committed_position: bytes | None = None
        self.version: int | None = None
        self.committed_at: float | None = None
        self.retrying: str | None = None
        """What is being retried right now (for `lakeward status`), None when nothing is."""
        self.commits = 0
        self.rows_applied = 0
        self.dead_lettered = 0

    # --- the table's state ----------------------------------------------------------------------

    async def load(self) -> LakeState:
        """Read (or re-read) the table's txn, position and columns."""
        state = await asyncio.to_thread(self.lake.load)
        self.committed_offset = state.txn
        self.committed_position = state.position
        self.version = state.version
        self.committed_at = state.committed_at
        if state.schema is not None:
            for f in state.schema:
                if not f.name.startswith(RESERVED_PREFIXES) and f.name not in self.catalog.arrow:
                    self.catalog.arrow[f.name] = f.type
        return state

    @property
    def next_offset(self) -> int:
        """The first offset the table has not applied."""
        return 0 if self.committed_offset is None else self.committed_offset + 1

    # --- schema evolution -----------------------------------------------------------------------

    def admit(self, schema: TableSchema, *, rebuild: bool = False) -> None:
        """Check a schema version against the lake table, then add its columns to the catalog.

        `rebuild`: the schema's first event is a truncate (a source re-reads the table after a schema
        change), so the mirror is rewritten from the rows that follow: a column may change to a type
        the table cannot merge (INT -> BIGINT); the overwrite replaces the table's schema.
        """
        if self.mode == "mirror" and not schema.primary_key:
            raise TerminalError(f"table {self.qualified} has no primary key; mirror mode needs one: add a primary key, or use mode: changelog")
        catalog = self.catalog
        types = {}
        for col in schema.columns:
            if col.name.startswith(RESERVED_PREFIXES):
                raise SchemaChangeError(f"table {self.qualified}: column {col.name!r} uses a name reserved for Lakeward's metadata "
                                        f"columns ({', '.join(p + '*' for p in RESERVED_PREFIXES)}); stopped this table. Rename the column.")
            try:
                new = arrow_type(col.lake_type)
            except ValueError:
                raise SchemaChangeError(f"table {self.qualified}: column {col.name!r} has unknown lake type {col.lake_type!r}; stopped this table") from None
            old = catalog.arrow.get(col.name)
            if old is not None and not (rebuild and not same_storage(old, new)):
                check_evolution(self.qualified, col.name, old, new)
            elif old is not None:
                log.info("%s: column %r changes type from %s to %s: the table is rewritten from the re-read that follows",
                         self.qualified, col.name, old, new)
                catalog.arrow[col.name] = new
            types[col.name] = new
        if catalog.arrow and any(col.name not in catalog.arrow for col in schema.columns):
            self._metrics.schema_changes.inc()  # new columns for a table that had some: a schema merge ahead
        for col in schema.columns:
            catalog.arrow.setdefault(col.name, types[col.name])
            catalog.lake[col.name] = col.lake_type

    def catalog_snapshot(self) -> Catalog:
        """The columns as a batch is cut: events ingested after it may change a type (see `admit`)."""
        return Catalog(dict(self.catalog.arrow), dict(self.catalog.lake))

    # --- writing --------------------------------------------------------------------------------

    async def _retrying(self, what: str, label: str, e: Exception, backoff: Backoff, closing: bool) -> None:
        """Wait before the next attempt after a retriable error (`what` failed; `label`: what
        status shows); raise TransientError once a closing writer has tried often enough."""
        delay = backoff.next()
        if closing and backoff.attempt >= CLOSING_ATTEMPTS:
            raise TransientError(f"table {self.qualified}: {what} failed ({e.__class__.__name__}: {e})") from e
        self.retrying = f"{label}{e.__class__.__name__}: {e}"
        (log.error if backoff.attempt >= 5 else log.warning)("%s: %s failed (attempt %d: %s); retrying in %.1fs",
                                                             self.qualified, what, backoff.attempt, e, delay)
        await backoff.sleep(delay)

    async def send_dead(self, sink: DeadLetterSink, writer: PartitionWriter, letters: list[DeadLetter],
                        live: Callable[[], bool], closing: Callable[[], bool]) -> bool:
        """Dead letters are acknowledged before the commit that covers their offsets, so a crash
        between the two re-sends them (at least once) but never loses one. False: the writer
        let its partition go meanwhile."""
        backoff = Backoff()
        while live():
            try:
                await sink.send(writer, letters)
                self.dead_lettered += len(letters)
                self._metrics.dead_letters.inc(len(letters))
                return True
            except Exception as e:  # the broker: retried like a commit, the table does not advance meanwhile
                if not is_retriable(e):
                    if isinstance(e, LakewardError):
                        raise
                    raise TerminalError(f"table {self.qualified}: sending {len(letters)} dead letter(s) failed "
                                        f"({e.__class__.__name__}: {e}); retrying cannot help: stopped this table") from e
                await self._retrying(f"sending {len(letters)} dead letter(s)", "dead-letter topic: ", e, backoff, closing())
        return False

    async def commit(self, plan: Plan, batch: Batch, live: Callable[[], bool], closing: Callable[[], bool]) -> Committed | None:
        """Write `plan` as the commit of `batch`, fenced by the txn the table had (retried while
        retriable); None when the writer let its partition go before it could."""
        backoff = Backoff()
        res: Committed | None = None
        while res is None:
            if not live():
                return None
            try:
                res = await asyncio.to_thread(self.lake.commit, plan, expected=self.committed_offset, txn=batch.last,
                                              position=batch.position, first=batch.first)
            except Exception as e:
                if not is_retriable(e):
                    raise
                self._metrics.retries.inc()
                await self._retrying(f"writing offsets {batch.first}-{batch.last}", "", e, backoff, closing())
        self.retrying = None
        if res.ok:
            self.committed_offset = batch.last
            if batch.position is not None:
                self.committed_position = batch.position
            if res.version is not None:
                self.version = res.version
                self.committed_at = res.committed_at
                self.commits += 1
                self._metrics.commits.inc()
            self.rows_applied += plan.events
        return res
