"""The engine in a child process answers like the in-process engine, and a dead child is reported."""

from __future__ import annotations

import pytest
import torch

from service.engine import Engine
from service.worker import EngineGone, EngineProcess


def test_the_child_answers_like_the_engine_and_a_dead_child_is_reported(tiny_gate_bundle):
    local = Engine.from_dir(tiny_gate_bundle, device="cpu")
    remote = EngineProcess(tiny_gate_bundle, device="cpu", threads=1)
    try:
        assert (remote.channels, remote.image_size, remote.depth) == (local.channels, local.image_size, 4)
        assert remote.batch_key("rl") == local.batch_key("nsga-a")
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (6, local.channels, local.image_size, local.image_size),
                               dtype=torch.uint8, generator=g)  # fmt: skip
        points = ["rl", "nsga-a", "rl-t0.8"] * 2
        assert remote.predict(images, points) == local.predict(images, points)
        with pytest.raises(RuntimeError, match="cannot share"):  # an engine error, the child lives on
            remote.predict(images[:2], ["static", "rl"])
        assert remote.predict(images[:1], "static")[0].path == "1111"
        remote._proc.kill()
        remote._proc.join(10)
        with pytest.raises(EngineGone, match="exited"):
            remote.predict(images[:1], "static")
    finally:
        remote.close()
        remote.close()  # idempotent


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
        batches = [torch.randint(0, 256, (1 + k % 4, local.channels, local.image_size, local.image_size),
                                 dtype=torch.uint8, generator=g) for k in range(24)]  # fmt: skip
        points = ["static", "rl", "nsga-a"]
        with ThreadPoolExecutor(3) as pool:  # up to three batches in flight at once
            got = list(pool.map(lambda k: remote.predict(batches[k], points[k % 3]), range(24)))
        assert got == [local.predict(b, points[k % 3]) for k, b in enumerate(batches)]
        remote._proc.kill()
        remote._proc.join(10)
        with ThreadPoolExecutor(2) as pool:  # every batch in flight hears that the child is gone
            futures = [pool.submit(remote.predict, batches[0], "static") for _ in range(4)]
            for f in futures:
                with pytest.raises(EngineGone):
                    f.result(timeout=10)
    finally:
        remote.close()
