"""The NSGA-II search over the RL gates' per-layer genes (thesis 2.1.8, 3.5 and 4.3), plain or
joint with the agent: generations, survival and the search's state (for ``--resume``).

**Operators** (thesis Table 15 defaults): uniform random sampling; one-point crossover applied to a
mating with probability 0.5; uniform-replacement mutation: an offspring mutates with probability
0.65, and then each of its genes is replaced by a uniformly drawn value with probability 1/L
(pymoo's per-variable default). Survival and mating are pymoo's NSGA-II, driven through its
ask-and-tell interface.

**Objectives**, computed each generation on a fresh random batch of the validation split (carved
from train): relative compute (mean layers / depth) and error (1 - accuracy), both minimised. The
parents are re-evaluated on the same batch as their offspring, so survival compares like with
like (and, in the joint search, under the same weights). With ``val_batch`` 0 (or the split's
size) the plain search scores on the whole validation split, where neither the images nor the
weights change between generations: each configuration is then scored once and looked up after.

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
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from skipvit.model.vit import AdaptiveViT
from skipvit.training.checkpoint import CKPT_META, check_settings, load_checkpoint, read_meta, save_checkpoint
from skipvit.training.configs import config_from
from skipvit.training.data.augment import AugmentConfig, to_float
from skipvit.training.data.base import ArrayData, DatasetInfo
from skipvit.training.fronts import hypervolume
from skipvit.training.reinforce import RewardConfig, RLConfig, optimizer_for
from skipvit.training.run import Progress
from skipvit.training.search.nsga_genes import decode, gene_values, non_dominated
from skipvit.training.search.nsga_scoring import batch_generator, finetune, fitness, score, score_split

STATE = "search.json"


@dataclass(frozen=True)
class NSGAConfig:
    generations: int = 30
    population: int = 25
    mutation: float = 0.65  # probability that an offspring mutates
    crossover: float = 0.5  # probability that a mating crosses over
    step: float = 0.25  # threshold step of the genes
    val_batch: int = 1024  # validation images per generation (0: the whole validation split)
    rows_per_forward: int = 8192  # (configurations x images) rows per forward while scoring
    seed: int = 0
    joint: bool = False
    steps_per_generation: int = 20  # joint: weight updates between generations
    batch_size: int = 128  # joint: training batch
    lr: float = 1e-4  # joint: backbone and head
    agent_lr: float = 1e-3  # joint: gates and baselines
    reward: RewardConfig = field(default_factory=RewardConfig)
    # joint, holding the backbone as `train rl` can (off by default: the thesis): distillation from
    # the bundle's static weights run with every layer, an exploration floor, random erasing
    distill: float = 0.0
    distill_temperature: float = 1.0
    explore_floor: float = 0.0
    erase_prob: float = 0.25
    # joint: the fine-tune's rows run only under survivors within this many accuracy points of the
    # best survivor on the generation's batch (0: every survivor, the thesis); the lean end of the
    # front, far below the points a search is run for, then no longer pulls the shared weights
    finetune_within: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- pymoo pieces


def pymoo_parts(cfg: NSGAConfig, depth: int):
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


def joint_rl_config(cfg: NSGAConfig) -> RLConfig:
    """The RL settings of the joint fine-tune: the search's fields of the same name (batch size,
    learning rates, seed, reward, distillation, exploration floor), its agent learning rate also for
    the baselines, its erasing probability in the augmentation."""
    return config_from(
        RLConfig, cfg, baseline_lr=cfg.agent_lr, augment=AugmentConfig(erase_prob=cfg.erase_prob)
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
        teacher: AdaptiveViT | None = None,
    ) -> None:
        if model.agent is None:
            raise ValueError("the NSGA search tunes RL gates, but this weight set has none")
        self.model, self.train, self.val, self.info, self.cfg = model, train, val, info, cfg
        self.teacher = teacher if cfg.joint and cfg.distill > 0 else None
        if cfg.joint and cfg.distill > 0 and teacher is None:
            raise ValueError("the joint search's distillation needs a teacher model")
        self.state_dir, self.device, self.log = Path(state_dir), torch.device(device), log
        self.problem, self.algorithm = pymoo_parts(cfg, model.depth)
        self.rl_cfg = joint_rl_config(cfg) if cfg.joint else None
        self.opt = None
        if cfg.joint:
            self.opt = optimizer_for(model, self.rl_cfg)
        self.progress = Progress(cfg.generations, None, "generation", f"state in {self.state_dir}")
        self.reward_mean: dict[tuple[int, ...], tuple[float, int]] = {}  # eq. 3.19 per configuration
        self.best_hv = 0.0
        # Plain search on the whole validation split: the weights and the images never change, so a
        # configuration's fitness is computed once (parents and repeats are looked up, not rescored).
        self.memo: dict[tuple[int, ...], dict[str, float]] | None = (
            {} if not cfg.joint and (cfg.val_batch <= 0 or cfg.val_batch >= len(val)) else None
        )
        self.scored = 0  # configurations scored (forward passes over the fitness images)

    @property
    def generation(self) -> int:
        """Generations done."""
        return self.progress.done

    @property
    def history(self) -> list[dict]:
        return self.progress.history

    # ---- state
    def _save(self) -> None:
        pop = self.algorithm.pop
        state = {
            "config": self.cfg.to_dict(),
            **self.progress.state(),
            "best_hv": self.best_hv,
            "X": np.asarray(pop.get("X")).astype(int).tolist(),
            "F": np.asarray(pop.get("F")).tolist(),
            "rank": np.asarray(pop.get("rank")).tolist(),
            "crowding": np.asarray(pop.get("crowding")).tolist(),
            "rng": self.algorithm.random_state.bit_generator.state,
            "reward_mean": [[list(k), m, c] for k, (m, c) in self.reward_mean.items()],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.joint:
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
        self.best_hv = state["best_hv"]
        self.progress.restore(state)
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

    def _batch_fitness(self, codes: np.ndarray, gen: int) -> dict[str, np.ndarray]:
        """Fitness on this generation's random batch of the validation split (parents rescored)."""
        cfg = self.cfg
        size = cfg.val_batch if cfg.val_batch > 0 else len(self.val)
        idx = torch.randperm(len(self.val), generator=batch_generator(cfg.seed, gen, 0))[:size]
        x = to_float(self.val.images[idx].to(self.device), self.info.mean, self.info.std)
        correct, executed = score(
            self.model, x, self.val.labels[idx].to(self.device), decode(codes, cfg.step), cfg.rows_per_forward
        )
        self.scored += len(codes)
        return fitness(correct, executed, cfg.reward)

    def _memo_fitness(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Fitness on the whole validation split, each configuration scored the first time it is met."""
        keys = [tuple(c) for c in codes.tolist()]
        new = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if new:
            genes = decode(np.array(new), self.cfg.step)
            correct, executed = score_split(
                self.model, self.val, self.info, genes, self.device, rows=self.cfg.rows_per_forward
            )
            fit = fitness(correct, executed, self.cfg.reward)
            for i, k in enumerate(new):
                self.memo[k] = {name: float(v[i]) for name, v in fit.items()}
            self.scored += len(new)
        return {name: np.array([self.memo[k][name] for k in keys]) for name in self.memo[keys[0]]}

    def _generation(self, gen: int) -> dict:
        from pymoo.core.population import Population

        cfg = self.cfg
        offspring = self.algorithm.ask()
        everyone = offspring if gen == 0 else Population.merge(self.algorithm.pop, offspring)
        codes = np.asarray(everyone.get("X")).astype(int)
        fit = self._memo_fitness(codes) if self.memo is not None else self._batch_fitness(codes, gen)
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
            survivors = decode(self._finetune_codes(), cfg.step)
            st = finetune(
                self.model,
                self.opt,
                self.train,
                self.info,
                survivors,
                self.rl_cfg,
                cfg.steps_per_generation,
                batch_generator(cfg.seed, gen, 1),
                self.device,
                self.teacher,
            )
            record.update({k: round(v, 4) for k, v in st.items()}, finetune_configs=len(survivors))
        return record

    def _finetune_codes(self) -> np.ndarray:
        """The surviving configurations the joint fine-tune trains under: all of them, or with
        ``finetune_within`` those within that many accuracy points of the best survivor."""
        pop = self.algorithm.pop
        codes = np.asarray(pop.get("X")).astype(int)
        if self.cfg.finetune_within <= 0:
            return codes
        acc = 1.0 - np.asarray(pop.get("F"))[:, 1]
        return codes[acc >= acc.max() - self.cfg.finetune_within / 100 - 1e-9]

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
            self._save()
            left = progress.elapsed / (gen + 1) * (cfg.generations - gen - 1)
            extra = f" | train CE {record['ce']:.3f}" if cfg.joint else ""
            self.log(
                f"generation {gen + 1}/{cfg.generations} | HV {record['hv']:.4f} (best "
                f"{self.best_hv:.4f}) | front {record['front_points']} points, best acc "
                f"{record['max_acc']:.4f}, fewest layers {record['min_layers']:.2f}{extra} | "
                f"{self.scored} configurations scored | "
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
