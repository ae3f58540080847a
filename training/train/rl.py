"""`skipvit train rl`: RL layer-skipping gates trained jointly with the backbone (thesis 3.4, 4.2).

Starts from a bundle's weights (`--init-from`, the usual route: fine-tune a static model) or from
scratch. `--freeze-backbone` trains only the head and the gates (transfer learning, thesis 4.2.1);
the head is re-initialised when the new dataset has a different number of classes.

Into an existing bundle: the run keeps the bundle's train/val split (its searches select on that
validation split), replaces weight set ``--name`` and drops the other points measured on it (they
describe the old weights), and refuses a ``--name`` that is another method's weight set.

Under torchrun, every process trains on its share of each global batch under DistributedDataParallel
(``training.distributed``), the returns whitened over the global batch; rank 0 writes.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from safetensors import safe_open

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle, new_bundle
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.model.vit import AdaptiveViT, build_model
from skipvit.training.configs import config_from
from skipvit.training.data import IMPORTED, DataSplits
from skipvit.training.data.augment import augment_config
from skipvit.training.device import autocast
from skipvit.training.distributed import entry
from skipvit.training.evaluate import EvalResult, evaluate
from skipvit.training.imported import measure_static
from skipvit.training.optim import gradient_step
from skipvit.training.presets import model_config
from skipvit.training.publish import existing_bundle, publish
from skipvit.training.reinforce import (
    PolicyForward,
    RLConfig,
    optimizer_for,
    reward_config,
    rl_step,
    teacher_logits,
)
from skipvit.training.report import command_line, environment, markdown_table
from skipvit.training.run import (
    EpochRunner,
    RunContext,
    run_settings,
    steps_per_epoch,
    train_batches,
    weights_id,
)
from skipvit.training.schedule import set_lr
from skipvit.training.splits import check_same_split, dataset_meta, run_split, same_dataset

# Points that only set a knob (thresholds, genes, alpha) on a weight set: when `train rl` replaces
# the weight set they are stale and go. Points of any other method mean the weight set is another
# command's (static, dyce, nsga-joint): `train rl` refuses to overwrite it.
KNOB_METHODS = ("rl", "nsga", "lac")


def add_arguments(p) -> None:
    flags.add_data(p)
    p.add_argument(
        "--out", required=True, help="bundle to write into (an existing bundle gains the weight set)"
    )
    p.add_argument("--init-from", default=None, help="start from this bundle's weights (default: scratch)")
    p.add_argument("--init-weights", default=None, help="weight set of --init-from (default: static)")
    p.add_argument("--freeze-backbone", action="store_true", help="train only the head and the gates")
    p.add_argument("--name", default="rl", help="weight-set and point id to write")
    p.add_argument("--epochs", type=int, default=6)
    flags.add_batch_size(p, 128)
    p.add_argument("--lr", type=float, default=2e-4, help="backbone and head learning rate")
    p.add_argument("--agent-lr", type=float, default=1e-3, help="gate learning rate")
    p.add_argument("--baseline-lr", type=float, default=1e-3, help="baseline learning rate")
    flags.add_reward(p)
    p.add_argument("--rl-weight", type=float, default=1.0, help="weight of the policy loss next to CE")
    p.add_argument("--baseline-hidden", type=int, default=64, help="baseline MLP width")
    p.add_argument("--gate-init-bias", type=float, default=2.0, help="initial gate bias (p = sigmoid(bias))")
    add_holding_arguments(p)
    p.add_argument("--no-augment", action="store_true", help="no crops, flips or erasing")
    p.add_argument("--preset", default="fmnist-9", help="architecture preset when training from scratch")
    flags.add_seed(p)
    flags.add_device(p)
    flags.add_limit_train(p)
    flags.add_checkpointing(p, "runs/<out>-<name>")


HOLDING_FLAGS = (  # (flag, default, metavar, help)
    (
        "--distill",
        0.0,
        "W",
        "share W of the classification loss from distillation of the --init-from weights",
    ),
    ("--distill-temperature", 1.0, "T", "the distillation's softmax temperature"),
    ("--gate-hold-epochs", 0.0, "E", "the gates do not learn for the first E epochs"),
    ("--gate-ramp-epochs", 0.0, "E", "then their learning rate rises linearly to --agent-lr over E epochs"),
    ("--explore-floor", 0.0, "F", "while training, actions are sampled from F + (1 - 2F) p: no layer dies"),
    (
        "--erase-prob",
        0.25,
        "P",
        "random-erasing probability (0: none, as when the backbone ended without it)",
    ),
)


def add_holding_arguments(
    p, only: tuple[str, ...] | None = None, teacher: str = "the --init-from weights"
) -> None:
    """The flags that hold the backbone while the gates learn (each off by default: the thesis);
    ``only``: just these flags; ``teacher``: what distillation learns from, in the help."""
    g = p.add_argument_group("holding the backbone (departures from the thesis, off by default)")
    for flag, default, metavar, text in HOLDING_FLAGS:
        if only is None or flag in only:
            g.add_argument(
                flag,
                type=float,
                default=default,
                metavar=metavar,
                help=text.replace("the --init-from weights", teacher),
            )


def check_distill(share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--distill {share}: a share of the loss, in [0, 1]")


def config_from_args(args) -> RLConfig:
    check_distill(args.distill)
    if args.distill > 0 and not args.init_from:
        raise ValueError("--distill needs a teacher; Hint: pass --init-from BUNDLE (its weights teach)")
    augment = augment_config(args.no_augment, args.erase_prob)
    return config_from(RLConfig, args, reward=reward_config(args), augment=augment)


def init_weights(args, src: Bundle) -> str:
    """The weight set of ``--init-from`` to start from: ``--init-weights``, else static, else the first."""
    return args.init_weights or ("static" if "static" in src.weight_sets else next(iter(src.weight_sets)))


def initial_model(args, splits: DataSplits, cfg: RLConfig, src: Bundle | None) -> tuple[AdaptiveViT, str]:
    """The model to start from (``src``: the ``--init-from`` bundle), with an agent attached, and a
    line saying where it came from."""
    info = splits.info
    if src is not None:
        weights = init_weights(args, src)
        model = src.build_model(weights)
        arch = src.architecture
        if (arch.image_size, arch.in_channels) != (info.image_size, info.channels):
            raise ValueError(
                f"{args.init_from} expects {arch.in_channels}x{arch.image_size}x{arch.image_size} images, "
                f"{info.name} has {info.channels}x{info.image_size}x{info.image_size}"
            )
        origin = f"weights `{weights}` of `{args.init_from}`"
        if arch.num_classes != info.num_classes:
            new = build_model(replace(arch, num_classes=info.num_classes))
            state = {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "agent."))}
            new.load_state_dict(state, strict=False)
            model, origin = new, origin + f" (new {info.num_classes}-class head)"
    else:
        model = build_model(model_config(args.preset, info))
        origin = f"scratch (preset {args.preset})"
    if model.agent is None:
        d = model.cfg
        model.attach_agent(SkipAgent(d.dim, d.depth, cfg.baseline_hidden, cfg.gate_init_bias))
    return model, origin


def holding_text(cfg: RLConfig) -> str:
    """The report's words for the departures from the thesis that hold the backbone."""
    parts = []
    if cfg.distill > 0:
        parts.append(
            f"{cfg.distill} of the classification loss is distillation (T = {cfg.distill_temperature})"
        )
    if cfg.gate_hold_epochs or cfg.gate_ramp_epochs:
        parts.append(f"gates held {cfg.gate_hold_epochs} epochs, then ramped over {cfg.gate_ramp_epochs}")
    if cfg.explore_floor:
        parts.append(f"exploration floor {cfg.explore_floor}")
    return "; ".join(parts) or "none (the thesis's recipe)"


