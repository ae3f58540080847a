"""Training under torchrun: two gloo processes on the CPU (loopback) train what one process trains,
a distributed run resumes exactly, rank 0 alone writes; and, without processes, the sampler, the
batch check and the per-rank draws (``training.distributed``).

Equivalence needs runs whose only randomness is the order of the data, which both runs draw alike:
no augmentation (``--no-augment``), no LayerDrop, no dropout (the tiny preset has none), and for
``train rl`` gates that always run (``--gate-init-bias 30``: p = 1 in float32, so the sampled
actions are certain and the gates get no gradient; the backbone and the baselines learn, the
baselines on returns whitened over the global batch). 251 training images in batches of 64 end each
epoch with a batch of 59, shared 30 / 29: the ranks' losses are weighted by their shares.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from skipvit.cli import main
from skipvit.model.bundle import load_bundle, verify_manifest
from skipvit.training.device import autocast
from skipvit.training.distributed import SINGLE, Dist, current
from tests.cli_args import argv

pytestmark = pytest.mark.slow

# 250 images: two processes divide them, so DistributedSampler pads nothing (last batch: 58 = 29 + 29).
EXACT = (
    "--data synthetic --preset tiny --device cpu --epochs 2 --limit-train 250 --batch-size 64 --no-augment"
)
STATIC = f"train static {EXACT}"
RL = f"train rl {EXACT} --gate-init-bias 30"
# Augmentation, and gates that sample for real: the per-rank draws must come back on --resume.
RL_DRAWS = "train rl --data synthetic --preset tiny --device cpu --epochs 2 --limit-train 251 --batch-size 64"
TOLERANCE = 1e-5  # per weight: the same sums, added up in another order

# Logs the files each rank opens for writing under WATCH (a Python-level record: safetensors writes
# from Rust, but every write path also writes JSON or Markdown through Python).
SITECUSTOMIZE = """
import os, sys
_watch, _log, _rank = os.environ.get("WATCH"), os.environ.get("WRITE_LOG"), os.environ.get("RANK")
def _hook(event, args):
    if event == "open" and _watch and _rank and str(args[0]).startswith(_watch):
        if isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            with open(_log, "a") as f:  # the log lies outside WATCH
                f.write(_rank + " " + str(args[0]) + "\\n")
sys.addaudithook(_hook)
"""


def torchrun(words: str, nproc: int = 2, env: dict | None = None, **flags) -> str:
    """``skipvit WORDS --flag value ...`` under ``torchrun --standalone --nproc-per-node NPROC``; its
    standard output (rank 0's: the others print nothing)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "skipvit", *argv(words, **flags)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full_env)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def weights(bundle: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(bundle / "weights" / f"{name}.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def history(ckpt: Path) -> list[dict]:
    return json.loads((ckpt / "checkpoint.json").read_text())["meta"]["history"]


@pytest.fixture(scope="module")
def static_runs(tmp_path_factory) -> Path:
    """`train static` in one process and in two, on the same settings."""
    root = tmp_path_factory.mktemp("static")
    main(argv(STATIC, out=root / "one", ckpt_dir=root / "c1"))
    printed = torchrun(STATIC, out=root / "two", ckpt_dir=root / "c2")
    assert printed.count("wrote bundle") == 1 and "epoch 2/2" in printed
    return root


@pytest.mark.timeout(600)
def test_two_processes_train_the_static_model_one_process_trains(static_runs):
    one, two = static_runs / "one", static_runs / "two"
    assert max_diff(weights(one, "static"), weights(two, "static")) <= TOLERANCE
    h1, h2 = history(static_runs / "c1"), history(static_runs / "c2")
    assert [h["epoch"] for h in h2] == [1, 2]
    # Recorded to 5 decimals: the same loss may round either way at the last one.
    assert all(abs(a["loss"] - b["loss"]) <= TOLERANCE + 1e-9 for a, b in zip(h1, h2, strict=True))
    report = (two / "REPORT.md").read_text()
    assert "2 processes (torchrun)" in report and "batch 64" in report
    assert "processes" not in (one / "REPORT.md").read_text()


@pytest.mark.timeout(600)
def test_two_processes_train_the_rl_gates_and_baselines_one_process_trains(tmp_path):
    main(argv(RL, out=tmp_path / "one", ckpt_dir=tmp_path / "c1"))
    torchrun(RL, out=tmp_path / "two", ckpt_dir=tmp_path / "c2")
    one, two = weights(tmp_path / "one", "rl"), weights(tmp_path / "two", "rl")
    # The baselines learn from the whitened returns: whitened per process instead, they end ~1e-3 apart.
    assert max_diff(one, two) <= TOLERANCE
    h1, h2 = history(tmp_path / "c1"), history(tmp_path / "c2")
    assert all(abs(a["ce"] - b["ce"]) <= 1e-4 + 1e-9 for a, b in zip(h1, h2, strict=True))  # 4 decimals


@pytest.mark.timeout(600)
def test_a_distributed_run_resumes_exactly(tmp_path):
    torchrun(RL_DRAWS, out=tmp_path / "whole", ckpt_dir=tmp_path / "cw")
    printed = torchrun(f"{RL_DRAWS} --stop-after 1", out=tmp_path / "split", ckpt_dir=tmp_path / "cs")
    assert "stopped after epoch 1/2" in printed and not (tmp_path / "split").exists()
    printed = torchrun(f"{RL_DRAWS} --resume", out=tmp_path / "split", ckpt_dir=tmp_path / "cs")
    assert "resumed from" in printed
    whole, split = weights(tmp_path / "whole", "rl"), weights(tmp_path / "split", "rl")
    assert max_diff(whole, split) == 0.0
    strip = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history(tmp_path / "cw")]
    assert strip == [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history(tmp_path / "cs")]


