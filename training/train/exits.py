"""`skipvit train exits`: DyCE (Dynamically Configurable Exiting) exit heads on a frozen backbone.

The backbone (a weight set of the bundle, default ``static``) is frozen: ``requires_grad_(False)``
and eval mode. Every exit type reads only the CLS token and the token mean (``model.exits``), so
one pass of the backbone over the training split, without gradients, records those two vectors
after every exit position plus the backbone's final logits; the heads then train for as many
epochs as asked on the recorded features, all positions and types at once (each head has its own
parameters, so summing their losses trains each on its own).

Loss (the paper's description): soft cross-entropy against the backbone's final output
distribution, ``-sum softmax(z_backbone / T) * log_softmax(z_exit / T) * T^2``, optionally mixed
with the hard labels: ``(1 - w) * soft + w * CE(z_exit, y)`` (``--hard-weight w``, default 0).

Output: weight set ``--name`` (default ``dyce``) = the source weight set's tensors, unchanged,
plus the heads under ``exits.``. Points on that weight set are measured with the old heads, so
they are dropped; ``skipvit search dyce`` writes new ones.

Under torchrun, every process records the features of the whole training split (the recording is
not shared out), then trains the heads under DistributedDataParallel on its share of each global
batch (``training.distributed``); rank 0 writes the checkpoints and the weight set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skipvit import flags
from skipvit.model.bundle import Bundle, load_bundle
from skipvit.model.exits import EXIT_TYPES, PREFIX, ExitSet, exit_flops, exits_of
from skipvit.model.flops import block_flops
from skipvit.training.backbone import backbone_features
from skipvit.training.configs import config_from
from skipvit.training.distributed import SINGLE, Dist, entry
from skipvit.training.imported import measure_static
from skipvit.training.publish import publish
from skipvit.training.report import command_line, environment, markdown_table
from skipvit.training.run import EpochRunner, RunContext, steps_per_epoch, weights_id
from skipvit.training.schedule import set_lr


@dataclass(frozen=True)
class ExitTrainConfig:
    types: tuple[str, ...] = tuple(EXIT_TYPES)
    positions: tuple[int, ...] | None = None  # None: after every layer 1 .. L-1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    temperature: float = 1.0
    hard_weight: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- the heads' loss


def soft_cross_entropy(logits: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over rows of -sum softmax(teacher / T) log_softmax(logits / T), times T^2."""
    target = (teacher / temperature).softmax(dim=-1)  # (B, C)
    log_p = F.log_softmax(logits / temperature, dim=-1)  # (B, C)
    return -(target * log_p).sum(dim=-1).mean() * temperature**2


def exits_loss(
    exits: ExitSet, pooled: Tensor, teacher: Tensor, labels: Tensor, cfg: ExitTrainConfig
) -> Tensor:
    """Sum over every head of its loss; ``pooled`` (B, P, 2, D) follows ``exits.positions``."""
    total = pooled.new_zeros(())
    index = {k: i for i, k in enumerate(exits.positions)}
    for k, t in exits.keys:
        logits = exits.head(k, t).from_pooled(pooled[:, index[k]])  # (B, C)
        loss = soft_cross_entropy(logits, teacher, cfg.temperature)
        if cfg.hard_weight:
            loss = (1 - cfg.hard_weight) * loss + cfg.hard_weight * F.cross_entropy(logits, labels)
        total = total + loss
    return total


