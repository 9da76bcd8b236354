"""core.retry.retry: the loop every retry in Lakeward runs, honouring each error's `retriable`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from lakeward.core.errors import SourceSetupError, TransientError
from lakeward.core.retry import Backoff, retry


def calls(*outcomes: BaseException | str) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    made: list[int] = []

    async def call() -> str:
        made.append(len(made))
        outcome = outcomes[len(made) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return made, call


def test_a_retriable_error_is_retried_until_the_call_works():
    made, call = calls(TransientError("a"), ConnectionResetError("b"), "ok")
    assert asyncio.run(retry(call, attempts=5, backoff=Backoff(initial=0.001, maximum=0.001))) == "ok"
    assert made == [0, 1, 2]


def test_a_terminal_error_is_raised_at_once():
    made, call = calls(SourceSetupError("fix this"), "ok")
    with pytest.raises(SourceSetupError):
        asyncio.run(retry(call, attempts=5, backoff=Backoff(initial=0.001)))
    assert made == [0]


def test_the_last_attempts_error_is_raised():
    made, call = calls(*[TransientError(str(i)) for i in range(3)], "too late")
    with pytest.raises(TransientError, match="2"):
        asyncio.run(retry(call, attempts=3, backoff=Backoff(initial=0.001)))
    assert made == [0, 1, 2]


def test_stop_ends_the_wait():
    made, call = calls(TransientError("a"), "ok")

    async def stopped() -> None:
        stop = asyncio.Event()
        stop.set()
        await retry(call, attempts=5, backoff=Backoff(initial=10), stop=stop)

    with pytest.raises(TransientError):
        asyncio.run(stopped())
    assert made == [0]
