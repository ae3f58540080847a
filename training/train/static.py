"""`skipvit train static`: cross-entropy training of the plain ViT, written as a bundle.

Under torchrun, every process trains the model under DistributedDataParallel on its share of each
global batch (``training.distributed``); rank 0 writes the checkpoints and the bundle.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle, new_bundle
from skipvit.model.config import ViTConfig
from skipvit.model.policy import ExecutionPolicy, LayerDropPolicy, StaticPolicy, layer_drop_rates
from skipvit.model.vit import AdaptiveViT, build_model
from skipvit.training.configs import config_from
from skipvit.training.data import DataSplits
from skipvit.training.data.augment import AugmentConfig, augment_config
from skipvit.training.device import autocast
from skipvit.training.distributed import entry
from skipvit.training.evaluate import evaluate
from skipvit.training.optim import gradient_step, param_groups
from skipvit.training.presets import model_config
from skipvit.training.publish import holds_bundle, publish
from skipvit.training.report import command_line, environment, markdown_table, read_section
from skipvit.training.run import (
    EpochRunner,
    RunContext,
    run_settings,
    steps_per_epoch,
    train_batches,
    weights_id,
)
from skipvit.training.schedule import warmup_cosine
from skipvit.training.splits import dataset_meta, run_split, same_dataset

LAYER_DROP_HELP = (
    "LayerDrop while training: each image skips layer j with probability P*j/(depth-1), so that later "
    "layers can be skipped at inference at little cost (default 0: off)"
)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    layer_drop: float = 0.0  # LayerDrop: the last layer's drop rate, rising linearly from 0 at the first
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def add_arguments(p) -> None:
    flags.add_data(p)
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--epochs", type=int, default=15)
    flags.add_batch_size(p, 128)
    p.add_argument("--lr", type=float, default=1e-3)
    flags.add_seed(p)
    flags.add_device(p)
    p.add_argument("--preset", default="fmnist-9", help="architecture preset (model.vit.PRESETS)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--shared-layers", action="store_true", help="UViT: one block shared by every layer")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--erase-prob", type=float, default=0.25, help="random-erasing probability")
    p.add_argument("--layer-drop", type=float, default=0.0, metavar="P", help=LAYER_DROP_HELP)
    flags.add_limit_train(p)
    p.add_argument(
        "--init-from", default=None, help="start from this bundle's static weights (a second stage)"
    )
    flags.add_checkpointing(p, "runs/<out>-static")


def config_from_args(args) -> TrainConfig:
    return config_from(TrainConfig, args, augment=augment_config(args.no_augment, args.erase_prob))


def train_epoch(
    model: AdaptiveViT,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    splits: DataSplits,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    total_steps: int,
    runner: EpochRunner,
) -> tuple[int, float, float]:
    """One epoch from optimiser step ``runner.step``, the forward through ``net`` (``model``, or
    ``model`` under DistributedDataParallel); the new step count, mean loss and train accuracy."""
    model.train()
    step, dist, g = runner.step, runner.dist, runner.draws(epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch(len(splits.train), cfg.batch_size))
    seen = correct = 0
    loss_sum = 0.0
    desc = f"epoch {epoch + 1}/{cfg.epochs}"
    info = splits.info
    bar = train_batches(splits.train, info, cfg.batch_size, cfg.augment, runner.g, device, desc, dist, g)
    for x, y in bar:
        lr = warmup_cosine(step, total_steps, warmup, cfg.lr, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast(device):
            logits = net(x, training_policy(model, cfg, g)).logits
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        gradient_step(opt, dist.scale(loss, len(y)), cfg.grad_clip)
        step += 1
        seen += len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", lr=f"{lr:.2e}")
    loss_sum, correct, seen = dist.sum([loss_sum, correct, seen])  # over the global batches
    return step, loss_sum / max(1, seen), correct / max(1, seen)


def training_policy(model: AdaptiveViT, cfg: TrainConfig, g: torch.Generator) -> ExecutionPolicy:
    """Every layer, or LayerDrop's random per-image skips (``model.policy.LayerDropPolicy``)."""
    if cfg.layer_drop <= 0:
        return StaticPolicy()
    return LayerDropPolicy(layer_drop_rates(model.depth, cfg.layer_drop), generator=g)


def initial_model(args, splits: DataSplits, src: Bundle | None) -> tuple[AdaptiveViT, ViTConfig, str]:
    """The model to train: ``src``'s static weights (a second stage), else a fresh ``--preset``;
    its architecture, and the report's note on where it came from."""
    if src is None:
        arch = model_config(
            args.preset,
            splits.info,
            depth=args.depth,
            dim=args.dim,
            heads=args.heads,
            patch_size=args.patch_size,
            shared_layers=args.shared_layers or None,
        )
        return build_model(arch), arch, ""
    previous = read_section(src.root, "static") or "(no report)"
    origin = f"Continued from the `static` weights of `{args.init_from}`, whose own run was:\n\n" + "\n".join(
        "> " + line for line in previous.splitlines()
    )
    return src.build_model("static"), src.architecture, origin


