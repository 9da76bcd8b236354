"""The reader's last item, FINISHED: it waits for room as long as the asyncio side reads the queue,
and not at all once that side closed the handover (it failed: a reader waiting for it would hold up
the source's restart)."""

from __future__ import annotations

import threading
import time

from lakeward.connectors.mysql.handover import FINISHED, QUEUE_BATCHES, Handover
from lakeward.connectors.mysql.history import SchemaHistory
from lakeward.core.metrics import SourceMetrics


def _full_handover() -> Handover:
    h = Handover(lambda: None, threading.Event(), SchemaHistory("e1"), SourceMetrics("legacy", "t"))
    for i in range(QUEUE_BATCHES):
        h.queue.put([i])
    return h


def test_finished_waits_for_a_slow_reader_of_the_queue():
    h = _full_handover()
    done = threading.Thread(target=h.finish)
    done.start()
    time.sleep(6)  # longer than the 5 s after which FINISHED used to be dropped
    assert done.is_alive()
    got = [h.queue.get() for _ in range(QUEUE_BATCHES + 1)]
    done.join(5)
    assert not done.is_alive() and got[-1] == [FINISHED]


def test_finished_does_not_wait_once_the_handover_is_closed():
    h = _full_handover()
    done = threading.Thread(target=h.finish)
    done.start()
    time.sleep(0.5)
    h.close()
    done.join(2)
    assert not done.is_alive()