def teacher_for(args, src: Bundle | None, cfg: RLConfig, device) -> AdaptiveViT | None:
    """The distillation teacher: the --init-from weights (as they were, even on --resume), frozen."""
    if cfg.distill <= 0 or src is None:
        return None
    teacher = src.build_model(init_weights(args, src), device).eval()
    return teacher.requires_grad_(False)


def train_epoch(model, net, opt, splits, cfg: RLConfig, device, epoch, total_steps, runner, teacher=None):
    """One epoch from optimiser step ``runner.step``, the forward through ``net`` (``PolicyForward``
    of ``model``, under DistributedDataParallel in a distributed run); the new step count and the
    epoch's figures."""
    model.train()
    if cfg.freeze_backbone:
        model.eval()  # frozen backbone: no dropout; gradients still flow to head and agent
    step, dist, g = runner.step, runner.dist, runner.draws(epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch(len(splits.train), cfg.batch_size))
    seen = correct = 0
    ce_sum = layers_sum = 0.0
    desc = f"rl epoch {epoch + 1}/{cfg.epochs}"
    info = splits.info
    bar = train_batches(splits.train, info, cfg.batch_size, cfg.augment, runner.g, device, desc, dist, g)
    for x, y in bar:
        set_lr(opt, step, total_steps, warmup)
        with autocast(device):
            taught = teacher_logits(teacher, x)
            loss, st = rl_step(model, x, y, cfg, teacher_logits=taught, net=net, moments=dist.moments)
        gradient_step(opt, dist.scale(loss, len(y)), cfg.grad_clip)
        step += 1
        seen += len(y)
        correct += st["correct"]
        ce_sum += st["ce"] * len(y)
        layers_sum += st["layers"] * len(y)
        bar.set_postfix(
            ce=f"{ce_sum / seen:.4f}", acc=f"{correct / seen:.4f}", layers=f"{layers_sum / seen:.2f}"
        )
    ce_sum, correct, layers_sum, seen = dist.sum([ce_sum, correct, layers_sum, seen])  # global batches
    return step, {
        "ce": ce_sum / max(1, seen),
        "train_acc": correct / max(1, seen),
        "train_layers": layers_sum / max(1, seen),
    }


