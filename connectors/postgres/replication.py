"""The streaming replication connection: slots, START_REPLICATION and the COPY_BOTH stream.

psycopg 3 has no replication API, but its libpq layer (`conn.pgconn`) can drive COPY_BOTH; here
that is done without blocking the event loop: libpq in non-blocking mode, and asyncio waits for the
socket. Wire format: https://www.postgresql.org/docs/15/protocol-replication.html
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import pq

from lakeward.connectors.postgres.pgoutput import PG_EPOCH_US
from lakeward.core.errors import ConnectionFailed, SourceSetupError
from lakeward.core.events import lsn_to_str, str_to_lsn

_KEEPALIVE = struct.Struct(">QQB")
_STATUS = struct.Struct(">cQQQqB")
_U64 = struct.Struct(">Q")

XLOG_PAYLOAD = 25
"""Where the pgoutput message starts in an XLogData buffer: after `w`, walStart, walEnd, sendTime."""
READ_BATCH_MAX = 10_000
_STREAM_KINDS = (119, 107)  # 'w' XLogData, 'k' keepalive; anything else in the stream is skipped


@dataclass(slots=True)
class Keepalive:
    wal_end: int
    reply_requested: bool


def xlog_start(buf: bytes) -> int:
    """walStart of a raw XLogData buffer (the LSN of its change)."""
    return _U64.unpack_from(buf, 1)[0]


def keepalive(buf: bytes) -> Keepalive:
    end, _, reply = _KEEPALIVE.unpack_from(buf, 1)
    return Keepalive(end, bool(reply))


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    confirmed_flush_lsn: int
    active: bool


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_lsn: int
    snapshot_name: str | None


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def get_slot(conn: psycopg.AsyncConnection, slot: str) -> SlotInfo | None:
    """The slot named `slot`, or None; a slot Lakeward cannot stream from (physical, another plugin,
    another database) is a SourceSetupError naming it and the fix. Never drops anything."""
    row = await (await conn.execute(
        "SELECT slot_name, confirmed_flush_lsn::text, active, slot_type, plugin, database, current_database() "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    )).fetchone()
    if row is None:
        return None
    name, confirmed, active, kind, plugin, database, current = row
    fix = (f"set `slot:` of this source to another name, or drop that slot if nothing uses it "
           f"(SELECT pg_drop_replication_slot('{slot}'))")
    if kind != "logical":
        raise SourceSetupError(f"replication slot {slot} is a {kind} slot; Lakeward needs a logical slot with plugin pgoutput: {fix}")
    if database != current:
        raise SourceSetupError(f"replication slot {slot} belongs to database {database}, not {current} (slot names are cluster-wide): {fix}")
    if plugin != "pgoutput":
        raise SourceSetupError(f"replication slot {slot} in database {database} uses the output plugin {plugin}; Lakeward reads pgoutput: "
                               f"{fix}, or create it with SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    return SlotInfo(name, str_to_lsn(confirmed) if confirmed else 0, active)


def stream_ended(msg: str) -> ConnectionFailed | SourceSetupError:
    """The error for a stream the server ended with `msg`: retried, unless retrying cannot help."""
    if "publication" in msg and "does not exist" in msg:
        # pgoutput reads the publication as of each change: a slot that retained changes from before
        # the publication was created can never decode them through it.
        return SourceSetupError(
            f"the replication stream ended: {msg.splitlines()[0]}. The slot holds changes from before the publication was "
            "created, which PostgreSQL cannot decode through it: create the publication (with the tables, "
            "publish_via_partition_root = true) before the slot, or drop the slot and start again")
    return ConnectionFailed(f"the replication stream ended: {msg or 'server closed the connection'}")


class ReplicationConnection:
    """One `replication=database` connection: creates slots, then streams pgoutput."""

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn
        self.pg = conn.pgconn
        self._readable: asyncio.Event | None = None
        self.streaming = False

    async def create_slot(self, slot: str, *, temporary: bool = False, export_snapshot: bool = True) -> CreatedSlot:
        mode = "export" if export_snapshot else "nothing"
        temp = " TEMPORARY" if temporary else ""
        try:
            cur = await self.conn.execute(f"CREATE_REPLICATION_SLOT {slot}{temp} LOGICAL pgoutput (SNAPSHOT '{mode}')")
        except psycopg.errors.ConfigurationLimitExceeded as e:
            raise SourceSetupError(f"cannot create replication slot {slot}: {e}; raise max_replication_slots or drop unused slots") from None
        row = await cur.fetchone()
        assert row is not None
        return CreatedSlot(row[0], str_to_lsn(row[1]), row[2])

    async def start(self, slot: str, lsn: int, publication: str, *, messages: bool = False) -> None:
        """`messages`: also stream logical decoding messages (pg_logical_emit_message; PostgreSQL 14+)."""
        options = f"proto_version '1', publication_names {quote_literal(publication)}"
        if messages:
            options += ", messages 'true'"
        self.pg.send_query(f"START_REPLICATION SLOT {slot} LOGICAL {lsn_to_str(lsn)} ({options})".encode())
        self.pg.nonblocking = 1
        await self._flush()
        while True:
            while self.pg.is_busy():
                await self._wait_readable(None)
                self.pg.consume_input()
            res = self.pg.get_result()
            if res is None:
                raise ConnectionFailed("replication connection closed while starting the stream")
            if res.status == pq.ExecStatus.COPY_BOTH:
                self.streaming = True
                return
            if res.status == pq.ExecStatus.FATAL_ERROR:
                msg = (res.error_message or b"").decode(errors="replace").strip()
                if "is active for PID" in msg:
                    raise SourceSetupError(f"slot {slot} is in use by another process ({msg}); is another source worker running?")
                raise SourceSetupError(f"START_REPLICATION failed: {msg}")

    async def _wait_readable(self, wait_s: float | None) -> bool:
        """Wait until the socket has data (True) or `wait_s` seconds passed (False; None waits as long as it takes)."""
        loop = asyncio.get_running_loop()
        return await self._wait(loop.add_reader, loop.remove_reader, wait_s)

    async def _wait(self, add: Callable[..., None], remove: Callable[[int], object], wait_s: float | None) -> bool:
        fut = asyncio.get_running_loop().create_future()
        fd = self.pg.socket

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        add(fd, ready)
        try:
            async with asyncio.timeout(wait_s):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            remove(fd)

    async def _flush(self) -> None:
        """Send what libpq holds, waiting for the socket to take more when it is full."""
        loop = asyncio.get_running_loop()
        while self.pg.flush() == 1:
            await self._wait(loop.add_writer, loop.remove_writer, None)

    async def read_batch(self, wait_s: float, max_messages: int = READ_BATCH_MAX) -> list[bytes]:
        """Every CopyData message libpq has or can read without blocking (at most `max_messages`),
        as raw buffers: `w` XLogData (payload from byte 25) or `k` keepalive; parse them with
        `xlog_start` / `keepalive`. Waits up to `wait_s` seconds for the first one; [] when none came.

        The hot path of streaming: one await per socket read instead of one per message."""
        pg = self.pg
        get = pg.get_copy_data
        out: list[bytes] = []
        append = out.append
        consumed = False
        while True:
            n, data = get(1)
            if n > 0:
                buf = bytes(data)
                if buf[0] in _STREAM_KINDS:
                    append(buf)
                    if len(out) >= max_messages:
                        return out
                continue
            if n == 0:
                if not consumed:
                    # Whatever the kernel already has for us, without waiting.
                    pg.consume_input()
                    consumed = True
                    continue
                if out:
                    return out
                if not await self._wait_readable(wait_s):
                    return out
                pg.consume_input()
                continue
            res = pg.get_result()
            msg = (res.error_message or b"").decode(errors="replace").strip() if res is not None else ""
            self.streaming = False
            raise stream_ended(msg)

    async def send_status(self, flushed_lsn: int, *, reply: bool = False) -> None:
        """Standby status update: written/flushed/applied up to `flushed_lsn` (all the same for us)."""
        now = int(time.time() * 1_000_000) - PG_EPOCH_US
        self.pg.put_copy_data(_STATUS.pack(b"r", flushed_lsn, flushed_lsn, flushed_lsn, now, 1 if reply else 0))
        await self._flush()

    async def close(self) -> None:
        try:
            if self.streaming:
                self.pg.put_copy_end()
                await self._flush()
        except psycopg.Error:
            pass
        await self.conn.close()
