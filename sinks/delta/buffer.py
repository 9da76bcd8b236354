"""A partition's buffer: fetched records in, re-reads and repeats dropped, a batch out.

Pure bookkeeping, no broker and no lake. Envelopes are kept as the raw bytes the broker sent (the
planner decodes a whole batch at once, in Arrow), next to the few facts the headers carry: offset,
position, schema and, for a primary-key change, the other key.

Cut rules: a batch ends when the buffer holds `max_rows` events or `max_bytes` bytes of values, on
time, on shutdown or before a poison event; but never between the `d` of a primary-key change and
its `c` (the `c` takes the values the `d` deletes): such a `d` stays in the buffer and the batch
ends right before it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lakeward.core.events import NEW_KEY_HEADER, OLD_KEY_HEADER, POSITION_HEADER, SCHEMA_HEADER
from lakeward.sinks.delta.batch import SchemaInfo
from lakeward.sinks.delta.fetch import FetchedRecords, native


@dataclass(slots=True)
class DeadLetter:
    """A poison event on its way to the dead-letter topic: where it came from and why it is there."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str


@dataclass(slots=True)
class Events:
    """Buffered events in columns (one entry per event, in offset order), values not decoded yet."""

    offsets: array = field(default_factory=lambda: array("q"))
    positions: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    infos: list[SchemaInfo] = field(default_factory=list)
    links: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    """Index -> (header, other key) of the events of a primary-key change (see batch.LINK)."""

    def __len__(self) -> int:
        return len(self.offsets)

    def select(self, indices: list[int] | range) -> Events:
        """The events at `indices` (ascending), as a new Events."""
        pick = list(indices)
        at = {j: i for i, j in enumerate(pick)}
        return Events(array("q", (self.offsets[j] for j in pick)), [self.positions[j] for j in pick], [self.values[j] for j in pick],
                      [self.keys[j] for j in pick], [self.infos[j] for j in pick],
                      {at[j]: link for j, link in self.links.items() if j in at})

    def before(self, offset: int) -> Events:
        """The events below `offset`."""
        return self.select(range(sum(1 for o in self.offsets if o < offset)))

    def without(self, offset: int) -> Events:
        """Every event but the one at `offset`."""
        return self.select([i for i, o in enumerate(self.offsets) if o != offset])

    def index(self, offset: int) -> int:
        return self.offsets.index(offset)

    def drop_values(self) -> None:
        """Free the raw values and keys once the batch is planned: the commit needs neither, and the
        next buffer fills while it runs (the sink's peak memory)."""
        self.values = []
        self.keys = []

    def headers(self, i: int) -> list[tuple[str, bytes]]:
        """The headers event `i` arrived with, as far as the sink reads them (for a dead letter)."""
        out = [(POSITION_HEADER, self.positions[i]), (SCHEMA_HEADER, self.infos[i].schema.id.encode())]
        if i in self.links:
            out.append(self.links[i])
        return out


@dataclass(slots=True)
class Batch:
    events: Events
    first: int
    """First offset the batch covers (the one after the previous commit)."""
    last: int
    """Last offset it covers: the txn version of its commit (duplicates and tombstones included)."""
    position: bytes | None
    """Newest position applied once it is committed."""
    dead: list[DeadLetter]
    """Poison events among its offsets: sent to the dead-letter topic before the commit."""


class Stop(Enum):
    """Why `Buffer.accept` returned."""

    DONE = "every record was taken"
    FULL = "the buffer is full"
    SCHEMA = "a record names a schema id not resolved yet"
    POISON = "a record lacks the position or schema header"


_STOPS = (Stop.DONE, Stop.FULL, Stop.SCHEMA, Stop.POISON)  # _records.accept's stop codes


