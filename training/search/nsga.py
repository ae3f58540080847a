"""`skipvit search nsga`: post-training search over the RL gates' per-layer settings with NSGA-II
(thesis 2.1.8, 3.5 and 4.3), plain or joint with the agent (`--joint`).

The genes are in ``nsga_genes``, their scoring in ``nsga_scoring``, the search (operators,
objectives, the joint variant) in ``nsga_search``; this module is the command.

**Output.** The final population is evaluated on the full validation split; its non-dominated set
in (relative compute, error), with repeated objective pairs kept once, is evaluated once on the
test split and written as points. The test split plays no part in any choice.
"""

from __future__ import annotations

import math

import numpy as np

from skipvit import flags
from skipvit.model.bundle import Bundle, Point, load_bundle
from skipvit.model.vit import AdaptiveViT
from skipvit.training.configs import config_from
from skipvit.training.fronts import HV_REF, hypervolume, objectives
from skipvit.training.imported import measure_static
from skipvit.training.publish import numbered, publish
from skipvit.training.reinforce import reward_config
from skipvit.training.report import command_line, environment, markdown_table
from skipvit.training.run import RunContext
from skipvit.training.search.nsga_genes import gene_values
from skipvit.training.search.nsga_scoring import fitness, score_split
from skipvit.training.search.nsga_search import NSGAConfig, NSGASearch, SearchResult, joint_rl_config
from skipvit.training.stats import accuracy_ci95
from skipvit.training.train.rl import add_holding_arguments, check_distill, holding_text


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle to search and write into")
    p.add_argument(
        "--joint",
        action="store_true",
        help="joint RL-NSGA: reward objective, weights fine-tuned between generations",
    )
    p.add_argument("--weights", default=None, help="weight set with gates to start from (default: rl)")
    p.add_argument("--name", default=None, help="point prefix (default nsga, or nsga-joint with --joint)")
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--population", type=int, default=25)
    p.add_argument("--mutation", type=float, default=0.65, help="probability that an offspring mutates")
    p.add_argument("--crossover", type=float, default=0.5, help="probability of one-point crossover")
    p.add_argument("--step", type=float, default=0.25, help="gene step: genes are -1 and 0..1 by this")
    p.add_argument("--val-batch", type=int, default=1024, help="validation images per generation (0: all)")
    p.add_argument(
        "--steps-per-generation", type=int, default=20, help="joint: weight updates per generation"
    )
    p.add_argument("--batch-size", type=int, default=128, help="joint: training batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="joint: backbone and head learning rate")
    p.add_argument("--agent-lr", type=float, default=1e-3, help="joint: gate and baseline learning rate")
    p.add_argument(
        "--finetune-within",
        type=float,
        default=0.0,
        metavar="PT",
        help="joint: train only under survivors within PT accuracy points of the best one "
        "(default 0: under every survivor, the thesis)",
    )
    flags.add_reward(p, "joint: ")
    add_holding_arguments(p, only=JOINT_HOLDING, teacher="the bundle's static weights (joint search)")
    flags.add_seed(p)
    flags.add_device(p)
    flags.add_data_dir(p)
    flags.add_bundle_data(p)
    flags.add_checkpointing(p, "runs/<bundle>-<name>-search", unit="generations", state="search state")


def fitness_noise(accuracies, n: int) -> str:
    """The standard error of a fitness accuracy measured on ``n`` images, at the chosen points'
    median validation accuracy: two configurations closer than about twice it are told apart by
    the batch drawn, not by what they are."""
    a = float(np.median(accuracies)) if len(accuracies) else 0.5
    se = math.sqrt(a * (1 - a) / max(1, n))
    return f"standard error of one fitness accuracy near {100 * a:.1f}%: {100 * se:.2f} pt"


JOINT_HOLDING = ("--distill", "--distill-temperature", "--explore-floor", "--erase-prob")


def config_from_args(args) -> NSGAConfig:
    check_distill(args.distill)
    if not args.joint and (args.distill or args.explore_floor):
        raise ValueError("--distill and --explore-floor shape the joint search's training; Hint: add --joint")
    if args.finetune_within < 0 or (args.finetune_within and not args.joint):
        raise ValueError(
            f"--finetune-within {args.finetune_within:g}: a non-negative accuracy margin, in points, "
            "for the joint search's training; Hint: add --joint, or leave it out"
        )
    return config_from(NSGAConfig, args, reward=reward_config(args))


def joint_teacher(bundle: Bundle, cfg: NSGAConfig, device) -> AdaptiveViT | None:
    """The joint search's distillation teacher: the bundle's static weights, every layer, frozen."""
    if not (cfg.joint and cfg.distill > 0):
        return None
    if "static" not in bundle.weight_sets:
        raise ValueError(f"{bundle.root} has no static weights to distil from; Hint: drop --distill")
    return bundle.build_model("static", device).eval().requires_grad_(False)


def run(args) -> None:
    cfg = config_from_args(args)
    gene_values(cfg.step)  # reject a bad step before any work
    bundle = load_bundle(args.bundle)
    name = args.name or ("nsga-joint" if cfg.joint else "nsga")
    weights = args.weights or ("rl" if "rl" in bundle.weight_sets else None)
    if weights is None:
        raise ValueError(
            f"{args.bundle} has no weight set 'rl'; Hint: run `skipvit train rl` first, "
            "or name a weight set with gates through --weights"
        )
    if cfg.joint and name == weights:
        raise ValueError(
            f"the joint search writes its own weight set; --name {name!r} would overwrite the "
            f"weights it starts from; Hint: pick another --name, e.g. nsga-joint"
        )
    ctx = RunContext.start(args, f"{bundle.root.name}-{name}-search")
    device = ctx.device
    model = bundle.build_model(weights, device)
    splits = ctx.bundle_splits(bundle)
    bundle = measure_static(bundle, splits, device, args)
    print(
        f"NSGA-II {'joint RL-NSGA' if cfg.joint else 'plain'} search on weights {weights!r} of "
        f"{args.bundle} | {cfg} | device {device}"
    )
    teacher = joint_teacher(bundle, cfg, device)
    search = NSGASearch(
        model, splits.train, splits.val, splits.info, cfg, ctx.ckpt_dir, device, teacher=teacher
    )
    if not search.run(resume=args.resume, stop_after=args.stop_after):
        return
    result = search.select()
    # The choice is made; only now is the test split read, once per chosen configuration.
    correct, executed = score_split(model, splits.test, splits.info, result.genes, device)
    test = fitness(correct, executed, cfg.reward)
    write_search(
        load_bundle(bundle.root),
        name,
        weights,
        model if cfg.joint else None,
        result,
        test,
        (len(splits.val), len(splits.test)),
        cfg,
        ctx,
    )


def write_search(
    bundle: Bundle,
    name: str,
    weights: str,
    joint_model: AdaptiveViT | None,
    result: SearchResult,
    test: dict,
    sizes: tuple[int, int],
    cfg: NSGAConfig,
    ctx: RunContext,
) -> None:
    """Points ``<name>-1``, ``-2``, ... into ``bundle`` (loaded afresh), replacing the earlier ones;
    the joint search also writes its weights as weight set ``name``; ``sizes``: (validation, test) images."""
    n_val, n_test = sizes
    method = "nsga-joint" if cfg.joint else "nsga"
    source = weights
    if joint_model is not None:
        bundle.add_weight_set(name, joint_model.state_dict())
        weights = name
    points = []
    for i, genes in enumerate(result.genes):
        metrics = {
            "accuracy": round(float(test["accuracy"][i]), 5),
            "mean_layers": round(float(test["mean_layers"][i]), 4),
            "relative_compute": round(float(test["compute"][i]), 4),
            "split": "test",
            "n": n_test,
            "accuracy_ci95": accuracy_ci95(float(test["accuracy"][i]), n_test),
            "val_accuracy": round(float(result.val["accuracy"][i]), 5),
            "val_mean_layers": round(float(result.val["mean_layers"][i]), 4),
            "val_relative_compute": round(float(result.val["compute"][i]), 4),
        }
        params = {"genes": [float(g) for g in genes], "step": cfg.step}
        points.append(Point(f"{name}-{i + 1}", method, weights, params, metrics))
    hv_test = hypervolume(objectives(points))
    hv_val = hypervolume(np.stack([result.val["compute"], 1 - result.val["accuracy"]], axis=1))
    rows = [
        [
            p.id,
            " ".join(f"{g:g}" for g in p.params["genes"]),
            f"{100 * p.metrics['val_accuracy']:.2f}",
            p.metrics["val_mean_layers"],
            f"{100 * p.metrics['accuracy']:.2f}",
            p.metrics["mean_layers"],
        ]
        for p in points
    ]
    hist = [
        [h["generation"], h["hv"], h["front_points"], h["max_acc"], h["min_layers"], h["elapsed_s"]]
        + ([h["ce"], h["train_acc"], h["train_layers"], h.get("finetune_configs", "")] if cfg.joint else [])
        for h in result.history
    ]
    hist_head = ["generation", "HV (batch)", "front points", "best acc", "fewest layers", "elapsed s"]
    hist_head += ["train CE", "train acc", "sampled layers", "trained under"] if cfg.joint else []
    finetune_text = (
        f"the survivors within {cfg.finetune_within:g} pt of the best survivor's accuracy on the\n  generation's batch"
        if cfg.finetune_within > 0
        else "the surviving population"
    )
    joint_text = (
        f"""
- Joint: third objective = running mean (eq. 3.19) of the RL reward R = {cfg.reward.w_acc}·A −
  {cfg.reward.w_layers}·L + ({cfg.reward.eps}) under the configuration; between generations
  {cfg.steps_per_generation} AdamW steps (batch {cfg.batch_size}, lr backbone {cfg.lr}, gates and baselines
  {cfg.agent_lr}, constant) with CE + REINFORCE + baseline MSE, each row under a configuration drawn
  from {finetune_text} (removed layers never run, the other gates
  sample). Weight set `{name}`.
- Holding the backbone (distillation's teacher: the bundle's static weights):
  {holding_text(joint_rl_config(cfg))}; random erasing {cfg.erase_prob}"""
        if cfg.joint
        else ""
    )
    n_fit = min(cfg.val_batch, n_val) if cfg.val_batch > 0 else n_val
    se_text = fitness_noise(result.val["accuracy"], n_fit)
    if n_fit == n_val and not cfg.joint:
        fit_text = f"the whole validation split ({n_val} images), each configuration scored once"
    else:
        fit_text = f"a fresh batch of {n_fit} validation images per\n  generation (parents re-scored with their offspring)"
    body = f"""
Command: `{command_line(ctx.args.argv)}`

- Start: weight set `{source}`; NSGA-II (pymoo, ask-and-tell): {cfg.generations} generations,
  population {cfg.population}, one-point crossover {cfg.crossover}, uniform-replacement mutation
  {cfg.mutation}, gene step {cfg.step} (genes {{-1}} ∪ {{0, …, 1}}), seed {cfg.seed}
- Objectives: relative compute and error on {fit_text}; {se_text}{joint_text}
- Selection: the non-dominated set of the final population, scored on the full validation split; the
  test split is read only to report the chosen points
- Environment: {environment()}, device {ctx.device}; search wall time {result.elapsed_s / 60:.1f} min

Hypervolume (pymoo HV over (mean layers / depth, 1 − accuracy), reference point {HV_REF}):
**{hv_test:.4f}** on the test split, {hv_val:.4f} on the validation split.

{markdown_table(["point", "genes (per layer)", "val acc %", "val layers", "test acc %", "test layers"], rows)}

{markdown_table(hist_head, hist)}
"""
    publish(bundle, name, lambda *_: body, points, replaces=numbered(name), fronts=True)
    print(
        f"wrote {len(points)} points {name}-1..{len(points)} into {bundle.root}; "
        f"test hypervolume {hv_test:.4f}"
    )
    for p in points:
        print(
            f"  {p.id}: test accuracy {100 * p.metrics['accuracy']:.2f}% at {p.metrics['mean_layers']:.3f} "
            f"layers (val {100 * p.metrics['val_accuracy']:.2f}% at {p.metrics['val_mean_layers']:.3f})"
        )