@pytest.mark.timeout(600)
def test_exits_train_distributed_and_rank_0_alone_writes(static_runs, tmp_path):
    watched = tmp_path / "watched"
    bundle = watched / "b"
    shutil.copytree(static_runs / "two", bundle)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "writes.log"
    env = {"PYTHONPATH": str(tmp_path / "site"), "WATCH": str(watched), "WRITE_LOG": str(log)}
    words = (
        "train exits --device cpu --epochs 2 --types linear --positions 2 --limit-train 251 --batch-size 64"
    )
    printed = torchrun(words, env=env, bundle=bundle, ckpt_dir=watched / "ck")
    assert printed.count("wrote weight set 'dyce'") == 1
    verify_manifest(bundle)
    assert "dyce" in load_bundle(bundle).weight_sets
    report = (bundle / "REPORT.md").read_text()
    assert report.count("## dyce: exits") == 1 and "2 processes (torchrun)" in report
    writers = {line.split()[0] for line in log.read_text().splitlines()}
    written = {Path(line.split(maxsplit=1)[1]).name for line in log.read_text().splitlines()}
    assert writers == {"0"} and {"checkpoint.json.tmp", "bundle.json", "REPORT.md"} <= written


# ---------------------------------------------------------------- without processes


def test_the_ranks_shards_make_up_the_single_process_batches():
    def batches(n: int, dist: Dist) -> list[list[int]]:
        return [b.tolist() for b in dist.batches(n, 64, torch.Generator().manual_seed(3))]

    whole = batches(250, SINGLE)
    shards = [batches(250, Dist(rank, 2, active=True)) for rank in range(2)]
    assert [len(b) for b in whole] == [64, 64, 64, 58]
    assert [len(b) for b in shards[0]] == [len(b) for b in shards[1]] == [32, 32, 32, 29]
    for step, batch in enumerate(whole):  # the same images at every step, whatever the world size
        assert sorted(shards[0][step] + shards[1][step]) == sorted(batch)


def test_a_training_set_the_processes_do_not_divide_is_padded_with_the_first_rows():
    order = torch.randperm(251, generator=torch.Generator().manual_seed(3)).tolist()
    shards = [
        [b.tolist() for b in Dist(rank, 2, active=True).batches(251, 64, torch.Generator().manual_seed(3))]
        for rank in range(2)
    ]
    assert [len(b) for b in shards[0]] == [len(b) for b in shards[1]] == [32, 32, 32, 30]
    rows = sorted(i for shard in shards for batch in shard for i in batch)
    assert rows == sorted(order + order[:1])  # every image once, the order's first one twice


def test_a_batch_the_processes_cannot_share_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="--batch-size 63 is the global batch") as e:
        Dist(0, 2, active=True).check_batch(63)
    assert "Hint:" in str(e.value)
    SINGLE.check_batch(63)  # one process takes any batch


def test_each_rank_draws_its_own_numbers_and_draws_them_again_on_resume():
    g = torch.Generator().manual_seed(0)
    assert SINGLE.draws(g, 0, 0) is g  # one process: augmentation draws from the order's generator
    with torch.random.fork_rng():

        def draw(rank: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
            local = Dist(rank, 2, active=True).draws(g, 7, epoch)
            return torch.rand(4, generator=local), torch.rand(4)  # its own, and torch's global generator

        first = draw(0, 0)
        assert torch.equal(first[0], draw(0, 0)[0]) and torch.equal(first[1], draw(0, 0)[1])
        assert not torch.equal(first[0], draw(1, 0)[0]) and not torch.equal(first[1], draw(1, 0)[1])
        assert not torch.equal(first[0], draw(0, 1)[0]) and not torch.equal(first[0], first[1])


def test_a_command_that_does_not_share_the_work_is_refused_under_torchrun(monkeypatch):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match="Hint: start it without torchrun"):
        current()


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_nccl_processes_train_on_the_gpus(tmp_path):
    nproc = min(2, torch.cuda.device_count())
    words = "train static --data synthetic --preset tiny --device cuda --epochs 1 --limit-train 256"
    printed = torchrun(words, nproc=nproc, out=tmp_path / "b", ckpt_dir=tmp_path / "c")
    assert printed.count("wrote bundle") == 1
    processes = f"{nproc} processes" if nproc > 1 else "1 process"
    assert f"device cuda, {processes} (torchrun)" in (tmp_path / "b" / "REPORT.md").read_text()


@pytest.mark.gpu
def test_a_training_step_on_cuda_runs_under_bf16_autocast(tiny_model):
    model = tiny_model.cuda().train()
    x, y = torch.randn(8, 1, 16, 16, device="cuda"), torch.randint(0, 4, (8,), device="cuda")
    with autocast(torch.device("cuda")):
        logits = model(x).logits
    assert logits.dtype == torch.bfloat16
    F.cross_entropy(logits.float(), y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)
