"""The collector in the server's process: settled once the bundle is loaded (frozen, a larger
young generation), and every pause timed into a metric."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Histogram

from skipvit.service.gcpause import GEN0_THRESHOLD, GcPauses, settle


def test_settle_freezes_what_exists_and_raises_the_young_generation():
    before = gc.get_threshold()
    try:
        settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GEN0_THRESHOLD and gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_every_collection_is_timed_by_generation_while_started():
    registry = CollectorRegistry()
    hist = Histogram("pause_seconds", "x", ["generation"], registry=registry)
    pauses = GcPauses(hist)
    pauses.start()
    pauses.start()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        pauses.stop()
    gc.collect()  # not timed once stopped
    count = {g: registry.get_sample_value("pause_seconds_count", {"generation": g}) for g in ("0", "2")}
    assert count["0"] >= 1 and count["2"] >= 1, count
    assert pauses not in gc.callbacks