class Buffer:
    """Events of one partition between the last commit and the next, and the stream's progress."""

    def __init__(self) -> None:
        self.next_offset = 0
        """Offsets below it were consumed (buffered, dropped or dead-lettered)."""
        self.last_position: bytes | None = None
        """Newest position accepted (buffered or committed): events at or before it are repeats."""
        self.duplicates = 0
        self.tombstones = 0
        self.since = 0.0
        """When the oldest event of the buffer arrived (time.monotonic)."""
        self._clear()

    def _clear(self) -> None:
        self.events = Events()
        self.dead: list[DeadLetter] = []
        self.nbytes = 0
        self.last: int | None = None
        """Last offset consumed into the buffer (events, tombstones, repeats, dead letters); None: empty."""
        self.open_pair = False
        """The last event is the `d` of a primary-key change whose `c` is not buffered yet."""

    def restart(self, next_offset: int, position: bytes | None) -> None:
        """Forget everything buffered; the stream goes on at `next_offset` with `position` applied."""
        self._clear()
        self.next_offset = next_offset
        self.last_position = position

    def __len__(self) -> int:
        return len(self.events)

    def full(self, max_rows: int, max_bytes: int) -> bool:
        return len(self.events) >= max_rows or self.nbytes >= max_bytes

    @property
    def flushable(self) -> bool:
        """Whether the buffer holds something a batch may end with: not only a key change's dangling `d`."""
        return self.last is not None and (not self.open_pair or len(self.events) > 1)

    def accept(self, records: list[Any], start: int, infos: dict[bytes, SchemaInfo], max_rows: int, max_bytes: int,
               now: float) -> tuple[int, Stop, Any]:
        """Buffer `records[start:]` (one partition's, in offset order) until done, full, or a record
        needs the caller: (index of the next record to look at, why, the schema id or the record).

        Records below `next_offset` (re-fetched after a seek) and events whose position is not
        above the newest one accepted (re-published by a restarted source) are dropped; tombstones
        only move the offset on. A SCHEMA or POISON record is not consumed: resolve its schema and
        call again, or `reject` it.
        """
        if self.last is None:
            self.since = now
        if isinstance(records, FetchedRecords):
            return self._accept_batches(records, start, infos, max_rows, max_bytes)
        ev = self.events
        offsets, positions, values, keys, evinfos = ev.offsets, ev.positions, ev.values, ev.keys, ev.infos
        nxt, last_pos, nbytes, last = self.next_offset, self.last_position, self.nbytes, self.last
        open_pair = self.open_pair
        i, n = start, len(records)
        stop: Stop = Stop.DONE
        arg: Any = None
        try:
            while i < n:
                r = records[i]
                off = r.offset
                if off < nxt:
                    i += 1
                    continue  # fetched again after a seek
                value = r.value
                if value is None:  # tombstone after a delete (compaction)
                    self.tombstones += 1
                    nxt = off + 1
                    last = off
                    i += 1
                    continue
                h = r.headers
                link = None
                if len(h) == 2 and h[0][0] == POSITION_HEADER and h[1][0] == SCHEMA_HEADER:
                    pos, sid = h[0][1], h[1][1]  # the order sources write them in
                else:
                    pos = sid = None
                    for k, v in h:
                        if k == POSITION_HEADER:
                            pos = v
                        elif k == SCHEMA_HEADER:
                            sid = v
                        elif k == OLD_KEY_HEADER or k == NEW_KEY_HEADER:
                            link = (k, v)
                if pos is None or sid is None:
                    stop, arg = Stop.POISON, r
                    break
                if last_pos is not None and pos <= last_pos:
                    self.duplicates += 1
                    nxt = off + 1
                    last = off
                    i += 1
                    continue
                info = infos.get(sid)
                if info is None:
                    stop, arg = Stop.SCHEMA, sid
                    break
                if link is not None:
                    ev.links[len(offsets)] = link
                offsets.append(off)
                positions.append(pos)
                values.append(value)
                keys.append(r.key)
                evinfos.append(info)
                nbytes += len(value)
                last_pos = pos
                nxt = off + 1
                last = off
                i += 1
                # The `d` of a key change carries the new key; its `c` (the old key) follows it.
                open_pair = link is not None and link[0] == NEW_KEY_HEADER
                if (len(offsets) >= max_rows or nbytes >= max_bytes) and not open_pair:
                    stop = Stop.FULL
                    break
        finally:
            self.next_offset, self.last_position, self.nbytes, self.last, self.open_pair = nxt, last_pos, nbytes, last, open_pair
        return i, stop, arg

    def _accept_batches(self, records: FetchedRecords, start: int, infos: dict[bytes, SchemaInfo], max_rows: int,
                        max_bytes: int) -> tuple[int, Stop, Any]:
        """`accept` over fetched record batches, a batch at a time in C (`_records.accept`, the same rules)."""
        ev = self.events
        k, j = records.locate(start)
        i = start
        for n, c in enumerate(records.chunks[k:]):
            lo = j if n == 0 else c.lo
            (reached, code, arg, self.next_offset, self.last_position, self.nbytes, last, self.open_pair, duplicates,
             tombstones, offsets) = native.accept(c.records, c.starts, c.base_offset, lo, c.hi, self.next_offset,
                                                  self.last_position, self.nbytes, -1 if self.last is None else self.last,
                                                  self.open_pair, len(ev.offsets), ev.positions, ev.values, ev.keys, ev.infos,
                                                  ev.links, infos, max_rows, max_bytes)
            self.last = None if last < 0 else last
            self.duplicates += duplicates
            self.tombstones += tombstones
            ev.offsets.frombytes(offsets)
            i += reached - lo
            if code:
                stop = _STOPS[code]
                return i, stop, records[i] if stop is Stop.POISON else arg
        return i, Stop.DONE, None

    def reject(self, record: Any, reason: str) -> None:
        """Consume a poison record: it goes to the dead-letter topic with the batch that covers it."""
        self.dead.append(DeadLetter(record.offset, record.key, record.value, list(record.headers), reason))
        self.next_offset = record.offset + 1
        self.last = record.offset

    def take(self, first: int, now: float) -> Batch | None:
        """Cut a batch starting at offset `first` (None when nothing may end a batch yet); a key
        change's dangling `d` and what was consumed after it stay buffered."""
        if not self.flushable:
            return None
        events, dead = self.events, self.dead
        assert self.last is not None
        if self.open_pair:
            n = len(events) - 1
            d_off = events.offsets[n]
            batch = Batch(events.select(range(n)), first, d_off - 1, events.positions[n - 1], [x for x in dead if x.offset < d_off])
            tail = events.select([n])
            tail_dead = [x for x in dead if x.offset > d_off]
            last = self.last
            self._clear()
            self.events, self.dead, self.last, self.open_pair = tail, tail_dead, last, True
            self.nbytes = len(tail.values[0])
        else:
            batch = Batch(events, first, self.last, self.last_position, dead)
            self._clear()
        self.since = now
        return batch
