"""`skipvit train static`: cross-entropy training of the plain ViT, written as a bundle."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle, new_bundle
from skipvit.model.config import ViTConfig
from skipvit.model.policy import StaticPolicy
from skipvit.model.vit import PRESETS, AdaptiveViT, build_model
from skipvit.training.data import DataSplits, load_dataset
from skipvit.training.data.augment import AugmentConfig, augment, to_float
from skipvit.training.device import autocast, resolve_device
from skipvit.training.evaluate import evaluate
from skipvit.training.loop import EpochRunner, weights_id
from skipvit.training.plots import draw_front
from skipvit.training.report import command_line, environment, markdown_table, read_section, update_section
from skipvit.training.schedule import warmup_cosine


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
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gradient_step(opt: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> None:
    """Backpropagate ``loss``, clip the optimiser's parameters' gradient norm (0: no clip), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], grad_clip)
    opt.step()


def model_config(preset: str, splits: DataSplits, **overrides) -> ViTConfig:
    if preset not in PRESETS:
        raise SystemExit(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset])
    base.update(
        image_size=splits.info.image_size,
        in_channels=splits.info.channels,
        num_classes=splits.info.num_classes,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ViTConfig(**base)


def train_epoch(
    model: AdaptiveViT,
    opt: torch.optim.Optimizer,
    splits: DataSplits,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    step: int,
    total_steps: int,
    g: torch.Generator,
) -> tuple[int, float, float]:
    info = splits.info
    model.train()
    steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    seen = correct = 0
    loss_sum = 0.0
    bar = tqdm(
        splits.train.batches(cfg.batch_size, shuffle=True, generator=g),
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        leave=False,
        mininterval=1.0,
    )
    for images, labels in bar:
        lr = warmup_cosine(step, total_steps, warmup, cfg.lr, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        x = to_float(images, info.mean, info.std)
        x = augment(x, cfg.augment, info.hflip, g, info.mean, info.std).to(device)
        y = labels.to(device)
        with autocast(device):
            logits = model(x, StaticPolicy()).logits
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        gradient_step(opt, loss, cfg.grad_clip)
        step += 1
        seen += len(y)
        correct += (logits.argmax(-1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", lr=f"{lr:.2e}")
    return step, loss_sum / max(1, seen), correct / max(1, seen)


def add_arguments(p) -> None:
    flags.add_data(p)
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
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
    flags.add_limit_train(p)
    p.add_argument(
        "--init-from", default=None, help="start from this bundle's static weights (a second stage)"
    )
    flags.add_checkpointing(p, "runs/<out>-static")


def run(args) -> None:
    device = resolve_device(args.device)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    cfg = replace(cfg, augment=replace(cfg.augment, erase_prob=args.erase_prob))
    if args.no_augment:
        cfg = replace(cfg, augment=AugmentConfig(crop_padding=0, hflip=False, erase_prob=0.0))
    torch.manual_seed(cfg.seed)
    src = load_bundle(args.init_from) if args.init_from else None
    # A second stage keeps the first stage's split: its validation images stay unseen.
    split = run_split(args, src if src is not None and same_dataset(src.dataset, args) else None)
    splits = load_dataset(args.data, args.data_dir, **split, **dict(args.data_opt))
    if args.limit_train:
        splits.train = splits.train.head(args.limit_train)
    origin = ""
    if src is not None:  # continue training a bundle's static weights (a second stage)
        model, arch = src.build_model("static"), src.architecture
        previous = read_section(src.root, "static") or "(no report)"
        origin = (
            f"Continued from the `static` weights of `{args.init_from}`, whose own run was:\n\n"
            + "\n".join("> " + line for line in previous.splitlines())
        )
    else:
        arch = model_config(
            args.preset,
            splits,
            depth=args.depth,
            dim=args.dim,
            heads=args.heads,
            patch_size=args.patch_size,
            shared_layers=args.shared_layers or None,
        )
        model = build_model(arch)
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    out = Path(args.out)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else Path("runs") / f"{out.name}-static"
    init = weights_id(src, "static") if src is not None else None
    runner = EpochRunner(
        args, ckpt_dir, model, opt, cfg.seed, cfg.epochs, settings(cfg, args, split, arch, init)
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{arch} | {n_params:,} parameters | device {device} | train {len(splits.train)}, val {len(splits.val)}"
    )
    total_steps = -(-len(splits.train) // cfg.batch_size) * cfg.epochs
    for epoch in runner:
        runner.step, loss, acc = train_epoch(
            model, opt, splits, cfg, device, epoch, runner.step, total_steps, runner.g
        )
        val = evaluate(model, splits.val, splits.info.mean, splits.info.std, device=device)
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
    if not runner.finished():
        return
    test = evaluate(model, splits.test, splits.info.mean, splits.info.std, device=device)
    print(f"test accuracy {test.accuracy:.4f} on {test.n} images")
    write_static_bundle(
        out,
        model,
        splits,
        split,
        cfg,
        test.metrics(arch.depth, "test"),
        runner.history,
        runner.elapsed,
        device,
        args,
        origin,
    )


DEFAULT_VAL_FRACTION = 0.1


def same_dataset(dataset: dict, args) -> bool:
    """Whether a bundle's ``dataset`` entry is the dataset this run loads (name and options)."""
    return dataset.get("name") == args.data and dataset.get("options", {}) == dict(args.data_opt)


def recorded_split(bundle: Bundle) -> dict:
    """The train/val split ``bundle`` was made with (bundles from before it was recorded: the default)."""
    return {"val_fraction": DEFAULT_VAL_FRACTION, "seed": 0} | bundle.dataset.get("split", {})


def run_split(args, bundle: Bundle | None) -> dict:
    """The run's train/val split: the one ``bundle`` recorded, when the run starts from or writes into
    an existing bundle (its searches select on that validation split, so the weights must not train on
    it), else ``--val-fraction`` (default 0.1) and ``--seed``. ``--seed`` also seeds the training, so
    only an explicit ``--val-fraction`` can conflict with a recorded split."""
    if bundle is None:
        fraction = DEFAULT_VAL_FRACTION if args.val_fraction is None else args.val_fraction
        return {"val_fraction": fraction, "seed": args.seed}
    split = recorded_split(bundle)
    if args.val_fraction is not None and args.val_fraction != split["val_fraction"]:
        raise ValueError(
            f"--val-fraction {args.val_fraction} conflicts with the split recorded in {bundle.root} "
            f"(val_fraction {split['val_fraction']}, seed {split['seed']}), which this run keeps so that "
            "the bundle's validation images stay out of training; Hint: drop --val-fraction, or pick "
            "another --out (and no --init-from) for a new split"
        )
    return split


def settings(cfg, args, split: dict, arch: ViTConfig, init: dict | None) -> dict:
    """What determines a training run's result, for ``EpochRunner`` to check on --resume."""
    data = {
        "name": args.data,
        "split": split,
        "options": dict(args.data_opt),
        "limit_train": args.limit_train,
    }
    return {"train": asdict(cfg), "data": data, "architecture": arch.to_dict(), "init": init}


def dataset_meta(splits: DataSplits, split: dict, args) -> dict:
    """The bundle's dataset entry: enough to rebuild the same splits later (evaluate, search)."""
    return splits.info.to_dict() | {"split": split, "options": dict(args.data_opt)}


def _contents(root: Path) -> str:
    """`` (dropping weight sets a, b and N points)`` for the bundle at ``root``, best effort."""
    try:
        meta = json.loads((root / "bundle.json").read_text())
        return f" (dropping weight sets {', '.join(meta['weight_sets'])} and {len(meta['front'])} points)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def write_static_bundle(
    out: Path, model, splits, split, cfg, metrics, history, elapsed, device, args, origin=""
) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "bundle.json").is_file():
            raise SystemExit(f"{out} exists and is not a bundle; Hint: pick an empty --out directory")
        # Nothing measured on the old weights survives, so no point is left stale; say what goes.
        print(f"replacing the bundle in {out}: `train static` starts a bundle afresh{_contents(out)}")
        shutil.rmtree(out)
    bundle = new_bundle(out, model.cfg, dataset_meta(splits, split, args))
    bundle.add_weight_set("static", model.state_dict())
    bundle.upsert_points([Point("static", "static", "static", {}, metrics)])
    draw_front(bundle)
    rows = [[h["epoch"], h["loss"], h["train_acc"], h["val_acc"], h["elapsed_s"]] for h in history]
    body = f"""
Command: `{command_line(args.argv)}`

- Data: `{splits.info.name}`, train {len(splits.train)} / val {len(splits.val)} (carved from train: fraction {split["val_fraction"]}, seed {split["seed"]}) / test {len(splits.test)}
- Model: {model.cfg.to_dict()}
- Training: {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW lr {cfg.lr} (warmup {cfg.warmup_epochs} epoch, cosine),
  weight decay {cfg.weight_decay}, label smoothing {cfg.label_smoothing}, augmentation {cfg.augment}, seed {cfg.seed}
- Environment: {environment()}, device {device}
- Wall time (training + per-epoch validation): {elapsed / 60:.1f} min

Result on the full test split: accuracy **{100 * metrics["accuracy"]:.2f}%**, mean layers {metrics["mean_layers"]} of {model.cfg.depth}.

{markdown_table(["epoch", "train loss", "train acc", "val acc", "elapsed s"], rows)}

{origin}
"""
    update_section(out, "static", body)
    bundle.save()
    print(f"wrote bundle {out}")
