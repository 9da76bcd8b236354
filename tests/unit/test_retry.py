"""core/retry.py: the error tree's `retriable` flag decides, library errors are classified once."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiokafka import errors as kafka_errors
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)

from lakeward.core import errors
from lakeward.core.retry import Backoff, is_retriable
from lakeward.sinks.delta import lake
from lakeward.sinks.delta.errors import deterministic

from .cancelling import ends_on_cancel

TREE = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.LakewardError)]


def test_the_tree_is_what_this_test_covers():
    assert {c.__name__ for c in TREE} >= {"LakewardError", "TerminalError", "TransientError", "ConfigError", "SourceSetupError",
                                          "ConnectionFailed", "LakeStorageError", "SchemaChangeError", "PoisonEventError",
                                          "CommitConflict"}


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_every_lakeward_error_is_classified_by_its_own_flag(cls):
    e = cls("table t: something")
    assert is_retriable(e) is cls.retriable
    assert is_retriable(e, unknown=True) is cls.retriable  # known: the unknown policy never applies
    assert lake.is_retriable(e) is cls.retriable  # the sink's name for it is the same function
    if issubclass(cls, errors.TransientError):
        assert cls.retriable is True
    if issubclass(cls, errors.TerminalError):
        assert cls.retriable is False


def test_an_error_can_override_its_flag():
    class Flaky(errors.TerminalError):
        retriable = True

    assert is_retriable(Flaky("x"))


@pytest.mark.parametrize("exc", [OSError("disk"), ConnectionResetError("reset"), TimeoutError("slow"), TimeoutError(),
                                 CommitFailedError("conflict"), DeltaError("Generic S3 error: 503 Slow Down"),
                                 kafka_errors.KafkaConnectionError("down"), kafka_errors.KafkaTimeoutError(),
                                 kafka_errors.RequestTimedOutError(), kafka_errors.NotLeaderForPartitionError()],
                         ids=lambda e: e.__class__.__name__)
def test_storage_network_conflicts_and_timeouts_are_retriable(exc):
    assert is_retriable(exc) and not deterministic(exc)


@pytest.mark.parametrize("exc", [SchemaMismatchError("Cannot merge types"), DeltaProtocolError("reader version"),
                                 TableNotFoundError("no log"),
                                 DeltaError("Kernel error: Unsupported: Table contains TIMESTAMP_NTZ columns but does not have the required "
                                            "'timestampNtz' feature in reader and writer features"),
                                 DeltaError("Cast error: Cannot cast string 'x' to value of Int64 type"),
                                 Exception("Schema error: No field named y"), DeltaError("Invalid argument: bad predicate")],
                         ids=lambda e: f"{e.__class__.__name__}:{str(e)[:20]}")
def test_delta_errors_no_retry_can_fix_are_terminal(exc):
    assert deterministic(exc)
    assert not is_retriable(exc) and not is_retriable(exc, unknown=True)
    assert isinstance(lake.classify(exc, "shop.public.t"), errors.SchemaChangeError)


def test_the_sink_keeps_retriable_delta_errors_as_they_are():
    e = DeltaError("Generic S3 error: connection reset")
    assert lake.classify(e, "shop.public.t") is e


@pytest.mark.parametrize("exc", [KeyError("x"), AttributeError("y"), RuntimeError("z"), kafka_errors.IllegalStateError("w"),
                                 kafka_errors.MessageSizeTooLargeError()], ids=lambda e: e.__class__.__name__)
def test_unclassified_errors_follow_the_callers_policy(exc):
    assert is_retriable(exc) is False
    assert is_retriable(exc, unknown=True) is True


def test_cancellation_is_never_retried():
    assert not is_retriable(asyncio.CancelledError(), unknown=True)
    assert not is_retriable(KeyboardInterrupt(), unknown=True)


def test_backoff_doubles_up_to_its_maximum_and_resets():
    b = Backoff(initial=0.25, maximum=2.0)
    assert [b.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert b.attempt == 6
    b.reset()
    assert b.next() == 0.25


async def test_backoff_wait_stops_early_when_told():
    stop = asyncio.Event()
    stop.set()
    b = Backoff(initial=10.0)
    async with asyncio.timeout(1.0):
        assert await b.wait(stop) is False
    assert await Backoff(initial=0.01).wait(asyncio.Event()) is True


async def test_backoff_sleep_keeps_a_cancel_that_comes_as_stop_is_set():
    """Cancelled in the same loop cycle as `stop` is set: the cancel is not lost (it was with
    Python 3.11's asyncio.wait_for, which returned the result instead)."""
    for yields in range(4):
        stop = asyncio.Event()

        async def sleeper(stop: asyncio.Event = stop) -> None:
            while True:
                await Backoff.sleep(10.0, stop)
                stop.clear()

        task = asyncio.create_task(sleeper())
        for _ in range(yields):
            await asyncio.sleep(0)
        stop.set()
        await asyncio.sleep(0)
        assert await ends_on_cancel(task), f"the cancel was lost ({yields} loop cycles in)"