@entry
def run(args) -> None:
    out = Path(args.out)
    ctx = RunContext.start(args, f"{out.name}-{args.name}")
    cfg = config_from_args(args)
    target = existing_bundle(out)
    if target is not None:
        _check_dataset(target, args)
    src = load_bundle(args.init_from) if args.init_from else None
    # The split of the bundle written into (its searches select on its validation split), else of
    # the bundle started from (its weights trained on its train split), else --val-fraction/--seed.
    same_src = src is not None and same_dataset(src.dataset, args)
    if target is not None and same_src:
        check_same_split(src, target)
    ref = target if target is not None else src if same_src else None
    split = run_split(args, ref)
    # A bundle imported from elsewhere fixes the labels and how an image becomes the input.
    imported = ref if ref is not None and ref.dataset.get("name") == IMPORTED else None
    if imported is None and args.data_opt and src is not None and src.dataset.get("name") == IMPORTED:
        raise ValueError(
            f"{args.init_from} was imported: its labels, image size and normalisation are the model's; "
            "Hint: leave out --data-opt"
        )
    splits = ctx.dataset_splits(split, imported)
    if imported is not None and imported is target:  # its static point is compared with
        measured = target
        target = ctx.dist.main_writes(
            lambda: measure_static(measured, splits, ctx.device, args), lambda: load_bundle(measured.root)
        )
    model, origin = initial_model(args, splits, cfg, src)
    if target is not None:  # refuse before training, not after
        _check_target(target, model, args.name)
    model.to(ctx.device)
    ctx.dist.check_batch(cfg.batch_size)
    opt = optimizer_for(model, cfg, steps_per_epoch(len(splits.train), cfg.batch_size))
    teacher = teacher_for(args, src, cfg, ctx.device)
    init = weights_id(src, init_weights(args, src)) if src is not None else None
    runner = ctx.epochs(model, opt, cfg.epochs, run_settings(asdict(cfg), args, split, model.cfg, init))
    # The gates may leave a layer unrun by every row of a rank's shard (distributed.Dist.wrap).
    net = ctx.dist.wrap(PolicyForward(model), ctx.device, find_unused=True)
    print(f"RL training from {origin} | {cfg} | device {ctx.device}")
    total_steps = steps_per_epoch(len(splits.train), cfg.batch_size) * cfg.epochs
    info = splits.info
    for epoch in runner:
        runner.step, stats = train_epoch(
            model, net, opt, splits, cfg, ctx.device, epoch, total_steps, runner, teacher
        )
        policy = GatePolicy(model.agent)
        val = evaluate(model, splits.val, info.mean, info.std, policy, device=ctx.device)
        runner.end_epoch_with(
            {
                "epoch": epoch + 1,
                **{k: round(v, 4) for k, v in stats.items()},
                "val_acc": round(val.accuracy, 5),
                "val_layers": round(val.mean_layers, 3),
            }
        )
        print(
            f"rl epoch {epoch + 1}/{cfg.epochs}: ce {stats['ce']:.4f} train acc {stats['train_acc']:.4f} "
            f"(sampled layers {stats['train_layers']:.2f}) | val acc {val.accuracy:.4f} at "
            f"{val.mean_layers:.2f} layers ({runner.elapsed / 60:.1f} min)"
        )
    if not runner.finished() or not ctx.dist.is_main:
        return
    val = evaluate(model, splits.val, info.mean, info.std, GatePolicy(model.agent), device=ctx.device)
    test = evaluate(model, splits.test, info.mean, info.std, GatePolicy(model.agent), device=ctx.device)
    print(f"test accuracy {test.accuracy:.4f} at {test.mean_layers:.3f} mean layers on {test.n} images")
    write_rl_bundle(out, model, splits, split, cfg, (val, test), runner, ctx, origin, imported)


