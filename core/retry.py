"""When to retry, and how long to wait: the one rule every retry loop of Lakeward follows.

`is_retriable(exc)` decides from the error tree (core/errors.py): a Lakeward error carries its own
`retriable` flag (TransientError and its subclasses True, TerminalError and its subclasses False).
Errors from libraries are classified once, here:

  * storage, network and timeouts (OSError, ConnectionError, TimeoutError): retriable;
  * a plugin's library errors: as the plugin's classifier says (`register_classifier`); the Delta
    sink registers delta-rs' (lakeward.sinks.delta.errors), so core imports no plugin's library;
  * broker errors (aiokafka's KafkaError): their own `retriable` flag, timeouts and connection
    errors retriable as well;
  * anything else (a bug, an error nobody classified): `unknown` (default False) — a worker's
    supervisor passes True and restarts the worker, logging the traceback.

`Backoff` gives the delays: exponential from `initial` up to `maximum`, for blocking loops
(`wait_sync`, in worker threads) and async ones (`wait`, interruptible by a stop event). `retry` is
the loop itself, for a call that may fail a few times before it works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from lakeward.core.errors import LakewardError

T = TypeVar("T")

# A classifier reads one library's errors: True/False when it knows the error, None when it doesn't.
Classifier = Callable[[BaseException], "bool | None"]
_classifiers: list[Classifier] = []


def register_classifier(classifier: Classifier) -> Classifier:
    """Have `is_retriable` ask `classifier` about errors that are not Lakeward's own (a plugin's library)."""
    if classifier not in _classifiers:
        _classifiers.append(classifier)
    return classifier


def _kafka_retriable(exc: BaseException) -> bool | None:
    try:
        from aiokafka import errors as ke
    except ImportError:  # pragma: no cover - aiokafka is a dependency
        return None
    if not isinstance(exc, ke.KafkaError):
        return None
    if isinstance(exc, (ke.KafkaTimeoutError, ke.KafkaConnectionError, ke.NodeNotReadyError, ke.RequestTimedOutError,
                        ke.NotLeaderForPartitionError, ke.LeaderNotAvailableError, ke.CoordinatorNotAvailableError)):
        return True
    return bool(getattr(exc, "retriable", False))


def is_retriable(exc: BaseException, *, unknown: bool = False) -> bool:
    """Whether retrying (after a backoff) may help; `unknown` for errors nobody classified."""
    if isinstance(exc, LakewardError):
        return bool(exc.retriable)
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    for classify in _classifiers:
        verdict = classify(exc)
        if verdict is not None:
            return verdict
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    kafka = _kafka_retriable(exc)
    if kafka is not None:
        return kafka or unknown
    return unknown


@dataclass
class Backoff:
    """Exponential backoff: `initial`, then ×`factor` per attempt, never above `maximum`."""

    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0
    attempt: int = 0
    """Failed attempts so far."""

    def next(self) -> float:
        """Count a failed attempt; the delay to wait before the next one."""
        self.attempt += 1
        return min(self.maximum, self.initial * self.factor ** (self.attempt - 1))

    def reset(self) -> None:
        self.attempt = 0

    def wait_sync(self) -> float:
        """Blocking wait (worker threads only): count an attempt, sleep its delay, return it."""
        delay = self.next()
        time.sleep(delay)
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Count an attempt and sleep its delay; False if `stop` was set meanwhile."""
        return await self.sleep(self.next(), stop)

    @staticmethod
    async def sleep(delay: float, stop: asyncio.Event | None = None) -> bool:
        """Sleep `delay` seconds (a delay from `next()`); False if `stop` was set meanwhile."""
        if stop is None:
            await asyncio.sleep(delay)
            return True
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
            return False
        except TimeoutError:
            return True


async def retry(call: Callable[[], Awaitable[T]], *, attempts: int, backoff: Backoff, stop: asyncio.Event | None = None) -> T:
    """`await call()` until it returns, at most `attempts` times, waiting `backoff`'s delays in between.
    An error that is not retriable (`is_retriable`) is raised at once; a retriable one once the
    attempts are used up, or `stop` is set while waiting."""
    while True:
        try:
            return await call()
        except Exception as e:
            if not is_retriable(e) or backoff.attempt + 1 >= attempts or not await backoff.wait(stop):
                raise
