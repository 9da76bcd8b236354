"""The sink's consumer hands over records as aiokafka fetched them.

aiokafka builds a ConsumerRecord (a dataclass, plus a tuple of the headers) from each fetched record
before it returns it. The sink reads only a record's offset, key, value and headers, which the fetched
record (aiokafka's Cython DefaultRecord) has as well, and at the sink's rate that copy is a quarter of
what fetching costs: 3.0 -> 2.26 µs a record without it (1M events, docs/performance.md).

aiokafka has no option for this, so the one hook below is written by hand: a consumer whose
`value_deserializer` is `as_fetched` gets the fetched records themselves; every other consumer gets
ConsumerRecords as before. If a later aiokafka drops the method the hook replaces, nothing is
installed and the sink gets ConsumerRecords, which it reads the same way (only slower);
tests/unit/test_fetch.py fails then, so the change does not go unnoticed.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.fetcher import PartitionRecords


def as_fetched(value: bytes | None) -> bytes | None:
    """The value as fetched. As a consumer's value_deserializer it also asks for the records as fetched."""
    return value


def _install() -> bool:
    original = getattr(PartitionRecords, "_consumer_record", None)
    if original is None or getattr(original, "lakeward_hook", False):
        return original is not None

    def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is as_fetched:
            return record
        return original(self, tp, record)

    _consumer_record.lakeward_hook = True  # type: ignore[attr-defined]  # installed once per process
    PartitionRecords._consumer_record = _consumer_record
    return True


INSTALLED = _install()
"""Whether consumers with `as_fetched` get the records as fetched (else ConsumerRecords)."""