@entry
def run(args) -> None:
    out = Path(args.out)
    ctx = RunContext.start(args, f"{out.name}-static")
    cfg = config_from_args(args)
    src = load_bundle(args.init_from) if args.init_from else None
    # A second stage keeps the first stage's split: its validation images stay unseen.
    split = run_split(args, src if src is not None and same_dataset(src.dataset, args) else None)
    splits = ctx.dataset_splits(split)
    model, arch, origin = initial_model(args, splits, src)
    model.to(ctx.device)
    ctx.dist.check_batch(cfg.batch_size)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    init = weights_id(src, "static") if src is not None else None
    runner = ctx.epochs(model, opt, cfg.epochs, run_settings(asdict(cfg), args, split, arch, init))
    # LayerDrop may leave a layer unrun by every row of a rank's shard (distributed.Dist.wrap).
    net = ctx.dist.wrap(model, ctx.device, find_unused=cfg.layer_drop > 0)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{arch} | {n_params:,} parameters | device {ctx.device} | train {len(splits.train)}, "
        f"val {len(splits.val)}"
    )
    total_steps = steps_per_epoch(len(splits.train), cfg.batch_size) * cfg.epochs
    info = splits.info
    for epoch in runner:
        runner.step, loss, acc = train_epoch(
            model, net, opt, splits, cfg, ctx.device, epoch, total_steps, runner
        )
        val = evaluate(model, splits.val, info.mean, info.std, device=ctx.device)
        runner.end_epoch_with(
            {
                "epoch": epoch + 1,
                "loss": round(loss, 5),
                "train_acc": round(acc, 5),
                "val_acc": round(val.accuracy, 5),
            }
        )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} train acc {acc:.4f} "
            f"val acc {val.accuracy:.4f} ({runner.elapsed / 60:.1f} min)"
        )
    if not runner.finished() or not ctx.dist.is_main:
        return
    val = evaluate(model, splits.val, info.mean, info.std, device=ctx.device)
    test = evaluate(model, splits.test, info.mean, info.std, device=ctx.device)
    print(f"test accuracy {test.accuracy:.4f} on {test.n} images")
    metrics = test.metrics(arch.depth, "test") | val.val_metrics(arch.depth)
    write_static_bundle(out, model, splits, split, cfg, metrics, runner, ctx, origin)


def _contents(root: Path) -> str:
    """`` (dropping weight sets a, b and N points)`` for the bundle at ``root``, best effort."""
    try:
        meta = json.loads((root / "bundle.json").read_text())
        return f" (dropping weight sets {', '.join(meta['weight_sets'])} and {len(meta['front'])} points)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def write_static_bundle(
    out: Path,
    model: AdaptiveViT,
    splits: DataSplits,
    split: dict,
    cfg: TrainConfig,
    metrics: dict,
    runner: EpochRunner,
    ctx: RunContext,
    origin: str = "",
) -> None:
    if holds_bundle(out):
        # Nothing measured on the old weights survives, so no point is left stale; say what goes.
        print(f"replacing the bundle in {out}: `train static` starts a bundle afresh{_contents(out)}")
        shutil.rmtree(out)
    bundle = new_bundle(out, model.cfg, dataset_meta(splits, split, ctx.args))
    bundle.add_weight_set("static", model.state_dict())
    rows = [[h["epoch"], h["loss"], h["train_acc"], h["val_acc"], h["elapsed_s"]] for h in runner.history]
    body = f"""
Command: `{command_line(ctx.args.argv)}`

- Data: `{splits.info.name}`, train {len(splits.train)} / val {len(splits.val)} (carved from train: fraction {split["val_fraction"]}, seed {split["seed"]}) / test {len(splits.test)}
- Model: {model.cfg.to_dict()}
- Training: {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW lr {cfg.lr} (warmup {cfg.warmup_epochs} epoch, cosine),
  weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, LayerDrop {cfg.layer_drop}, augmentation {cfg.augment}, seed {cfg.seed}
- Environment: {environment()}, device {ctx.device}{ctx.dist.describe()}
- Wall time (training + per-epoch validation): {runner.elapsed / 60:.1f} min

Result on the full test split: accuracy **{100 * metrics["accuracy"]:.2f}%**, mean layers {metrics["mean_layers"]} of {model.cfg.depth}.

{markdown_table(["epoch", "train loss", "train acc", "val acc", "elapsed s"], rows)}

{origin}
"""
    publish(bundle, "static", lambda *_: body, [Point("static", "static", "static", {}, metrics)])
    print(f"wrote bundle {out}")
