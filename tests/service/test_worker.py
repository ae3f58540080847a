"""The engine in child processes answers like the in-process engine, a batch cut across several
children comes back whole and in order, and a dead or stopped child is replaced while its slices
are answered by another (or hear ``EngineGone`` when the deadline does not allow a retry)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from skipvit.service.engine import Engine
from skipvit.service.healing import HealPolicy
from skipvit.service.settings import Settings
from skipvit.service.worker import EngineGone, EngineProcess, layout


def wait_for(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_child_answers_like_the_engine_and_a_dead_child_is_reported(tiny_gate_bundle):
    local = Engine.from_dir(tiny_gate_bundle, device="cpu")
    remote = EngineProcess(tiny_gate_bundle, device="cpu", threads=1)
    try:
        assert (remote.channels, remote.image_size, remote.depth) == (local.channels, local.image_size, 4)
        assert remote.batch_key("rl") == local.batch_key("nsga-a")
        g = torch.Generator().manual_seed(1)
        images = torch.randint(
            0, 256, (6, local.channels, local.image_size, local.image_size), dtype=torch.uint8, generator=g
        )
        points = ["rl", "nsga-a", "rl-t0.8"] * 2
        assert remote.predict(images, points) == local.predict(images, points)
        with pytest.raises(RuntimeError, match="cannot share"):  # an engine error, the child lives on
            remote.predict(images[:2], ["static", "rl"])
        assert remote.predict(images[:1], "static")[0].path == "1111"
        old = remote.processes[0]
        old.kill()
        old.join(10)
        with pytest.raises(EngineGone, match=r"deadline|no time left"):  # no child, no time to wait
            remote.predict(images[:1], "static", deadline=time.monotonic())
        assert remote.predict(images, points) == local.predict(images, points)  # waits for the new one
        assert remote.processes[0].pid != old.pid and remote.capacity() == (1, 1)
    finally:
        remote.close()
        remote.close()  # idempotent


def test_a_slice_lost_twice_is_engine_gone_and_a_wedged_child_is_replaced(tiny_bundle):
    """A child computing one slice past the slice timeout counts as wedged: killed and replaced,
    its slice retried once on the replacement; lost there too, the batch hears ``EngineGone``."""
    policy = HealPolicy(slice_timeout_s=0.02, backoff_s=0.05)
    remote = EngineProcess(tiny_bundle, device="cpu", threads=1, policy=policy)
    try:
        first = remote.processes[0].pid
        big = torch.zeros(3000, 1, 16, 16, dtype=torch.uint8)  # well over 0.02 s of compute
        with pytest.raises(EngineGone, match="wedged"):
            remote.predict(big, "static", deadline=time.monotonic() + 60)
        wait_for(lambda: remote.capacity() == (1, 1))
        assert remote.processes[0].pid != first
        assert remote.predict(big[:1], "static")[0].path == "1111"  # a short one is fine
    finally:
        remote.close()


def test_a_bundle_the_child_cannot_load_is_reported(tiny_bundle, tmp_path):
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken)
    for f in (broken / "weights").glob("*.safetensors"):
        f.write_bytes(b"junk")
    with pytest.raises(Exception, match=r"could not start|manifest|sha256|weights"):
        EngineProcess(broken, device="cpu")


def test_batches_sent_from_several_threads_each_get_their_own_answer(tiny_gate_bundle):
    from concurrent.futures import ThreadPoolExecutor

    local = Engine.from_dir(tiny_gate_bundle, device="cpu")
    remote = EngineProcess(tiny_gate_bundle, device="cpu", threads=1)
    try:
        g = torch.Generator().manual_seed(2)
        batches = [
            torch.randint(
                0,
                256,
                (1 + k % 4, local.channels, local.image_size, local.image_size),
                dtype=torch.uint8,
                generator=g,
            )
            for k in range(24)
        ]
        points = ["static", "rl", "nsga-a"]
        with ThreadPoolExecutor(3) as pool:  # up to three batches in flight at once
            got = list(pool.map(lambda k: remote.predict(batches[k], points[k % 3]), range(24)))
        assert got == [local.predict(b, points[k % 3]) for k, b in enumerate(batches)]
        with ThreadPoolExecutor(3) as pool:  # the child dies with batches in flight: all are answered
            futures = [pool.submit(remote.predict, batches[k], points[k % 3]) for k in range(6)]
            remote.processes[0].kill()
            got = [f.result(timeout=60) for f in futures]
        assert got == [local.predict(b, points[k % 3]) for k, b in enumerate(batches[:6])]
    finally:
        remote.close()


def test_several_children_each_take_a_slice_and_the_rows_come_back_in_order(tiny_gate_bundle):
    from concurrent.futures import ThreadPoolExecutor

    local = Engine.from_dir(tiny_gate_bundle, device="cpu")
    remote = EngineProcess(tiny_gate_bundle, device="cpu", threads=1, workers=2)
    try:
        g = torch.Generator().manual_seed(3)
        images = torch.randint(
            0, 256, (7, local.channels, local.image_size, local.image_size), dtype=torch.uint8, generator=g
        )
        points = ["rl", "nsga-a", "rl-t0.8", "static"]
        for pts in (points[:3] * 2 + ["rl"], "rl", "static"):
            got, want = remote.predict(images, pts), local.predict(images, pts)
            assert [(r.index, r.path, r.top_k[0][:2]) for r in got] == [
                (r.index, r.path, r.top_k[0][:2]) for r in want
            ]
            assert [r.probability for r in got] == pytest.approx([r.probability for r in want], abs=1e-5)
        assert [c.sent for c in remote._children] == [3, 3]  # each batch of 7 was cut in two
        remote.predict(images[:1], "rl")  # one row: one child, taken in turn
        remote.predict(images[:1], "rl")
        assert [c.sent for c in remote._children] == [4, 4]
        with pytest.raises(RuntimeError, match="cannot share"):  # an engine error, the children live on
            remote.predict(images[:4], ["static", "rl"] * 2)
        with pytest.raises(ValueError, match="row points"):
            remote.predict(images[:2], ["rl"])
        batches = [images[: 1 + k % 7] for k in range(20)]
        with ThreadPoolExecutor(3) as pool:  # several batches in flight, slices queued in both pipes
            got = list(pool.map(lambda k: remote.predict(batches[k], points[k % 4]), range(20)))
        assert [[r.path for r in rows] for rows in got] == [
            [r.path for r in local.predict(b, points[k % 4])] for k, b in enumerate(batches)
        ]
        want = [r.path for r in local.predict(images, "rl")]
        for sig in (signal.SIGKILL, signal.SIGSTOP):  # a dead child, then a stopped one
            victim = remote.processes[1]
            with ThreadPoolExecutor(3) as pool:  # its slices go to the other child
                futures = [pool.submit(remote.predict, images, "rl") for _ in range(6)]
                os.kill(victim.pid, sig)
                t0 = time.monotonic()
                assert all([r.path for r in f.result(timeout=30)] == want for f in futures)
            assert time.monotonic() - t0 < 5
            wait_for(lambda v=victim: v.exitcode is not None)  # killed and reaped, by the supervisor
            wait_for(lambda: remote.capacity() == (2, 2))
            assert remote.processes[1].pid != victim.pid
            assert [r.path for r in remote.predict(images, "rl")] == want
    finally:
        remote.close()


def test_layout_gives_each_cpu_core_a_process_and_cuda_one(monkeypatch):
    import os

    from skipvit.service import worker

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    monkeypatch.setattr(worker, "usable_cores", lambda: 2)
    assert layout("cpu", None, None) == (2, 1)
    assert layout("cpu", 1, None) == (1, 2)
    assert layout("cpu", 3, 2) == (3, 2)
    monkeypatch.setattr(worker, "usable_cores", lambda: 16)
    assert layout("cpu", None, None) == (4, 4)  # at most 4 by default: slices of >= 8 rows at batch 32
    assert layout("cuda", None, None) == (1, None)
    with pytest.raises(ValueError, match="SKIPVIT_ENGINE=process"):
        Settings(engine="thread", engine_workers=2)


def test_usable_cores_respects_a_cgroup_cpu_quota(monkeypatch, tmp_path):
    import os

    from skipvit.service.worker import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert usable_cores(tmp_path) == 16  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == 16  # no quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == 2  # 1.5 CPUs: 2 threads' worth, rounded up
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(tmp_path) == 16


def test_close_returns_while_a_hung_child_leaves_a_batch_stuck_in_a_full_pipe(tiny_bundle):
    """A hung child stops reading: a big batch then blocks in the pipe, and close() must still
    end the child within its bound instead of waiting behind that batch to say goodbye."""
    import threading

    # the supervisor would replace the stopped child within a second: here it waits
    remote = EngineProcess(tiny_bundle, device="cpu", threads=1, policy=HealPolicy(heartbeat_timeout_s=60))
    os.kill(remote.processes[0].pid, signal.SIGSTOP)
    heard: list[BaseException] = []

    def ask() -> None:
        try:
            remote.predict(torch.zeros(4000, 1, 16, 16, dtype=torch.uint8), "static")  # 1 MB: fills the pipe
        except BaseException as e:  # whatever it hears, it must hear something
            heard.append(e)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    deadline = time.monotonic() + 10
    while not remote._send_lock.locked():  # the send has begun; the stopped child never reads it
        assert time.monotonic() < deadline, "the batch was never sent"
        time.sleep(0.01)
    t0 = time.monotonic()
    remote.close(timeout=1.0)
    assert time.monotonic() - t0 < 5
    asking.join(5)
    assert not asking.is_alive() and isinstance(heard[0], EngineGone)
    assert not remote.processes[0].is_alive()
