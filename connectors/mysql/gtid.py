"""GTIDs and binlog coordinates while streaming: where the stream is, and where it resumes.

A resume point is taken after each whole transaction: the binlog file and the position after its last
event, with the GTID state (MariaDB's `domain-server-seq` per domain, MySQL's executed GTID set) that
`auto_position` resumes from. The open transaction's first event (its GTID event, or BEGIN) is the
second field of every stream position (core.events.Position.mysql).
"""

from __future__ import annotations

import orjson
from pymysqlreplication.gtid import Gtid, GtidSet

from lakeward.connectors.mysql.snapshot import BinlogPoint, file_index


class GtidState:
    """The GTID position after the last committed transaction: MariaDB's `domain-server-seq` per
    domain, or MySQL's executed GTID set."""

    def __init__(self, text: str, mariadb: bool):
        self.mariadb = mariadb
        self.text = text
        self._domains: dict[int, str] = {}
        self._set: GtidSet | None = None
        if mariadb:
            for part in filter(None, (x.strip() for x in text.split(","))):
                self._domains[int(part.split("-", 1)[0])] = part
        elif text:
            self._set = GtidSet(text)

    def commit(self, gtid: str | None) -> None:
        if not gtid:
            return
        if self.mariadb:
            self._domains[int(gtid.split("-", 1)[0])] = gtid
            self.text = ",".join(self._domains[d] for d in sorted(self._domains))
        else:
            if self._set is None:
                self._set = GtidSet(None)
            self._set.merge_gtid(Gtid(gtid))
            self.text = str(self._set)


class StreamPosition:
    """The binlog file being read, the open transaction and the GTID state after the last committed one."""

    def __init__(self, start: BinlogPoint, mariadb: bool):
        self.gtids = GtidState(start.gtid, mariadb)
        self.file, self.file_index, self.file_json = start.file, start.file_index, orjson.dumps(start.file)
        self.txn_pos: int | None = None
        """Position of the open transaction's first event; None between transactions."""
        self.gtid: str | None = None
        self.gtid_json = b"null"
        """The open transaction's GTID as JSON (the envelope's `source.gtid`)."""
        self.rows = False
        """Whether the open transaction changed captured rows."""
        self.standalone: bool | None = None
        """MariaDB's GTID flag: a DDL group that ends with its statement (None: not MariaDB's GTID event)."""

    def event(self, event_start: int) -> int:
        """An event of the open transaction starting at `event_start`: the transaction's first position."""
        if self.txn_pos is None:
            self.txn_pos = event_start
        return self.txn_pos

    def gtid_event(self, event_start: int, gtid: str, standalone: bool | None) -> None:
        self.txn_pos, self.gtid, self.gtid_json, self.standalone = event_start, gtid, orjson.dumps(gtid), standalone

    def commit(self, end: int) -> BinlogPoint:
        """The open transaction ended at `end`: the point streaming resumes from after it."""
        self.gtids.commit(self.gtid)
        self.abandon()
        return BinlogPoint(self.file, end, self.gtids.text)

    def abandon(self) -> None:
        """Forget the open transaction without committing its GTID (an XA PREPARE)."""
        self.txn_pos, self.rows, self.gtid, self.gtid_json = None, False, None, b"null"

    def rotate(self, file: str) -> None:
        self.file, self.file_index, self.file_json = file, file_index(file), orjson.dumps(file)