class HeadsLoss(nn.Module):
    """``exits_loss`` as a module, for DistributedDataParallel: it reduces the gradients of the
    parameters used in the forward of the module it wraps, and the heads are called one by one."""

    def __init__(self, exits: ExitSet, cfg: ExitTrainConfig) -> None:
        super().__init__()
        self.exits, self.cfg = exits, cfg

    def forward(self, pooled: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return exits_loss(self.exits, pooled, teacher, labels, self.cfg)


@torch.no_grad()
def head_stats(exits: ExitSet, pooled: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, dict]:
    """Per head ("k_type"): accuracy on the labels and agreement with the backbone's prediction."""
    exits.eval()
    index = {k: i for i, k in enumerate(exits.positions)}
    target = teacher.argmax(-1)
    out = {}
    for k, t in exits.keys:
        pred = exits.head(k, t).from_pooled(pooled[:, index[k]]).argmax(-1)  # (N,)
        out[f"{k}_{t}"] = {
            "accuracy": (pred == labels).float().mean().item(),
            "agreement": (pred == target).float().mean().item(),
        }
    return out


def train_epoch(
    exits: ExitSet,
    opt,
    feats: Tensor,
    teacher: Tensor,
    labels: Tensor,
    cfg: ExitTrainConfig,
    step: int,
    total_steps: int,
    g: torch.Generator,
    device,
    net: nn.Module | None = None,
    dist: Dist = SINGLE,
) -> tuple[int, float]:
    """One epoch of the heads on the recorded features, in batches drawn from ``g``; ``net``: the
    loss as a module (``HeadsLoss``; under DistributedDataParallel in a distributed run, where each
    rank takes its share of every batch, ``dist``)."""
    exits.train()
    net = HeadsLoss(exits, cfg) if net is None else net
    warmup = int(cfg.warmup_epochs * steps_per_epoch(len(labels), cfg.batch_size))
    loss_sum, seen = 0.0, 0
    for idx in dist.batches(len(labels), cfg.batch_size, g):
        set_lr(opt, step, total_steps, warmup)
        pooled = feats[idx].to(device)  # (b, P, 2, D)
        loss = net(pooled, teacher[idx].to(device), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        dist.scale(loss, len(idx)).backward()
        opt.step()
        step += 1
        loss_sum += loss.item() * len(idx)
        seen += len(idx)
    loss_sum, seen = dist.sum([loss_sum, seen])  # over the global batches
    return step, loss_sum / max(1, seen)


# ---------------------------------------------------------------- the command


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(
            f"--positions {text!r}: expected layer numbers separated by commas, e.g. 3,5,7"
        ) from None


def config_from_args(args) -> ExitTrainConfig:
    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    unknown = [t for t in types if t not in EXIT_TYPES]
    if unknown or not types:
        raise ValueError(
            f"--types {args.types!r}: unknown {unknown}; Hint: choose from {', '.join(EXIT_TYPES)}"
        )
    if not 0.0 <= args.hard_weight <= 1.0 or args.temperature <= 0:
        raise ValueError("--hard-weight must lie in [0, 1] and --temperature be > 0")
    return config_from(ExitTrainConfig, args, types=types, positions=_int_list(args.positions))


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle to read the backbone from and write into")
    p.add_argument("--weights", default="static", help="the backbone's weight set (default: static)")
    p.add_argument("--name", default="dyce", help="weight set to write: the backbone plus the exits")
    p.add_argument("--types", default="linear,mlp-s,mlp-m", help="exit types (model.exits.EXIT_TYPES)")
    p.add_argument("--positions", default=None, help="exits after these layers, e.g. 3,5,7 (default: all)")
    p.add_argument("--epochs", type=int, default=30)
    flags.add_batch_size(p, 256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the soft targets")
    p.add_argument("--hard-weight", type=float, default=0.0, help="share of CE on the labels in the loss")
    flags.add_seed(p)
    flags.add_device(p)
    flags.add_data_dir(p)
    flags.add_bundle_data(p)
    flags.add_limit_train(p)
    flags.add_checkpointing(p, "runs/<bundle>-<name>-exits")


@entry
def run(args) -> None:
    cfg = config_from_args(args)
    bundle = load_bundle(args.bundle)
    source, name = args.weights, args.name
    if source not in bundle.weight_sets:
        raise ValueError(
            f"{args.bundle} has no weight set {source!r}; Hint: pick one of "
            f"{', '.join(bundle.weight_sets)} with --weights"
        )
    if name == source:
        raise ValueError(
            f"--name {name!r} would overwrite the backbone's weight set; Hint: pick another --name"
        )
    # Replacing an earlier run's exits is fine (its points go, as stale); another method's weights are not.
    others = sorted({p.method for p in bundle.front if p.weights == name} - {"dyce"})
    if others:
        raise ValueError(
            f"--name {name!r} would overwrite weight set {name!r}, which points of method "
            f"{', '.join(others)} use; Hint: pick another --name"
        )
    ctx = RunContext.start(args, f"{bundle.root.name}-{name}-exits")
    device = ctx.device
    model = bundle.build_model(source, device)
    model.requires_grad_(False)
    positions = cfg.positions or tuple(range(1, model.depth))
    exits = ExitSet(model.cfg, positions, cfg.types).to(device)
    splits = ctx.bundle_splits(bundle)
    given = bundle  # measured and written by rank 0, read back by the others
    bundle = ctx.dist.main_writes(
        lambda: measure_static(given, splits, device, args), lambda: load_bundle(given.root)
    )
    train = splits.train.head(args.limit_train)
    ctx.dist.check_batch(cfg.batch_size)
    mean, std = bundle.dataset["mean"], bundle.dataset["std"]
    print(
        f"DyCE exits on frozen weights {source!r} of {args.bundle}: {len(exits.heads)} heads "
        f"(types {', '.join(cfg.types)}; after layers {', '.join(map(str, exits.positions))}) | {cfg} | "
        f"device {device}"
    )
    t0 = time.time()
    feats, teacher = backbone_features(model, train, mean, std, exits.positions, device=device)
    val_feats, val_teacher = backbone_features(model, splits.val, mean, std, exits.positions, device=device)
    feature_s = time.time() - t0
    print(
        f"recorded the backbone's features of {len(train)} train and {len(splits.val)} val images "
        f"in {feature_s:.0f} s"
    )
    opt = torch.optim.AdamW(exits.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = cfg.lr
    run_settings = {
        "train": cfg.to_dict(),
        "positions": list(exits.positions),
        "backbone": weights_id(bundle, source),
        "split": bundle.dataset.get("split", {}),
        "limit_train": args.limit_train,
    }
    runner = ctx.epochs(exits, opt, cfg.epochs, run_settings)
    net = ctx.dist.wrap(HeadsLoss(exits, cfg), device)
    total_steps = steps_per_epoch(len(train), cfg.batch_size) * cfg.epochs
    val_labels = splits.val.labels.to(device)
    stats: dict[str, dict] = {}
    for epoch in runner:
        runner.step, loss = train_epoch(
            exits,
            opt,
            feats,
            teacher,
            train.labels,
            cfg,
            runner.step,
            total_steps,
            runner.g,
            device,
            net,
            ctx.dist,
        )
        stats = head_stats(exits, val_feats.to(device), val_teacher.to(device), val_labels)
        agree = np.mean([s["agreement"] for s in stats.values()])
        best = max(stats.items(), key=lambda kv: kv[1]["agreement"])
        runner.end_epoch_with(
            {"epoch": epoch + 1, "loss": round(loss, 4), "val_mean_agreement": round(agree, 4)}
        )
        print(
            f"exits epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} | val agreement with the backbone: "
            f"mean {agree:.4f}, best {best[0]} {best[1]['agreement']:.4f} ({runner.elapsed / 60:.1f} min)"
        )
    if not runner.finished() or not ctx.dist.is_main:
        return
    if not stats:  # resumed a finished run: measure the restored heads
        stats = head_stats(exits, val_feats.to(device), val_teacher.to(device), val_labels)
    backbone_acc = (val_teacher.argmax(-1) == splits.val.labels).float().mean().item()
    write_exits(load_bundle(bundle.root), source, exits, cfg, stats, backbone_acc, runner, feature_s, ctx)


def exit_state(backbone: dict[str, Tensor], exits: ExitSet) -> dict[str, Tensor]:
    """The weight set: the backbone's tensors as they are (any old exits left out) plus the heads."""
    state = {k: v for k, v in backbone.items() if not k.startswith(PREFIX)}
    state.update({PREFIX + k: v.detach().cpu() for k, v in exits.state_dict().items()})
    return state


def write_exits(
    bundle: Bundle,
    source: str,
    exits: ExitSet,
    cfg: ExitTrainConfig,
    stats: dict,
    backbone_acc: float,
    runner: EpochRunner,
    feature_s: float,
    ctx: RunContext,
) -> None:
    """Write weight set ``--name`` into ``bundle`` (loaded afresh: another command may have written
    points meanwhile), dropping the points measured with the old heads."""
    args, name = ctx.args, ctx.args.name
    bundle.add_weight_set(name, exit_state(bundle.load_weights(source), exits))
    loaded = exits_of(bundle.build_model(name))  # the written set loads, with its exits
    if loaded is None or len(loaded.heads) != len(exits.heads):
        raise RuntimeError(f"weight set {name!r} does not load back with its {len(exits.heads)} exit heads")
    arch = bundle.architecture
    block = block_flops(arch)
    kinds = [
        [
            t,
            EXIT_TYPES[t].pool,
            EXIT_TYPES[t].hidden_dim(arch.dim) or "-",
            exit_flops(arch, t),
            f"{100 * exit_flops(arch, t) / block:.2f}%",
        ]
        for t in exits.types
    ]
    rows = [
        [k]
        + [
            f"{100 * stats[f'{k}_{t}']['accuracy']:.2f} / {100 * stats[f'{k}_{t}']['agreement']:.2f}"
            if f"{k}_{t}" in stats
            else "-"
            for t in exits.types
        ]
        for k in exits.positions
    ]
    hist = [[h["epoch"], h["loss"], h["val_mean_agreement"], h["elapsed_s"]] for h in runner.history]
    soft = f"soft cross-entropy against the backbone's softmax at temperature {cfg.temperature}"
    loss = (
        soft
        if not cfg.hard_weight
        else f"{1 - cfg.hard_weight:g} × {soft} + {cfg.hard_weight:g} × CE(labels)"
    )
    body = f"""
Command: `{command_line(args.argv)}`

- Backbone: weight set `{source}`, frozen (eval mode, no gradients); its tensors are copied unchanged
  into weight set `{name}` beside the heads (`exits.*`)
- Heads: {len(exits.heads)} = types {", ".join(f"`{t}`" for t in exits.types)} after layers
  {", ".join(map(str, exits.positions))} (an exit after layer k decides before layer k + 1)
- Loss: {loss}, summed over the heads; the backbone's CLS token and token mean after each position
  recorded once ({feature_s:.0f} s), then AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, batch
  {cfg.batch_size}, {cfg.epochs} epochs, warmup {cfg.warmup_epochs} epoch then cosine, seed {cfg.seed}
- Data: the bundle's train split{f" (first {args.limit_train} images)" if args.limit_train else ""}, its
  validation split for the figures below
- Environment: {environment()}, device {ctx.device}{ctx.dist.describe()}; head training {runner.elapsed / 60:.1f} min

{markdown_table(["type", "reads", "hidden", "FLOPs", "of a block"], kinds)}

Validation accuracy / agreement with the backbone (%; the backbone: {100 * backbone_acc:.2f} / 100):

{markdown_table(["after layer", *exits.types], rows)}

{markdown_table(["epoch", "loss", "mean val agreement", "elapsed s"], hist)}
"""
    stale = publish(bundle, f"{name}: exits", lambda *_: body, replaces=lambda p: p.weights == name)
    if stale:
        print(
            f"dropped {len(stale)} points measured with the old heads ({', '.join(stale)}); "
            "Hint: run `skipvit search dyce` for new ones"
        )
    print(f"wrote weight set {name!r} ({len(exits.heads)} exit heads on {source!r}) into {bundle.root}")
