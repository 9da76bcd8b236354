"""Buffered events -> one Arrow table per flush (the planner).

A batch arrives as raw envelopes (buffer.Events). The common batch — rows whose `after` carries
every column, deletes whose `before` carries the key, truncates — is decoded and planned in Arrow:
the envelopes are parsed in C++ (envelopes.read), the last event per primary key is found by a
group-by, and the value columns are converted by Arrow kernels (`plan_mirror_arrow`,
`plan_changelog_arrow`). Everything else — a primary-key change, an update without its unchanged
TOASTed values, a value the strict JSON reader refuses, an event that does not decode — is decoded
per event with orjson into plain tuples and planned by the per-row code (`plan_mirror`,
`plan_changelog`), which finds the offending event's offset or fills absent values from the batch
or the lake. Both ways write the same values; the value columns are typed by the table schema's
lake types, never by the JSON values.

Mirror mode collapses the batch per primary key (last event wins; see `plan_mirror`), changelog
mode keeps one row per event (`plan_changelog`).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lakeward.core.errors import PoisonEventError, TerminalError
from lakeward.core.events import OLD_KEY_HEADER, OP_CREATE, OP_DELETE, OP_READ, OP_TRUNCATE, OP_UPDATE, TableSchema
from lakeward.sinks.delta import envelopes
from lakeward.sinks.delta.arrow import to_arrow

if TYPE_CHECKING:
    from lakeward.sinks.delta.buffer import Events

# Metadata columns written next to the data columns.
META_OP = "_lakeward_op"
META_POSITION = "_lakeward_position"
META_COMMITTED_AT = "_lakeward_committed_at"
META_OFFSET = "_lakeward_offset"
META_TXID = "_lakeward_txid"
META_UNCHANGED = "_lakeward_unchanged"

# Helper columns of the MERGE source; never stored in the lake.
DELETE_FLAG = "__lw_del"
KEEP_PREFIX = "__lw_keep_"

RESERVED_PREFIXES = ("_lakeward_", "__lw_")

META_TYPES: dict[str, pa.DataType] = {
    META_OP: pa.large_string(),
    META_POSITION: pa.large_string(),
    META_COMMITTED_AT: pa.timestamp("us", tz="UTC"),
    META_OFFSET: pa.int64(),
    META_TXID: pa.int64(),
    META_UNCHANGED: pa.large_list(pa.large_string()),
}

# A decoded event (the per-event way) is a plain tuple; these are its fields. LINK: the other key of
# a primary-key change (header __debezium.newkey of its `d`, __debezium.oldkey of its `c`), else None.
OFF, POS, OP, BEFORE, AFTER, TS, TXID, KEY, INFO, LINK = range(10)

ROW_OPS = frozenset((OP_CREATE, OP_UPDATE, OP_READ))
ALL_OPS = frozenset((OP_CREATE, OP_UPDATE, OP_READ, OP_DELETE, OP_TRUNCATE))


@dataclass(frozen=True, slots=True, eq=False)
class SchemaInfo:
    """A table schema plus what the hot path looks up per event."""

    schema: TableSchema
    names: tuple[str, ...]
    colset: frozenset[str]
    pk: tuple[str, ...]
    lake_types: dict[str, str]

    @classmethod
    def of(cls, schema: TableSchema) -> SchemaInfo:
        names = tuple(c.name for c in schema.columns)
        return cls(schema, names, frozenset(names), tuple(schema.primary_key), {c.name: c.lake_type for c in schema.columns})


@dataclass(slots=True)
class Catalog:
    """The lake table's data columns: the union of the Delta schema and every table schema seen.

    `lake` holds the lake type of each column a table schema named (the newest one wins, which
    `check_evolution` guarantees stores the same way); `arrow` the Arrow type of every column,
    including columns only the Delta table still has (dropped at the source: null in new rows).
    """

    arrow: dict[str, pa.DataType] = field(default_factory=dict)
    lake: dict[str, str] = field(default_factory=dict)

    def column(self, name: str, values: list, n: int) -> pa.Array:
        lake_type = self.lake.get(name)
        if lake_type is None:
            return pa.nulls(n, self.arrow[name])
        return to_arrow(values, lake_type)


@dataclass(slots=True)
class Plan:
    """What one flush writes.

    kind: `merge` (mirror, by primary key), `overwrite` (mirror, the batch holds a truncate: the
    table becomes exactly `data`), `append` (changelog), `none` (nothing to write: only duplicates).
    For a merge, `data` carries the helper columns DELETE_FLAG and KEEP_PREFIX<col>; `plain()`
    is the same rows as a table to insert into an empty or new table.
    """

    kind: str
    data: pa.Table | None
    pk: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    events: int = 0

    def plain(self) -> pa.Table:
        assert self.data is not None
        t = self.data
        if DELETE_FLAG in t.column_names:
            t = t.filter(pc.invert(t.column(DELETE_FLAG)))
        return t.drop_columns([n for n in t.column_names if n.startswith("__lw_")])


def _poison(topic: str, partition: int, offset: int, what: str) -> PoisonEventError:
    e = PoisonEventError(f"topic {topic} partition {partition} offset {offset}: {what}; stopped this table "
                         f"(fix the event or the source, then replay the table)")
    e.offset = offset  # type: ignore[attr-defined]
    return e


def _columns(catalog: Catalog, rows: list[dict[str, Any]], evs: list[tuple], topic: str, partition: int) -> dict[str, pa.Array]:
    n = len(rows)
    out: dict[str, pa.Array] = {}
    for name in catalog.arrow:
        values = [r.get(name) for r in rows]
        try:
            out[name] = catalog.column(name, values, n)
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            raise _bad_value(catalog, name, values, evs, topic, partition, e) from None
    return out


def _bad_value(catalog: Catalog, name: str, values: list, evs: list[tuple], topic: str, partition: int, exc: Exception) -> PoisonEventError:
    """Find the first value of a column that does not convert, to name its offset (error path only)."""
    lake_type = catalog.lake[name]
    bad = min(range(len(values)), key=lambda i: evs[i][OFF])
    for i in sorted(range(len(values)), key=lambda i: evs[i][OFF]):
        try:
            to_arrow([values[i]], lake_type)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            bad = i
            break
    return _poison(topic, partition, evs[bad][OFF], f"column {name!r} value {values[bad]!r} is not a valid {lake_type} ({exc})")


def _meta(evs: list[tuple]) -> dict[str, pa.Array]:
    ts = pa.array([e[TS] for e in evs], type=pa.int64())
    return {
        META_OP: pa.array([e[OP] for e in evs], type=pa.large_string()),
        META_POSITION: pa.array([e[POS].hex() for e in evs], type=pa.large_string()),
        META_COMMITTED_AT: ts.cast(pa.timestamp("ms", tz="UTC")).cast(META_TYPES[META_COMMITTED_AT]),
    }


def _key_of(ev: tuple, pk: tuple[str, ...], topic: str, partition: int) -> tuple[Any, dict[str, Any]]:
    """(hashable key, {pk col: value}) of a delete: from `before`, else from the message key."""
    src = ev[BEFORE]
    try:
        if not src or any(c not in src for c in pk):
            src = orjson.loads(ev[KEY]) if ev[KEY] else None
        row = {c: src[c] for c in pk}
        key = row[pk[0]] if len(pk) == 1 else tuple(row[c] for c in pk)
        hash(key)
    except (KeyError, TypeError, orjson.JSONDecodeError):
        raise _poison(topic, partition, ev[OFF], f"delete event carries no primary key {list(pk)} in `before` nor in the message key") from None
    return key, row


_UPSERT, _FRESH, _DELETE = 0, 1, 2
"""State of a key in a mirror batch: upserted (absent columns keep the lake's value), upserted after
a delete or truncate in the same batch (absent columns are null: there is no stored value), deleted."""

Lookup = Callable[[pa.Table, list[str]], "pa.Table | None"]
"""Reads rows of the lake table by primary key: (keys as a table of the pk columns, columns wanted) ->
the matching rows with the pk columns and those columns (None: no lake table). Called from the
planning thread, on the snapshot the batch's commit is fenced on (LakeTable.lookup)."""


def is_key_change_delete(ev: tuple) -> bool:
    """The `d` half of a primary-key change: its `c` is the next event and must be in the same batch."""
    return ev[LINK] is not None and ev[OP] == OP_DELETE


def _link_key(ev: tuple, pk: tuple[str, ...], topic: str, partition: int) -> tuple[Any, dict[str, Any]]:
    """(hashable key, {pk col: value}) of the old key a key change's `c` names in its header."""
    try:
        row = orjson.loads(ev[LINK])
        row = {c: row[c] for c in pk}
        key = row[pk[0]] if len(pk) == 1 else tuple(row[c] for c in pk)
        hash(key)
    except (KeyError, TypeError, orjson.JSONDecodeError):
        raise _poison(topic, partition, ev[OFF], f"header {OLD_KEY_HEADER} is not a primary key {list(pk)}: {ev[LINK]!r}") from None
    return key, row


def _unfound(ev: tuple, old: dict[str, Any], columns: set[str] | list[str], topic: str, partition: int, where: str) -> TerminalError:
    info = ev[INFO]
    new = {c: ev[AFTER].get(c) for c in info.pk}
    cols = ", ".join(repr(c) for c in info.names if c in columns)
    return TerminalError(
        f"table {info.schema.qualified}: the primary key changed from {orjson.dumps(old).decode()} to {orjson.dumps(new).decode()} "
        f"(topic {topic} partition {partition} offset {ev[OFF]}) and the unchanged out-of-line (TOASTed) value of column(s) {cols}, "
        f"which PostgreSQL does not send again, is {where}; stopped this table rather than write NULL. Rebuild the table from a new "
        f"snapshot of the source (docs/operations.md, Rebuilding)")


def _carry(src: list, after: dict[str, Any], info: SchemaInfo, missing: set[str], src_keyrow: dict[str, Any], src_key: Any) -> tuple[dict, Any]:
    """The row of a key change's `c` (or of an update after one) built on the entry `src` holds:
    (row, lake fill or None). Columns `src` lacks come from the lake: under the key of `src` when it
    is an upsert (absent columns are stored there), else where `src` itself was to take them from."""
    prow = src[0]
    row = {**prow, **after}
    if src[1][INFO] is not info:
        row = {c: v for c, v in row.items() if c in info.colset}
    still = missing - prow.keys()
    if not still:
        return row, None
    if src[3] == _UPSERT:
        return row, (src_keyrow, src_key, still)
    fill = src[4]
    if fill is not None and still <= fill[2]:
        return row, (fill[0], fill[1], still)
    return row, False  # nowhere


def plan_mirror(events: list[tuple], catalog: Catalog, topic: str, partition: int, lookup: Lookup | None = None) -> Plan:
    """Collapse a batch per primary key, in order, into one MERGE (or one overwrite after a truncate).

    c/r/u upsert the `after` row, d deletes (key from `before` or the message key); a key change is
    d(old) + c(new). A column absent from `after` (TOASTed, unchanged) takes the value of an
    earlier event of the batch for that key; failing that the row gets a KEEP flag for the column
    and the MERGE keeps the stored value. A truncate drops everything before it: the table is
    overwritten with the rows that follow it.

    The `c` of a key change (header __debezium.oldkey) takes its absent columns from the old key:
    from the batch when the old key's row is in it (its `d` always is: a batch never ends between
    the two halves), else from the lake under the old key (`lookup`, before the MERGE deletes it).
    A value found nowhere stops the table (TerminalError): it is never written as NULL.
    """
    start, truncated = 0, False
    for i in range(len(events) - 1, -1, -1):
        if events[i][OP] == OP_TRUNCATE:
            start, truncated = i + 1, True
            break
    # Per key: [row, event, KEEP columns or None, state, lake fill or None]; a lake fill is
    # (old key row, old key, columns) to read from the lake under the old key.
    state: dict[Any, list] = {}
    moved: dict[Any, list | None] = {}
    """Old key of a key change in this batch -> its entry just before its `d` (None: not in the batch)."""
    pk: tuple[str, ...] = ()
    info = None
    for idx in range(start, len(events)):
        ev = events[idx]
        info = ev[INFO]
        pk = info.pk
        if ev[OP] == OP_DELETE:
            key, keyrow = _key_of(ev, pk, topic, partition)
            if ev[LINK] is not None:
                moved[key] = state.get(key)
            if truncated:
                state.pop(key, None)
            else:
                state[key] = [keyrow, ev, None, _DELETE, None]
            continue
        after = ev[AFTER]
        try:
            key = after[pk[0]] if len(pk) == 1 else tuple([after[c] for c in pk])
            prev = state.get(key)
        except (KeyError, TypeError):
            raise _poison(topic, partition, ev[OFF], f"`after` lacks a primary key column of {list(pk)}") from None
        if after.keys() >= info.colset:
            state[key] = [after, ev, None, _FRESH if truncated or (prev is not None and prev[3] != _UPSERT) else _UPSERT, None]
            continue
        # Some columns are absent: unchanged TOASTed values.
        missing = info.colset - after.keys()
        if ev[LINK] is not None and ev[OP] != OP_DELETE:
            # The new key of a key change: its absent values are the old key's. Nothing is stored
            # under the new key, so nothing is kept from there (state _FRESH).
            okey, okeyrow = _link_key(ev, pk, topic, partition)
            src = moved.pop(okey) if okey in moved else state.get(okey)
            if src is None:
                if truncated:
                    raise _unfound(ev, okeyrow, missing, topic, partition, "not in the batch, and the table was truncated before it")
                row, fill = after, (okeyrow, okey, missing)
            elif src[3] == _DELETE:
                raise _unfound(ev, okeyrow, missing, topic, partition, "gone: the old key was deleted before")
            else:
                row, fill = _carry(src, after, info, missing, okeyrow, okey)
                if fill is False:
                    raise _unfound(ev, okeyrow, missing, topic, partition, "not in the batch, and the old key's row was not stored before it")
            state[key] = [row, ev, None, _FRESH, fill]
            continue
        if prev is not None and prev[3] != _DELETE:
            if prev[4] is not None:  # an update of a moved row: what it lacks comes from the old key
                row, fill = _carry(prev, after, info, missing, {}, None)
                if fill is False:
                    raise _unfound(prev[1], prev[4][0], missing - prev[0].keys(), topic, partition, "missing from the old key's row")
                state[key] = [row, ev, None, prev[3], fill]
                continue
            prow = prev[0]
            row = {**prow, **after}
            if prev[1][INFO] is not info:
                row = {c: v for c, v in row.items() if c in info.colset}
            kind = prev[3]
            keep = missing - prow.keys() if kind == _UPSERT else None
        else:
            row, kind, keep = after, (_FRESH if truncated or prev is not None else _UPSERT), None
            if kind == _UPSERT:
                keep = missing
        state[key] = [row, ev, keep or None, kind, None]

    if not state and not truncated:
        return Plan("none", None, events=0)
    entries = list(state.values())
    rows = [e[0] for e in entries]
    evs = [e[1] for e in entries]
    cols = _columns(catalog, rows, evs, topic, partition)
    if any(e[4] is not None for e in entries):
        _fill_from_lake(cols, entries, catalog, pk, lookup, topic, partition)
    cols.update(_meta(evs))
    n = len(entries)
    if truncated:
        return Plan("overwrite", pa.table(cols) if n else _empty(catalog, mirror=True), pk=pk, events=len(events) - start)
    cols[DELETE_FLAG] = pa.array([e[3] == _DELETE for e in entries], type=pa.bool_())
    keep_cols: set[str] = set()
    for e in entries:
        if e[2]:
            keep_cols |= e[2]
    keep = tuple(c for c in catalog.arrow if c in keep_cols)
    for c in keep:
        cols[KEEP_PREFIX + c] = pa.array([bool(e[2]) and c in e[2] for e in entries], type=pa.bool_())
    return Plan("merge", pa.table(cols), pk=pk, keep=keep, events=len(events))


def _fill_from_lake(cols: dict[str, pa.Array], entries: list[list], catalog: Catalog, pk: tuple[str, ...], lookup: Lookup | None,
                    topic: str, partition: int) -> None:
    """Put the values the new keys of key changes take from the lake (under their old keys) into `cols`."""
    olds: dict[Any, dict[str, Any]] = {}
    wanted: set[str] = set()
    for e in entries:
        if e[4] is not None:
            olds.setdefault(e[4][1], e[4][0])
            wanted |= e[4][2]
    names = [c for c in catalog.arrow if c in wanted]
    keyrows = list(olds.values())
    keys = pa.table({c: catalog.column(c, [r[c] for r in keyrows], len(keyrows)) for c in pk})
    found = lookup(keys, names) if lookup is not None else None
    at: dict[Any, int] = {}
    if found is not None and found.num_rows:
        for j, r in enumerate(found.select(list(pk)).to_pylist()):
            at[r[pk[0]] if len(pk) == 1 else tuple(r[c] for c in pk)] = j
    ours = keys.to_pylist()  # the old keys as the lake's Python values, in the order of `olds`
    index = {k: at.get(r[pk[0]] if len(pk) == 1 else tuple(r[c] for c in pk)) for k, r in zip(olds, ours, strict=True)}
    for c in names:
        idx = [index[e[4][1]] if e[4] is not None and c in e[4][2] else None for e in entries]
        column = found.column(c) if found is not None and c in found.column_names else None
        for e, at_j in zip(entries, idx, strict=True):
            if e[4] is not None and c in e[4][2] and (at_j is None or column is None or not column[at_j].is_valid):
                raise _unfound(e[1], e[4][0], e[4][2], topic, partition,
                               "not in the batch, nor in the lake under the old key" if at_j is None else
                               f"not in the batch, and the lake holds NULL for {c!r} under the old key")
        taken = column.take(pa.array(idx, type=pa.int64())).combine_chunks().cast(cols[c].type)  # type: ignore[union-attr]
        cols[c] = pc.if_else(pc.is_valid(pa.array(idx, type=pa.int64())), taken, cols[c])


def _empty(catalog: Catalog, *, mirror: bool) -> pa.Table:
    fields = [pa.field(n, t) for n, t in catalog.arrow.items()]
    metas = (META_OP, META_POSITION, META_COMMITTED_AT) if mirror else tuple(META_TYPES)
    fields += [pa.field(m, META_TYPES[m]) for m in metas]
    return pa.schema(fields).empty_table()


_NO_ROW: dict[str, Any] = {}


def plan_changelog(events: list[tuple], catalog: Catalog, topic: str, partition: int) -> Plan:
    """One row per event: data from `after` (`before` for deletes, nothing for truncates) plus the
    op, position, commit time, Kafka offset, transaction id and the names of unchanged columns."""
    if not events:
        return Plan("none", None)
    rows: list[dict[str, Any]] = []
    unchanged: list[list[str] | None] = []
    for ev in events:
        op = ev[OP]
        if op == OP_DELETE:
            rows.append(ev[BEFORE] or (_key_of(ev, ev[INFO].pk, topic, partition)[1] if ev[INFO].pk else _NO_ROW))
            unchanged.append(None)
        elif op == OP_TRUNCATE:
            rows.append(_NO_ROW)
            unchanged.append(None)
        else:
            after = ev[AFTER]
            rows.append(after)
            info = ev[INFO]
            if after.keys() >= info.colset:
                unchanged.append(None)
            else:
                unchanged.append([c for c in info.names if c not in after])
    cols = _columns(catalog, rows, events, topic, partition)
    cols.update(_meta(events))
    cols[META_OFFSET] = pa.array([e[OFF] for e in events], type=pa.int64())
    cols[META_TXID] = pa.array([e[TXID] for e in events], type=pa.int64())
    cols[META_UNCHANGED] = pa.array(unchanged, type=META_TYPES[META_UNCHANGED])
    return Plan("append", pa.table(cols), events=len(events))


# --- the whole batch -------------------------------------------------------------------------------


def plan(events: Events, catalog: Catalog, mode: str, topic: str, partition: int,
         lookup: Lookup | None = None) -> tuple[Plan, Counter[str]]:
    """The plan of a batch and its events per op (for the metrics): in Arrow when the batch allows
    it, else per event. Raises PoisonEventError (with `.offset`) for an event that does not decode
    or whose value does not convert, TerminalError for a key change's value found nowhere."""
    if len(events):
        planned = plan_mirror_arrow(events, catalog) if mode == "mirror" else plan_changelog_arrow(events, catalog)
        if planned is not None:
            return planned
    decoded = decode(events, topic, partition)
    ops = Counter(ev[OP] for ev in decoded)
    if mode == "mirror":
        return plan_mirror(decoded, catalog, topic, partition, lookup=lookup), ops
    return plan_changelog(decoded, catalog, topic, partition), ops


def decode(events: Events, topic: str, partition: int) -> list[tuple]:
    """The events as plain tuples (see OFF ... LINK), decoded one by one; ops without rows to write
    (`m`, a logical decoding message) are left out."""
    loads = orjson.loads
    links = events.links
    out: list[tuple] = []
    for i, value in enumerate(events.values):
        try:
            ev = loads(value)
            op = ev["op"]
            after = ev.get("after")
            if op in ROW_OPS:
                if type(after) is not dict:
                    raise ValueError(f"op {op!r} without an `after` object")
            elif op not in ALL_OPS:
                continue
            src = ev.get("source")
            link = links[i][1] if i in links else None
            ts, txid = (src.get("ts_ms"), src.get("txId")) if src else (None, None)
            out.append((events.offsets[i], events.positions[i], op, ev.get("before"), after, ts, txid, events.keys[i], events.infos[i], link))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise _poison(topic, partition, events.offsets[i], f"undecodable event ({e.__class__.__name__}: {e})") from None
    return out


def _parsed(events: Events, catalog: Catalog, before: dict[str, str]) -> tuple[Events, pa.Table, pa.Array] | None:
    """The batch parsed in Arrow, without ops that write nothing: (its events, the parsed table, the
    op column); None when the batch must be decoded per event."""
    if events.links:
        return None  # a primary-key change: its `c` takes values from the old key's row
    table = envelopes.read(events.values, catalog.lake, before)
    if table is None:
        return None
    op = table.column("op").combine_chunks()
    if op.null_count:
        return None  # decoding per event names the event without an op
    known = pc.is_in(op, value_set=pa.array(sorted(ALL_OPS)))
    if not pc.all(known).as_py():
        rows = pc.indices_nonzero(known)
        events, table, op = events.select(rows.to_pylist()), table.take(rows), op.take(rows)
    rows_ops = pc.is_in(op, value_set=pa.array(sorted(ROW_OPS)))
    if table.num_rows and "after" in table.column_names:
        if not pc.all(pc.or_(pc.invert(rows_ops), pc.is_valid(table.column("after")))).as_py():
            return None  # a row op without an `after` object: decoding per event names it
    elif pc.any(rows_ops).as_py():
        return None
    # An update may lack unchanged TOASTed values (absent, not null): the JSON reader cannot tell
    # absent from null, so updates are looked at one by one (inserts and snapshot reads are whole).
    loads = orjson.loads
    for i in pc.indices_nonzero(pc.equal(op, OP_UPDATE)).to_pylist():
        after = loads(events.values[i]).get("after")
        if type(after) is not dict or not after.keys() >= events.infos[i].colset:
            return None
    return events, table, op


def _ops(op: pa.Array) -> Counter[str]:
    return Counter({c["values"]: c["counts"] for c in pc.value_counts(op).to_pylist()})


def _field(table: pa.Table, struct: str, name: str, n: int, lake_type: str) -> pa.ChunkedArray | pa.Array:
    """Column `name` of the parsed `before` or `after` (null where the struct is null)."""
    if struct not in table.column_names:
        return pa.nulls(n, envelopes.json_type(lake_type))
    return pc.struct_field(table.column(struct), [table.schema.field(struct).type.get_field_index(name)])


def _value_columns(catalog: Catalog, n: int, values_of: Callable[[str, str], pa.Array]) -> dict[str, pa.Array] | None:
    """The data columns in the lake types from `values_of(name, lake_type)` (JSON types); null for
    the columns only the Delta table has; None when a value does not convert."""
    cols: dict[str, pa.Array] = {}
    try:
        for name, typ in catalog.arrow.items():
            lake_type = catalog.lake.get(name)
            cols[name] = pa.nulls(n, typ) if lake_type is None else envelopes.from_json(values_of(name, lake_type), lake_type)
    except envelopes.ConversionError:
        return None
    return cols


def _hex_positions(positions: list[bytes]) -> pa.Array:
    """The positions as hex strings; when they all have one length (as a source writes them), in one
    hex() of their concatenation cut into equal slices, with no Python object per position."""
    n = len(positions)
    widths = set(map(len, positions))
    if len(widths) != 1:
        return pa.array([p.hex() for p in positions], type=pa.large_string())
    width = 2 * widths.pop()
    data = b"".join(positions).hex().encode()
    offsets = array("q", range(0, width * (n + 1), width))
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _meta_arrow(events: Events, picked: pa.Array | None, op: pa.Array, ts: Any) -> dict[str, pa.Array]:
    hexes = _hex_positions(events.positions)
    return {
        META_OP: op.cast(pa.large_string()),
        META_POSITION: hexes if picked is None else hexes.take(picked),
        META_COMMITTED_AT: ts.cast(pa.timestamp("ms", tz="UTC")).cast(META_TYPES[META_COMMITTED_AT]),
    }


def plan_mirror_arrow(events: Events, catalog: Catalog) -> tuple[Plan, Counter[str]] | None:
    """`plan_mirror` for a batch without key changes and absent values, in Arrow; None for any
    other batch (and for a value that does not convert: decoding per event names its offset)."""
    infos = set(events.infos)
    pks = {info.pk for info in infos}
    if len(pks) != 1:
        return None
    (pk,) = pks
    parsed = _parsed(events, catalog, {c: catalog.lake[c] for c in pk if c in catalog.lake})
    if parsed is None:
        return None
    events, table, op = parsed
    ops = _ops(op)
    n = table.num_rows
    truncated = OP_TRUNCATE in ops
    start = 0
    if truncated:
        start = pc.max(pc.indices_nonzero(pc.equal(op, OP_TRUNCATE))).as_py() + 1
        events, table, op = events.select(range(start, n)), table.slice(start), op.slice(start)
        n -= start
    if n == 0:
        if truncated:
            return Plan("overwrite", _empty(catalog, mirror=True), pk=pk, events=0), ops
        return Plan("none", None, events=0), ops
    is_del = pc.equal(op, OP_DELETE)
    keys = {}
    if any(c not in catalog.lake for c in pk):
        return None
    for c in pk:
        key = pc.if_else(is_del, _field(table, "before", c, n, catalog.lake[c]), _field(table, "after", c, n, catalog.lake[c]))
        if key.null_count:
            return None  # decoding per event finds a delete without its key in `before` (or names the event)
        keys[c] = key
    order = pa.table({**{f"k{j}": keys[c] for j, c in enumerate(pk)}, "i": pa.array(range(n), type=pa.int64())})
    last = order.group_by([f"k{j}" for j in range(len(pk))], use_threads=False).aggregate([("i", "min"), ("i", "max")])
    # in the order the keys first appear, as plan_mirror writes them
    picked = last.column("i_max").combine_chunks().take(pc.sort_indices(last.column("i_min")))
    is_del = is_del.take(picked)
    if truncated:  # a key deleted after the truncate is simply not in the new table
        picked = picked.filter(pc.invert(is_del))
        is_del = is_del.filter(pc.invert(is_del))
    m = len(picked)
    deletes = bool(pc.any(is_del).as_py()) if m else False

    def values_of(name: str, lake_type: str) -> pa.Array:
        if name in keys:
            return keys[name].take(picked)
        values = _field(table, "after", name, n, lake_type).take(picked)
        return pc.if_else(is_del, pa.scalar(None, values.type), values) if deletes else values

    cols = _value_columns(catalog, m, values_of)
    if cols is None:
        return None
    cols.update(_meta_arrow(events, picked, op.take(picked), table.column("ts_ms").take(picked)))
    if truncated:
        return Plan("overwrite", pa.table(cols) if m else _empty(catalog, mirror=True), pk=pk, events=n), ops
    cols[DELETE_FLAG] = is_del.combine_chunks() if isinstance(is_del, pa.ChunkedArray) else is_del
    return Plan("merge", pa.table(cols), pk=pk, events=n), ops


def plan_changelog_arrow(events: Events, catalog: Catalog) -> tuple[Plan, Counter[str]] | None:
    """`plan_changelog` for a batch without absent values, in Arrow; None for any other batch."""
    parsed = _parsed(events, catalog, catalog.lake)
    if parsed is None:
        return None
    events, table, op = parsed
    n = table.num_rows
    if n == 0:
        return Plan("none", None), _ops(op)
    is_del = pc.equal(op, OP_DELETE)
    if pc.any(is_del).as_py():
        # A delete's row is its `before`; without one (or without its key) plan_changelog takes the
        # key from the message key.
        before_ok = pc.is_valid(table.column("before")) if "before" in table.column_names else pa.nulls(n, pa.bool_())
        for info in set(events.infos):
            for c in info.pk:
                before_ok = pc.and_(before_ok, pc.is_valid(_field(table, "before", c, n, catalog.lake[c])))
        if not pc.all(pc.or_(pc.invert(is_del), before_ok)).as_py():
            return None
    cols = _value_columns(catalog, n, lambda name, lake_type: pc.if_else(is_del, _field(table, "before", name, n, lake_type),
                                                                        _field(table, "after", name, n, lake_type)))
    if cols is None:
        return None
    cols.update(_meta_arrow(events, None, op, table.column("ts_ms")))
    cols[META_OFFSET] = pa.array(events.offsets, type=pa.int64())
    cols[META_TXID] = table.column("txid")
    cols[META_UNCHANGED] = pa.nulls(n, META_TYPES[META_UNCHANGED])
    return Plan("append", pa.table(cols), events=n), _ops(op)
