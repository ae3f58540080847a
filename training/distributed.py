"""Training across processes started by ``torchrun`` (torch.distributed), and the identity without it.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a training command's ``run``, wrapped in
``entry``, then joins the process group they describe (gloo on the CPU, nccl on CUDA, as
``--device`` resolves; one GPU per process, the one numbered ``LOCAL_RANK``). Without them nothing
here does anything: ``current()`` is ``SINGLE``, whose every method returns what it was given.

What a distributed run does, and why:

- ``--batch-size`` is the global batch: each step's batch is the one a single process would take
  (``Dist.batches``: one permutation per epoch drawn from the run's seeded generator, the same on
  every rank), and rank r takes rows r, r + W, r + 2W, ... of it (``DistributedSampler``, which pads
  the epoch with its first rows to a multiple of W). So W processes train on the same images at
  every step as one process does (where W divides the training set), and the loss of each rank is
  scaled by its share of the step's rows (``Dist.scale``): DistributedDataParallel's mean of the
  ranks' gradients is then the gradient of the global batch's mean loss, also in an epoch's shorter
  last batch.
- Augmentation, LayerDrop and the gates' sampling draw from generators of each rank's own, seeded
  per (seed, epoch, rank) (``Dist.draws``): the ranks' shards get different draws, and a resumed
  run draws again what it would have drawn, with nothing to save per rank.
- Figures for a record (loss and accuracy sums, counts) are summed over the ranks (``Dist.sum``);
  moments a loss depends on, such as the whitening of the RL returns, are over the global batch
  (``Dist.moments``). Every rank evaluates the whole validation split, so their figures agree.
- Only rank 0 writes (checkpoints, bundles) and prints; every rank reads the checkpoint it wrote.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as td
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched() -> bool:
    """Whether torchrun (or a launcher like it) started this process: its variables are set."""
    return all(name in os.environ for name in ENV)


@dataclass(frozen=True)
class Dist:
    """This process's place in a run: rank ``rank`` of ``world`` in a process group (``active``),
    or the only process (``SINGLE``)."""

    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """For a report's environment line: ``, N processes (torchrun)``, or nothing in one process."""
        if not self.active:
            return ""
        return f", {self.world} process{'es' if self.world > 1 else ''} (torchrun)"

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch that the processes cannot share evenly."""
        w = self.world
        if batch_size % w:
            raise ValueError(
                f"--batch-size {batch_size} is the global batch, split evenly across {w} processes; "
                f"Hint: pass a multiple of {w}, e.g. {batch_size - batch_size % w or w}"
            )

    def batches(self, n: int, batch_size: int, g: torch.Generator) -> Iterator[Tensor]:
        """One epoch of shuffled batches of ``range(n)``: one ``randperm`` from ``g`` (the same on
        every rank), cut into batches of ``batch_size`` in one process; in a distributed run,
        ``DistributedSampler`` gives this rank positions rank, rank + world, ... of that order
        (padded with its first positions to a multiple of world), cut into batches of
        ``batch_size / world``: step k of every rank together covers the global batch k."""
        order = torch.randperm(n, generator=g)
        if not self.active:
            yield from order.split(batch_size)
            return
        sampler = DistributedSampler(range(n), num_replicas=self.world, rank=self.rank, shuffle=False)
        yield from order[list(sampler)].split(batch_size // self.world)

    def draws(self, g: torch.Generator, seed: int, epoch: int) -> torch.Generator:
        """The generator augmentation and LayerDrop draw from in ``epoch``: ``g`` itself in one
        process; in a distributed run, one of this rank's own, and torch's global generator (the
        gates' sampling, dropout) reseeded for this rank too, both from (seed, epoch, rank)."""
        if not self.active:
            return g
        torch.manual_seed(_seed(seed, epoch, self.rank, 1))
        return torch.Generator().manual_seed(_seed(seed, epoch, self.rank, 0))

    def wrap(self, module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
        """``module`` under DistributedDataParallel (gradients averaged over the ranks in backward),
        or ``module`` itself in one process. ``find_unused``: some parameters may take no part in a
        rank's forward (a layer that no row of its shard runs); DDP then reduces zeros for them on
        that rank, and a parameter that no rank used keeps no gradient, as in one process."""
        if not self.active:
            return module
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)

    def scale(self, loss: Tensor, rows: int) -> Tensor:
        """A rank's mean loss over its ``rows``, weighted so that the mean over the ranks (what DDP
        averages) is the mean over the global batch: times rows * world / (the global batch)."""
        if not self.active:
            return loss
        total = torch.tensor([float(rows)], device=loss.device)
        td.all_reduce(total)
        return loss * (rows * self.world / total.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks (as float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
        td.all_reduce(t)
        return t.tolist()

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Mean and unbiased standard deviation of every entry of ``x`` across the ranks (None for
        fewer than two entries); ``batch_moments`` of ``x`` alone in one process."""
        if not self.active:
            return batch_moments(x)
        with torch.no_grad():
            s = torch.stack([x.double().sum(), torch.tensor(float(x.numel()), device=x.device).double()])
            td.all_reduce(s)
            mean = s[0] / s[1]
            sq = ((x.double() - mean) ** 2).sum()
            td.all_reduce(sq)
            std = (sq / (s[1] - 1)).sqrt() if s[1].item() >= 2 else None
        return mean.to(x.dtype), None if std is None else std.to(x.dtype)

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def main_writes(self, write: Callable[[], T], read: Callable[[], T]) -> T:
        """``write()`` on rank 0; every other rank waits for it and then ``read()``s what it wrote."""
        if not self.active:
            return write()
        result = write() if self.is_main else None
        td.barrier()
        return result if self.is_main else read()


SINGLE = Dist()


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Mean and unbiased standard deviation of every entry of ``x`` (None for fewer than two)."""
    return x.mean(), (x.std() if x.numel() >= 2 else None)


def current() -> Dist:
    """This process's place: from the process group ``entry`` joined, else ``SINGLE``. Refuses a
    command that torchrun started in several processes without ``entry``: each would do all the work
    and write the same files."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), active=True)
    if launched() and int(os.environ["WORLD_SIZE"]) > 1:
        raise SystemExit(
            "this command runs in one process; under torchrun only `skipvit train static|rl|exits` "
            "share out the work; Hint: start it without torchrun"
        )
    return SINGLE


def entry(run: Callable[..., None]) -> Callable[..., None]:
    """A training command's ``run(args)``: as it is in one process; under torchrun, inside the
    process group (``join``), silent on every rank but 0, and, when it returns, waiting at a
    barrier until every rank is done (rank 0 writing the bundle) before leaving the group."""

    @functools.wraps(run)
    def wrapped(args) -> None:
        if not launched():
            return run(args)
        dist = join(args.device)
        try:
            with contextlib.ExitStack() as stack:
                if not dist.is_main:
                    devnull = stack.enter_context(open(os.devnull, "w"))
                    stack.enter_context(contextlib.redirect_stdout(devnull))
                run(args)
            dist.barrier()
        finally:
            td.destroy_process_group()

    return wrapped


def join(device: str) -> Dist:
    """Join the process group that torchrun's variables describe: nccl when ``device`` (``--device``)
    resolves to CUDA, with this process on GPU ``LOCAL_RANK``; gloo on the CPU."""
    from skipvit.training.device import resolve_device

    local = int(os.environ["LOCAL_RANK"])
    if resolve_device(device).type == "cuda":
        if local >= torch.cuda.device_count():
            raise SystemExit(
                f"process {local} on this node has no GPU of its own ({torch.cuda.device_count()} "
                "visible); Hint: start at most one process per GPU (--nproc-per-node)"
            )
        torch.cuda.set_device(local)
        td.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        td.init_process_group("gloo")
    return current()


def _collective_device() -> torch.device:
    """Where a collective's tensor must lie: the GPU with nccl, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if td.get_backend() == "nccl"
        else torch.device("cpu")
    )


def _seed(*words: int) -> int:
    """A seed for the stream named by ``words`` (seed, epoch, rank, stream), well apart from others."""
    return int(np.random.SeedSequence([w % 2**64 for w in words]).generate_state(1, np.uint64)[0])