def _check_dataset(bundle: Bundle, args) -> None:
    if not same_dataset(bundle.dataset, args):
        raise SystemExit(
            f"{bundle.root} holds a bundle with another architecture or dataset; Hint: pick another --out"
        )


def _check_target(bundle: Bundle, model: AdaptiveViT, name: str) -> None:
    """Refuse to write into ``bundle`` when its architecture differs, or when weight set ``name``
    is there and is not an RL weight set whose points only set knobs on it."""
    if bundle.architecture != model.cfg:
        raise SystemExit(
            f"{bundle.root} holds a bundle with another architecture or dataset; Hint: pick another --out"
        )
    clash = next((p for p in bundle.front if p.id == name and p.weights != name), None)
    if clash is not None:
        raise ValueError(
            f"--name {name!r} would replace point {name!r} ({clash.method}, on weights "
            f"{clash.weights!r}) of {bundle.root}; Hint: pick another --name"
        )
    if name not in bundle.weight_sets:
        return
    others = sorted({p.method for p in bundle.front if p.weights == name} - set(KNOB_METHODS))
    with safe_open(str(bundle.root / bundle.weight_sets[name]), "pt") as f:
        keys = list(f.keys())
    gates, heads = any(k.startswith("agent.") for k in keys), any(k.startswith("exits.") for k in keys)
    if others or not gates or heads:
        whose = (
            f"which points of method {', '.join(others)} use"
            if others
            else "which holds exit heads"
            if heads
            else "which has no gates"
        )
        raise ValueError(
            f"--name {name!r} would overwrite weight set {name!r} of {bundle.root}, {whose}; "
            "Hint: pick another --name"
        )


