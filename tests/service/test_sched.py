"""The scheduling policy of the event loop's thread and of the engine processes (``service.sched``)."""

from __future__ import annotations

import os
import threading

import pytest

from skipvit.service import sched

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")


def test_batch_and_back_to_normal_on_the_calling_thread_only():
    seen = []

    def thread() -> None:
        seen.append((sched.batch(), os.sched_getscheduler(0)))
        seen.append((sched.normal(), os.sched_getscheduler(0)))

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    assert seen == [(True, os.SCHED_BATCH), (True, os.SCHED_OTHER)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread was never changed


def test_the_setting_can_turn_it_off(monkeypatch):
    from skipvit.service.settings import Settings

    assert Settings().loop_sched == "batch"
    monkeypatch.setenv("SKIPVIT_LOOP_SCHED", "normal")
    assert Settings().loop_sched == "normal"
    monkeypatch.setenv("SKIPVIT_LOOP_SCHED", "fifo")
    with pytest.raises(ValueError):
        Settings()
