"""`skipvit search nsga`: post-training search over the RL gates' per-layer settings with NSGA-II
(thesis 2.1.8, 3.5 and 4.3), plain or joint with the agent (`--joint`).

**Genes.** One per layer, from {-1} ∪ {0, s, 2s, ..., 1} (step s): -1 removes the layer, which then
never runs; any other value is the threshold of the layer's gate (run iff p_j >= g; 0 always runs).
pymoo holds the *index* of each value, an integer in [0, K]; ``decode``/``encode`` translate.

**Operators** (thesis Table 15 defaults): uniform random sampling; one-point crossover applied to a
mating with probability 0.5; uniform-replacement mutation: an offspring mutates with probability
0.65, and then each of its genes is replaced by a uniformly drawn value with probability 1/L
(pymoo's per-variable default). Survival and mating are pymoo's NSGA-II, driven through its
ask-and-tell interface.

**Objectives**, computed each generation on a fresh random batch of the validation split (carved
from train): relative compute (mean layers / depth) and error (1 - accuracy), both minimised. The
parents are re-evaluated on the same batch as their offspring, so survival compares like with
like (and, in the joint search, under the same weights).

**Joint RL-NSGA** (eqs. 3.16-3.19, Algorithm 3) adds a third objective, the agent's expected
reward under the configuration, maximised: per image R = w_acc·A - w_layers·L + eps (the reward of
`train rl`), averaged over the batch, then folded into a running mean over every generation that
evaluated the configuration (eq. 3.19: mu_t = mu_{t-1} + (x_t - mu_{t-1}) / N, N = evaluations so
far). After each survival the weights (backbone, head, gates, baselines) take
``steps_per_generation`` stochastic-gradient steps (AdamW at a constant learning rate, the
optimiser of `train rl`) on augmented training batches. Each row of a batch runs under a
configuration drawn uniformly from the surviving population: its removed layers never run and its
other gates sample their actions, with the loss of `train rl` (cross-entropy + REINFORCE + the
baseline's MSE). The backbone thus learns to do without the layers the search removes, and the
agent re-learns its policy in the environment the search creates.

**Output.** The final population is evaluated on the full validation split; its non-dominated set
in (relative compute, error), with repeated objective pairs kept once, is evaluated once on the
test split and written as points. The test split plays no part in any choice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from skipvit import flags
from skipvit.model.gates import GatePolicy
from skipvit.model.vit import AdaptiveViT
from skipvit.training.checkpoint import check_settings
from skipvit.training.data.augment import augment, to_float
from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.device import autocast, full_precision
from skipvit.training.fronts import hypervolume
from skipvit.training.optim import gradient_step
from skipvit.training.reinforce import RewardConfig, RLConfig, optimizer_for, reward_config, rewards, rl_step
from skipvit.training.run import Progress

STATE = "search.json"


@dataclass(frozen=True)
class NSGAConfig:
    generations: int = 30
    population: int = 25
    mutation: float = 0.65  # probability that an offspring mutates
    crossover: float = 0.5  # probability that a mating crosses over
    step: float = 0.25  # threshold step of the genes
    val_batch: int = 1024  # validation images per generation
    rows_per_forward: int = 8192  # (configurations x images) rows per forward while scoring
    seed: int = 0
    joint: bool = False
    steps_per_generation: int = 20  # joint: weight updates between generations
    batch_size: int = 128  # joint: training batch
    lr: float = 1e-4  # joint: backbone and head
    agent_lr: float = 1e-3  # joint: gates and baselines
    reward: RewardConfig = field(default_factory=RewardConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- genes


def gene_values(step: float) -> np.ndarray:
    """The values a gene can take: -1, then 0 to 1 in steps of ``step``."""
    n = round(1 / step) if step > 0 else 0
    if not 0 < step <= 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"the gene step must divide 1 evenly (e.g. 0.25, 0.1, 0.01), got {step}")
    return np.concatenate([[-1.0], np.round(np.arange(n + 1) / n, 6)])


def decode(codes, step: float) -> np.ndarray:
    """Integer indices (..., L) -> gene values (..., L)."""
    return gene_values(step)[np.asarray(codes).astype(int)]


def encode(genes, step: float) -> np.ndarray:
    """Gene values (..., L) -> integer indices; a value off the grid is an error."""
    values = gene_values(step)
    genes = np.asarray(genes, dtype=float)
    idx = np.abs(genes[..., None] - values).argmin(-1)
    if not np.allclose(values[idx], genes, atol=1e-6):
        raise ValueError(f"genes {genes.tolist()} are not all on the grid {values.tolist()}")
    return idx


# ---------------------------------------------------------------- pymoo pieces


def _pymoo_parts(cfg: NSGAConfig, depth: int):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.pntx import SinglePointCrossover
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    class UniformReplacementMutation(Mutation):
        """Each gene of a mutating offspring is replaced, with probability prob_var, by a value drawn
        uniformly from all the gene's values."""

        def _do(self, problem, X, random_state=None, **kwargs):
            X = np.asarray(X).astype(int)
            prob_var = np.asarray(self.get_prob_var(problem, size=len(X)), dtype=float).reshape(-1, 1)
            hit = random_state.random(X.shape) < prob_var
            draws = random_state.integers(problem.xl.astype(int), problem.xu.astype(int) + 1, size=X.shape)
            return np.where(hit, draws, X)

    n_values = len(gene_values(cfg.step))
    problem = Problem(n_var=depth, n_obj=3 if cfg.joint else 2, xl=0, xu=n_values - 1, vtype=int)
    algorithm = NSGA2(
        pop_size=cfg.population,
        sampling=IntegerRandomSampling(),
        crossover=SinglePointCrossover(prob=cfg.crossover),
        mutation=UniformReplacementMutation(prob=cfg.mutation),
        eliminate_duplicates=True,
    )
    return problem, algorithm