def write_rl_bundle(
    out: Path,
    model: AdaptiveViT,
    splits: DataSplits,
    split: dict,
    cfg: RLConfig,
    results: tuple[EvalResult, EvalResult],
    runner: EpochRunner,
    ctx: RunContext,
    origin: str,
    imported: Bundle | None = None,
) -> None:
    """Write weight set and point ``--name`` into ``out`` (a new bundle: with ``imported``'s dataset
    entry and preprocess section, where the weights started from an imported bundle)."""
    args, name = ctx.args, ctx.args.name
    bundle = existing_bundle(out)  # afresh: another command may have written into it meanwhile
    if bundle is not None:
        _check_dataset(bundle, args)
        _check_target(bundle, model, name)
    else:
        bundle = new_bundle(out, model.cfg, dataset_meta(splits, split, args, imported))
        bundle.preprocess = imported.preprocess if imported is not None else None
        bundle.default_point = name
    bundle.add_weight_set(name, model.state_dict())
    depth = model.depth
    val, test = results
    metrics = test.metrics(depth, "test") | val.val_metrics(depth)
    point = Point(name, "rl", name, {"thresholds": [0.5] * depth}, metrics)
    rows = [
        [
            h["epoch"],
            h["ce"],
            h["train_acc"],
            h["train_layers"],
            h["val_acc"],
            h["val_layers"],
            h["elapsed_s"],
        ]
        for h in runner.history
    ]
    ratio = test.executed.float().mean(0).tolist()

    def body(bundle: Bundle, stale: list[str]) -> str:
        compare = [
            [
                p.id,
                p.method,
                f"{100 * p.metrics['accuracy']:.2f}",
                p.metrics["mean_layers"],
                p.metrics["relative_compute"],
            ]
            for p in bundle.front
        ]
        text = f"""
Command: `{command_line(args.argv)}`

- Start: {origin}; backbone {"frozen (head and gates train)" if cfg.freeze_backbone else "trained jointly"}
- Data: `{splits.info.name}`, train {len(splits.train)} / val {len(splits.val)} (carved from train: fraction
  {split["val_fraction"]}, seed {split["seed"]}) / test {len(splits.test)}
- RL: REINFORCE with a per-layer baseline (2-layer MLP, hidden {cfg.baseline_hidden}); reward
  R = {cfg.reward.w_acc}·A − {cfg.reward.w_layers}·L + ({cfg.reward.eps}); gamma {cfg.reward.gamma}; returns whitened over
  the (batch × layers) matrix; loss = CE + {cfg.rl_weight}·policy + {cfg.baseline_weight}·baseline MSE
- Optimiser: AdamW, {cfg.epochs} epochs, batch {cfg.batch_size}, lr backbone {cfg.lr} / gates {cfg.agent_lr} /
  baseline {cfg.baseline_lr}, warmup {cfg.warmup_epochs} epoch then cosine; gate bias init {cfg.gate_init_bias}; seed {cfg.seed}
- Holding the backbone: {holding_text(cfg)}; augmentation {cfg.augment}
- Environment: {environment()}, device {ctx.device}{ctx.dist.describe()}; wall time {runner.elapsed / 60:.1f} min

Full test split, threshold 0.5 at every gate: accuracy **{100 * test.accuracy:.2f}%** at
**{test.mean_layers:.3f}** mean layers of {depth} ({100 * test.mean_layers / depth:.1f}% of the layers).
Per-layer processing ratio: {", ".join(f"{r:.2f}" for r in ratio)}.

{markdown_table(["point", "method", "test acc %", "mean layers", "relative compute"], compare)}

{markdown_table(["epoch", "CE", "train acc", "sampled layers", "val acc", "val layers", "elapsed s"], rows)}
"""
        if stale:
            text += (
                f"\nDropped the points measured on the previous `{name}` weights: {', '.join(stale)} (measured on "
                "weights this bundle no longer holds; their report sections are kept as a record).\n"
            )
        return text

    # The other points on the weight set being replaced were measured on the old weights.
    stale = publish(bundle, name, body, [point], replaces=lambda p: p.weights == name)
    if stale:
        print(
            f"dropped {len(stale)} points measured on the old {name!r} weights ({', '.join(stale)}); "
            "Hint: run `skipvit search nsga` (or `search lac --weights`) for new ones"
        )
    print(f"wrote weight set and point {name!r} into {out}")