def _set_objectives(problem, pop, f: np.ndarray) -> None:
    """Give every individual of ``pop`` the objectives ``f`` (overwriting earlier ones)."""
    from pymoo.core.evaluator import Evaluator
    from pymoo.problems.static import StaticProblem

    Evaluator(skip_already_evaluated=False).eval(StaticProblem(problem, F=f), pop)


def non_dominated(f: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of (n, m) minimised objectives; repeated rows kept once."""
    f = np.asarray(f, dtype=float)
    keep: list[int] = []
    for i in range(len(f)):
        dominated = np.any(np.all(f <= f[i], axis=1) & np.any(f < f[i], axis=1))
        repeated = any(np.array_equal(f[i], f[j]) for j in keep)
        if not dominated and not repeated:
            keep.append(i)
    return keep


# ---------------------------------------------------------------- scoring


@torch.inference_mode()
def score(model: AdaptiveViT, x: Tensor, y: Tensor, genes: np.ndarray, rows_per_forward: int = 8192):
    """Run every configuration (row of ``genes``, (n, L)) on the same images ``x`` (B, C, H, W,
    normalised, on the model's device): configurations are stacked along the batch with per-row
    thresholds. Returns correct (n, B) bool and executed (n, B, L) bool, on the CPU."""
    was_training = model.training
    model.eval()
    n, b, depth = len(genes), x.shape[0], model.depth
    thresholds = torch.as_tensor(np.asarray(genes, dtype=np.float32))
    per = max(1, rows_per_forward // b)
    correct, executed = [], []
    for start in range(0, n, per):
        thr = thresholds[start : start + per]
        c = len(thr)
        rows = thr.repeat_interleave(b, dim=0).to(x.device)  # (c*B, L)
        with full_precision(x.device):
            out = model(x.repeat(c, 1, 1, 1), GatePolicy(model.agent, rows))
        correct.append((out.logits.argmax(-1) == y.repeat(c)).view(c, b).cpu())
        executed.append(out.executed.view(c, b, depth).cpu())
    model.train(was_training)
    return torch.cat(correct), torch.cat(executed)


def score_split(model, data: ArrayData, info: DatasetInfo, genes, device, batch: int = 1024, rows=8192):
    """``score`` over a whole split, in batches of images: correct (n, N), executed (n, N, L)."""
    correct, executed = [], []
    for images, labels in data.batches(batch):
        x = to_float(images.to(device), info.mean, info.std)
        c, e = score(model, x, labels.to(device), genes, rows)
        correct.append(c)
        executed.append(e)
    return torch.cat(correct, dim=1), torch.cat(executed, dim=1)


def fitness(correct: Tensor, executed: Tensor, reward: RewardConfig) -> dict[str, np.ndarray]:
    """Per configuration: accuracy, mean layers, relative compute and mean RL reward."""
    n, b, depth = executed.shape
    r = rewards(correct.reshape(-1), executed.reshape(n * b, depth), reward).view(n, b)
    layers = executed.float().sum(2).mean(1)
    return {
        "accuracy": correct.float().mean(1).numpy(),
        "mean_layers": layers.numpy(),
        "compute": (layers / depth).numpy(),
        "reward": r.mean(1).numpy(),
    }


def _generator(seed: int, generation: int, stream: int) -> torch.Generator:
    """A generator for one generation's validation batch (stream 0) or training batches (stream 1),
    so a resumed search draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(1_000_003 * seed + 7919 * generation + stream)


# ---------------------------------------------------------------- joint fine-tuning


def finetune(
    model,
    opt,
    train: ArrayData,
    info: DatasetInfo,
    genes: np.ndarray,
    rl_cfg,
    steps: int,
    g: torch.Generator,
    device,
) -> dict:
    """``steps`` weight updates; each row runs under a configuration drawn from ``genes`` (P, L)."""
    thresholds = torch.as_tensor(np.asarray(genes, dtype=np.float32))
    model.train()
    totals = {"ce": 0.0, "correct": 0, "layers": 0.0, "n": 0}
    for _ in range(steps):
        idx = torch.randint(len(train), (rl_cfg.batch_size,), generator=g)
        x = to_float(train.images[idx], info.mean, info.std)
        x = augment(x, rl_cfg.augment, info.hflip, g, info.mean, info.std)
        y = train.labels[idx].to(device)
        rows = thresholds[torch.randint(len(thresholds), (len(idx),), generator=g)].to(device)
        with autocast(device):
            loss, st = rl_step(model, x.to(device), y, rl_cfg, rows)
        gradient_step(opt, loss, rl_cfg.grad_clip)
        totals["ce"] += st["ce"] * len(y)
        totals["correct"] += st["correct"]
        totals["layers"] += st["layers"] * len(y)
        totals["n"] += len(y)
    model.eval()
    n = max(1, totals["n"])
    return {"ce": totals["ce"] / n, "train_acc": totals["correct"] / n, "train_layers": totals["layers"] / n}


def joint_rl_config(cfg: NSGAConfig) -> RLConfig:
    return RLConfig(
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        agent_lr=cfg.agent_lr,
        baseline_lr=cfg.agent_lr,
        seed=cfg.seed,
        reward=cfg.reward,
    )


# ---------------------------------------------------------------- the search


@dataclass
class SearchResult:
    genes: np.ndarray  # (k, L) the chosen configurations, by increasing validation compute
    val: dict[str, np.ndarray]  # their fitness on the full validation split
    history: list[dict]
    elapsed_s: float


def _fmt_time(s: float) -> str:
    m, s = divmod(round(s), 60)
    return f"{m}m{s:02d}s"


class NSGASearch:
    """One search: ``run()`` advances generations (resuming from ``state_dir`` when asked, writing a
    checkpoint after each), ``select()`` picks the final non-dominated set on the validation split."""

    def __init__(
        self,
        model: AdaptiveViT,
        train: ArrayData,
        val: ArrayData,
        info: DatasetInfo,
        cfg: NSGAConfig,
        state_dir: Path,
        device,
        log=print,
    ) -> None:
        if model.agent is None:
            raise ValueError("the NSGA search tunes RL gates, but this weight set has none")
        self.model, self.train, self.val, self.info, self.cfg = model, train, val, info, cfg
        self.state_dir, self.device, self.log = Path(state_dir), torch.device(device), log
        self.problem, self.algorithm = _pymoo_parts(cfg, model.depth)
        self.rl_cfg = joint_rl_config(cfg) if cfg.joint else None
        self.opt = None
        if cfg.joint:
            self.opt = optimizer_for(model, self.rl_cfg)
        self.generation = 0
        self.progress = Progress(cfg.generations, None, "generation", f"state in {self.state_dir}")
        self.reward_mean: dict[tuple[int, ...], tuple[float, int]] = {}  # eq. 3.19 per configuration
        self.best_hv = 0.0

    @property
    def history(self) -> list[dict]:
        return self.progress.history

    # ---- state
    def _save(self) -> None:
        pop = self.algorithm.pop
        state = {
            "config": self.cfg.to_dict(),
            "generation": self.generation,
            "elapsed_s": self.progress.elapsed,
            "best_hv": self.best_hv,
            "history": self.progress.history,
            "X": np.asarray(pop.get("X")).astype(int).tolist(),
            "F": np.asarray(pop.get("F")).tolist(),
            "rank": np.asarray(pop.get("rank")).tolist(),
            "crowding": np.asarray(pop.get("crowding")).tolist(),
            "rng": self.algorithm.random_state.bit_generator.state,
            "reward_mean": [[list(k), m, c] for k, (m, c) in self.reward_mean.items()],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.joint:
            from skipvit.training.checkpoint import save_checkpoint

            save_checkpoint(self.state_dir, self.model, self.opt, {"generation": self.generation})
        tmp = self.state_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_dir / STATE)

    def _restore(self) -> None:
        from pymoo.core.population import Population

        path = self.state_dir / STATE
        if not path.is_file():
            raise FileNotFoundError(
                f"no search state in {self.state_dir}; Hint: drop --resume to start fresh"
            )
        state = json.loads(path.read_text())
        saved, now = dict(state["config"]), self.cfg.to_dict()
        saved.pop("generations"), now.pop("generations")  # a search may be extended
        check_settings(path, saved, now, "search")
        if self.cfg.joint:
            from skipvit.training.checkpoint import CKPT_META, load_checkpoint, read_meta

            # _save writes the weights, then search.json: a crash between the two leaves weights one
            # fine-tune ahead of the population, which no resume can line up again.
            weights_gen = read_meta(self.state_dir).get("generation")
            if weights_gen != state["generation"]:
                raise ValueError(
                    f"{self.state_dir / CKPT_META} holds the weights after generation {weights_gen}, but "
                    f"{path} the population after generation {state['generation']} (the search stopped "
                    "while saving); Hint: drop --resume to start the search afresh"
                )
            load_checkpoint(self.state_dir, self.model, self.opt)
        X, F = np.array(state["X"], dtype=int), np.array(state["F"], dtype=float)
        # One throwaway initial ask/tell puts pymoo in its running state; then the saved population,
        # its ranks and crowding, and the RNG replace what that produced.
        self.algorithm.setup(self.problem, seed=self.cfg.seed)
        pop = self.algorithm.ask()
        _set_objectives(self.problem, pop, F)
        self.algorithm.tell(infills=pop)
        pop = Population.new(X=X)
        _set_objectives(self.problem, pop, F)
        pop.set("rank", np.array(state["rank"]), "crowding", np.array(state["crowding"]))
        self.algorithm.pop = pop
        self.algorithm.random_state.bit_generator.state = state["rng"]
        self.generation, self.best_hv = state["generation"], state["best_hv"]
        self.progress.resume(state["generation"], state["elapsed_s"], state["history"])
        self.reward_mean = {tuple(k): (m, c) for k, m, c in state["reward_mean"]}
        self.log(f"resumed the search from {self.state_dir} after generation {self.generation}")

    # ---- one generation
    def _objectives(self, codes: np.ndarray, fit: dict[str, np.ndarray]) -> np.ndarray:
        f = [fit["compute"], 1.0 - fit["accuracy"]]
        if self.cfg.joint:
            mu = []
            for key, x in zip(map(tuple, codes.tolist()), fit["reward"], strict=True):
                m, n = self.reward_mean.get(key, (0.0, 0))
                n += 1
                m = m + (float(x) - m) / n  # eq. 3.19
                self.reward_mean[key] = (m, n)
                mu.append(m)
            f.append(-np.array(mu))
        return np.stack(f, axis=1)

    def _generation(self, gen: int) -> dict:
        from pymoo.core.population import Population

        cfg = self.cfg
        offspring = self.algorithm.ask()
        everyone = offspring if gen == 0 else Population.merge(self.algorithm.pop, offspring)
        codes = np.asarray(everyone.get("X")).astype(int)
        idx = torch.randperm(len(self.val), generator=_generator(cfg.seed, gen, 0))[: cfg.val_batch]
        x = to_float(self.val.images[idx].to(self.device), self.info.mean, self.info.std)
        correct, executed = score(
            self.model, x, self.val.labels[idx].to(self.device), decode(codes, cfg.step), cfg.rows_per_forward
        )
        fit = fitness(correct, executed, cfg.reward)
        _set_objectives(self.problem, everyone, self._objectives(codes, fit))
        self.algorithm.tell(infills=offspring)
        f = np.asarray(self.algorithm.pop.get("F"))
        hv = hypervolume(f[:, :2])
        self.best_hv = max(self.best_hv, hv)
        front = f[non_dominated(f[:, :2]), :2]
        record = {
            "generation": gen + 1,
            "hv": round(hv, 5),
            "front_points": len(front),
            "min_layers": round(float(front[:, 0].min()) * self.model.depth, 3),
            "max_acc": round(1 - float(front[:, 1].min()), 4),
        }
        if cfg.joint:
            survivors = decode(np.asarray(self.algorithm.pop.get("X")).astype(int), cfg.step)
            st = finetune(
                self.model,
                self.opt,
                self.train,
                self.info,
                survivors,
                self.rl_cfg,
                cfg.steps_per_generation,
                _generator(cfg.seed, gen, 1),
                self.device,
            )
            record.update({k: round(v, 4) for k, v in st.items()})
        return record

    def run(self, resume: bool = False, stop_after: int | None = None) -> bool:
        """Advance to the last generation (or ``stop_after`` more); True when the search is complete."""
        cfg, progress = self.cfg, self.progress
        progress.stop_after = stop_after
        if resume:
            self._restore()
        else:
            self.algorithm.setup(self.problem, seed=cfg.seed)
        for gen in progress:
            record = progress.record(self._generation(gen))
            self.generation = gen + 1
            self._save()
            left = progress.elapsed / (gen + 1) * (cfg.generations - gen - 1)
            extra = f" | train CE {record['ce']:.3f}" if cfg.joint else ""
            self.log(
                f"generation {gen + 1}/{cfg.generations} | HV {record['hv']:.4f} (best "
                f"{self.best_hv:.4f}) | front {record['front_points']} points, best acc "
                f"{record['max_acc']:.4f}, fewest layers {record['min_layers']:.2f}{extra} | "
                f"{_fmt_time(progress.elapsed)} elapsed, ~{_fmt_time(left)} left"
            )
        return progress.finished(self.log)

    def select(self) -> SearchResult:
        """The final population's non-dominated set on the full validation split."""
        codes = np.asarray(self.algorithm.pop.get("X")).astype(int)
        genes = decode(codes, self.cfg.step)
        correct, executed = score_split(
            self.model, self.val, self.info, genes, self.device, rows=self.cfg.rows_per_forward
        )
        fit = fitness(correct, executed, self.cfg.reward)
        keep = non_dominated(np.stack([fit["compute"], 1 - fit["accuracy"]], axis=1))
        keep = sorted(keep, key=lambda i: (fit["compute"][i], -fit["accuracy"][i]))
        val = {k: v[keep] for k, v in fit.items()}
        return SearchResult(genes[keep], val, self.progress.history, self.progress.elapsed)


# ---------------------------------------------------------------- the command


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
    p.add_argument("--val-batch", type=int, default=1024, help="validation images scored per generation")
    p.add_argument(
        "--steps-per-generation", type=int, default=20, help="joint: weight updates per generation"
    )
    p.add_argument("--batch-size", type=int, default=128, help="joint: training batch size")
    p.add_argument("--lr", type=float, default=1e-4, help="joint: backbone and head learning rate")
    p.add_argument("--agent-lr", type=float, default=1e-3, help="joint: gate and baseline learning rate")
    flags.add_reward(p, "joint: ")
    flags.add_seed(p)
    flags.add_device(p)
    flags.add_data_dir(p)
    flags.add_checkpointing(p, "runs/<bundle>-<name>-search", unit="generations", state="search state")


def config_from_args(args) -> NSGAConfig:
    return NSGAConfig(
        generations=args.generations,
        population=args.population,
        mutation=args.mutation,
        crossover=args.crossover,
        step=args.step,
        val_batch=args.val_batch,
        seed=args.seed,
        joint=args.joint,
        steps_per_generation=args.steps_per_generation,
        batch_size=args.batch_size,
        lr=args.lr,
        agent_lr=args.agent_lr,
        reward=reward_config(args),
    )


def run(args) -> None:
    from skipvit.model.bundle import load_bundle
    from skipvit.training.run import RunContext

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
    splits = ctx.bundle_splits(bundle.dataset)
    print(
        f"NSGA-II {'joint RL-NSGA' if cfg.joint else 'plain'} search on weights {weights!r} of "
        f"{args.bundle} | {cfg} | device {device}"
    )
    search = NSGASearch(model, splits.train, splits.val, splits.info, cfg, ctx.ckpt_dir, device)
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
        len(splits.test),
        cfg,
        ctx,
    )


def write_search(
    bundle,
    name: str,
    weights: str,
    joint_model,
    result: SearchResult,
    test: dict,
    n_test: int,
    cfg: NSGAConfig,
    ctx,
) -> None:
    """Points ``<name>-1``, ``-2``, ... into ``bundle`` (loaded afresh), replacing the earlier ones;
    the joint search also writes its weights as weight set ``name``."""
    from skipvit.model.bundle import Point
    from skipvit.training.fronts import HV_REF, objectives
    from skipvit.training.publish import publish
    from skipvit.training.report import command_line, environment, markdown_table

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
            "val_accuracy": round(float(result.val["accuracy"][i]), 5),
            "val_mean_layers": round(float(result.val["mean_layers"][i]), 4),
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
        + ([h["ce"], h["train_acc"], h["train_layers"]] if cfg.joint else [])
        for h in result.history
    ]
    hist_head = ["generation", "HV (batch)", "front points", "best acc", "fewest layers", "elapsed s"]
    hist_head += ["train CE", "train acc", "sampled layers"] if cfg.joint else []
    joint_text = (
        f"""
- Joint: third objective = running mean (eq. 3.19) of the RL reward R = {cfg.reward.w_acc}·A −
  {cfg.reward.w_layers}·L + ({cfg.reward.eps}) under the configuration; between generations
  {cfg.steps_per_generation} AdamW steps (batch {cfg.batch_size}, lr backbone {cfg.lr}, gates and baselines
  {cfg.agent_lr}, constant) with CE + REINFORCE + baseline MSE, each row under a configuration drawn
  from the surviving population (removed layers never run, the other gates sample). Weight set `{name}`."""
        if cfg.joint
        else ""
    )
    body = f"""
Command: `{command_line(ctx.args.argv)}`

- Start: weight set `{source}`; NSGA-II (pymoo, ask-and-tell): {cfg.generations} generations,
  population {cfg.population}, one-point crossover {cfg.crossover}, uniform-replacement mutation
  {cfg.mutation}, gene step {cfg.step} (genes {{-1}} ∪ {{0, …, 1}}), seed {cfg.seed}
- Objectives: relative compute and error on a fresh batch of {cfg.val_batch} validation images per
  generation (parents re-scored with their offspring){joint_text}
- Selection: the non-dominated set of the final population, scored on the full validation split; the
  test split is read only to report the chosen points
- Environment: {environment()}, device {ctx.device}; search wall time {result.elapsed_s / 60:.1f} min

Hypervolume (pymoo HV over (mean layers / depth, 1 − accuracy), reference point {HV_REF}):
**{hv_test:.4f}** on the test split, {hv_val:.4f} on the validation split.

{markdown_table(["point", "genes (per layer)", "val acc %", "val layers", "test acc %", "test layers"], rows)}

{markdown_table(hist_head, hist)}
"""
    publish(
        bundle, name, lambda *_: body, points, replaces=lambda p: p.id.startswith(f"{name}-"), fronts=True
    )
    print(
        f"wrote {len(points)} points {name}-1..{len(points)} into {bundle.root}; "
        f"test hypervolume {hv_test:.4f}"
    )
    for p in points:
        print(
            f"  {p.id}: test accuracy {100 * p.metrics['accuracy']:.2f}% at {p.metrics['mean_layers']:.3f} "
            f"layers (val {100 * p.metrics['val_accuracy']:.2f}% at {p.metrics['val_mean_layers']:.3f})"
        )
