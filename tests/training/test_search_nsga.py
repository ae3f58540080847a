"""`skipvit search nsga`: genes, the pymoo-driven search, its checkpoints and what it writes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.model.gates import GatePolicy, SkipAgent
from skipvit.training.data import load_bundle_splits
from skipvit.training.search.nsga_genes import decode, encode, gene_values, non_dominated
from skipvit.training.search.nsga_scoring import fitness, score, score_split
from skipvit.training.search.nsga_search import NSGAConfig, NSGASearch
from tests.cli_args import argv


def search_nsga(bundle, words: str = "", **flags) -> None:
    """A small `skipvit search nsga` (3 generations of 6) on ``bundle``, with the flags in ``words``
    and ``flags``."""
    small = "search nsga --generations 3 --population 6 --val-batch 96 --device cpu"
    main(argv(f"{small} {words}", bundle=bundle, **flags))


# ---------------------------------------------------------------- genes


def test_gene_values_follow_the_step():
    assert gene_values(0.25).tolist() == [-1.0, 0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(gene_values(0.01)) == 102 and gene_values(0.1)[-1] == 1.0
    for bad in (0.3, 0.0, -0.25, 1.5):
        with pytest.raises(ValueError, match="divide 1"):
            gene_values(bad)


def test_encode_and_decode_round_trip():
    codes = np.random.default_rng(0).integers(0, 6, size=(20, 9))
    genes = decode(codes, 0.25)
    assert set(np.unique(genes)) <= {-1.0, 0.0, 0.25, 0.5, 0.75, 1.0}
    assert np.array_equal(encode(genes, 0.25), codes)
    assert decode([[0, 1, 5]], 0.25).tolist() == [[-1.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="not all on the grid"):
        encode([0.3], 0.25)


def _always_run_agent(model):
    cfg = model.cfg
    agent = SkipAgent(cfg.dim, cfg.depth, init_bias=20.0)  # p = sigmoid(20): every gate says run
    model.attach_agent(agent)
    return model


def test_a_removed_layer_never_runs(tiny_model):
    model = _always_run_agent(tiny_model)
    x = torch.randn(16, 1, 16, 16)
    genes = np.array([[0.5, -1, 0.75, -1], [-1, 0, 0, 0]])
    _, executed = score(model, x, torch.zeros(16, dtype=torch.long), genes)
    assert executed.shape == (2, 16, 4)
    assert executed[0].tolist() == [[True, False, True, False]] * 16
    assert executed[1].tolist() == [[False, True, True, True]] * 16
    # In training the gates sample (p = 0.5 here), but a removed layer still never runs and is no
    # action of the agent: its log-probability is 0.
    model.attach_agent(SkipAgent(model.cfg.dim, model.cfg.depth, init_bias=0.0))
    policy = GatePolicy(model.agent, torch.tensor([[0.5, -1, 0.5, -1]] * 64), sample=True)
    out = model.train()(torch.randn(64, 1, 16, 16), policy)
    assert not out.executed[:, [1, 3]].any() and out.executed[:, [0, 2]].any()
    log_probs = torch.stack(policy.log_probs, 1)
    assert torch.all(log_probs[:, [1, 3]] == 0) and torch.all(log_probs[:, [0, 2]] < -0.5)


def test_non_dominated_keeps_each_objective_pair_once():
    f = np.array([[0.2, 0.5], [0.4, 0.3], [0.4, 0.3], [0.5, 0.4], [0.9, 0.1], [0.2, 0.6]])
    assert non_dominated(f) == [0, 1, 4]


# ---------------------------------------------------------------- the search


@pytest.fixture(scope="module")
def rl_parts(tiny_rl_bundle):
    bundle = load_bundle(tiny_rl_bundle)
    return bundle, load_bundle_splits(bundle.dataset)


def _search(rl_parts, tmp_path, teacher=None, **kw):
    bundle, splits = rl_parts
    torch.manual_seed(0)
    model = bundle.build_model("rl")
    cfg = NSGAConfig(
        **{
            "generations": 3,
            "population": 6,
            "val_batch": 96,
            "steps_per_generation": 2,
            "batch_size": 32,
            **kw,
        }
    )
    return NSGASearch(
        model,
        splits.train,
        splits.val,
        splits.info,
        cfg,
        tmp_path,
        "cpu",
        log=lambda *_: None,
        teacher=teacher,
    )


def test_a_seeded_search_is_deterministic(rl_parts, tmp_path):
    runs = []
    for i in range(2):
        s = _search(rl_parts, tmp_path / str(i))
        assert s.run()
        runs.append(s.select())
    a, b = runs
    assert np.array_equal(a.genes, b.genes) and a.val["accuracy"].tolist() == b.val["accuracy"].tolist()
    assert [h["hv"] for h in a.history] == [h["hv"] for h in b.history]
    assert len(a.history) == 3 and all(0 < h["hv"] <= 1 for h in a.history)
    other = _search(rl_parts, tmp_path / "other", seed=1)
    other.run()
    assert [h["hv"] for h in other.history] != [h["hv"] for h in a.history]


@pytest.mark.parametrize("joint", [False, True])
def test_an_interrupted_search_resumes_exactly(rl_parts, tmp_path, joint):
    whole = _search(rl_parts, tmp_path / "whole", joint=joint, generations=4)
    assert whole.run()
    first = _search(rl_parts, tmp_path / "split", joint=joint, generations=4)
    assert not first.run(stop_after=2)
    second = _search(rl_parts, tmp_path / "split", joint=joint, generations=4)
    assert second.run(resume=True) and second.generation == 4

    def strip(history):
        return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]

    assert strip(second.history) == strip(whole.history)
    assert np.array_equal(second.algorithm.pop.get("X"), whole.algorithm.pop.get("X"))
    a, b = whole.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = _search(rl_parts, tmp_path / "split", joint=joint, generations=4, population=8)
    with pytest.raises(ValueError, match="population"):
        changed.run(resume=True)


def test_a_joint_resume_refuses_weights_out_of_step_with_the_population(rl_parts, tmp_path):
    first = _search(rl_parts, tmp_path, joint=True, generations=3)
    assert not first.run(stop_after=1)
    after_one = (tmp_path / "search.json").read_text()
    second = _search(rl_parts, tmp_path, joint=True, generations=3)
    assert not second.run(resume=True, stop_after=1)
    # A crash between the two writes of generation 2: the weights saved, search.json not yet.
    (tmp_path / "search.json").write_text(after_one)
    third = _search(rl_parts, tmp_path, joint=True, generations=3)
    with pytest.raises(ValueError, match=r"after generation 2, but .* after generation 1.*Hint"):
        third.run(resume=True)


def test_the_joint_search_trains_the_weights_and_scores_the_reward(rl_parts, tmp_path):
    s = _search(rl_parts, tmp_path, joint=True)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    s.run()
    after = s.model.state_dict()
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert not torch.equal(before["agent.gates.0.weight"], after["agent.gates.0.weight"])
    f = np.asarray(s.algorithm.pop.get("F"))
    assert f.shape == (6, 3)
    # The third objective is minus the running mean (eq. 3.19) of the configuration's reward, and
    # survivors are scored again every generation, so some means cover several batches.
    keys = [tuple(x) for x in np.asarray(s.algorithm.pop.get("X")).astype(int).tolist()]
    assert np.allclose(f[:, 2], [-s.reward_mean[k][0] for k in keys])
    assert max(s.reward_mean[k][1] for k in keys) > 1
    assert all("ce" in h for h in s.history)


def test_the_joint_fine_tune_can_keep_to_the_survivors_near_the_best(rl_parts, tmp_path, monkeypatch):
    from skipvit.training.search import nsga_search

    seen = []
    real = nsga_search.finetune

    def spy(model, opt, train, info, genes, *args, **kwargs):
        seen.append(np.array(genes))
        return real(model, opt, train, info, genes, *args, **kwargs)

    monkeypatch.setattr(nsga_search, "finetune", spy)
    for within in (0.0, 0.01):
        s = _search(rl_parts, tmp_path / str(within), joint=True, generations=2, finetune_within=within)
        s.run()
        pop = s.algorithm.pop
        acc = 1 - np.asarray(pop.get("F"))[:, 1]
        genes = decode(np.asarray(pop.get("X")).astype(int), s.cfg.step)
        near = genes[acc >= acc.max() - within / 100 - 1e-9]
        assert np.array_equal(seen[-1], genes if within == 0 else near)
        assert s.history[-1]["finetune_configs"] == len(seen[-1])
    # the margin was narrower than the population's spread, so it left configurations out
    assert 0 < len(seen[-1]) < len(genes)


# ---------------------------------------------------------------- the command


def _noisy_test(real):
    """load_bundle_splits with the test split replaced by noise and random labels."""

    def load(dataset, data_dir=None, **kwargs):
        splits = real(dataset, data_dir, **kwargs)
        g = torch.Generator().manual_seed(5)
        splits.test.images = torch.randint(0, 256, splits.test.images.shape, generator=g, dtype=torch.uint8)
        splits.test.labels = torch.randint(0, 4, splits.test.labels.shape, generator=g)
        return splits

    return load


def test_search_writes_non_dominated_points_chosen_without_the_test_split(
    tiny_rl_bundle, tmp_path, monkeypatch
):
    from skipvit.training import run

    outs = {}
    for variant in ("real", "noise"):
        out = tmp_path / variant
        shutil.copytree(tiny_rl_bundle, out)
        if variant == "noise":
            monkeypatch.setattr(run, "load_bundle_splits", _noisy_test(run.load_bundle_splits))
        search_nsga(out, ckpt_dir=tmp_path / f"c-{variant}")
        outs[variant] = load_bundle(out)
    monkeypatch.undo()

    real, noise = ([p for p in outs[v].front if p.method == "nsga"] for v in ("real", "noise"))
    assert real and [p.id for p in real] == [f"nsga-{i + 1}" for i in range(len(real))]
    # Replacing the test split changes the reported figures but not one choice.
    assert [p.params for p in real] == [p.params for p in noise]
    assert [p.metrics["val_accuracy"] for p in real] == [p.metrics["val_accuracy"] for p in noise]
    assert [p.metrics["accuracy"] for p in real] != [p.metrics["accuracy"] for p in noise]
    # No written point is dominated by another on the objectives the search chose by.
    objs = [(p.metrics["val_mean_layers"], -p.metrics["val_accuracy"]) for p in real]
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            assert i == j or not (b[0] <= a[0] and b[1] <= a[1]), (real[i].id, real[j].id)
    for p in real:
        assert p.weights == "rl" and p.params["step"] == 0.25 and len(p.params["genes"]) == 4
        assert np.array_equal(decode(encode(p.params["genes"], 0.25), 0.25), p.params["genes"])
    report = (tmp_path / "real" / "REPORT.md").read_text()
    assert "## nsga" in report and "## fronts" in report and "reference point (1.0, 1.0)" in report
    assert "standard error of one fitness accuracy near" in report


def test_evaluate_reproduces_a_written_point(tiny_rl_bundle, tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(tiny_rl_bundle, out)
    search_nsga(out, ckpt_dir=tmp_path / "c")
    point = next(p for p in load_bundle(out).front if p.method == "nsga")
    capsys.readouterr()
    main(argv(f"evaluate --point {point.id} --device cpu --json", bundle=out))
    import json

    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == pytest.approx(point.metrics["accuracy"], abs=1.5 / got["n"])
    assert got["mean_layers"] == pytest.approx(point.metrics["mean_layers"], abs=1e-3)


def test_joint_search_writes_its_own_weight_set(tiny_rl_bundle, tmp_path, capsys):
    out = tmp_path / "b"
    shutil.copytree(tiny_rl_bundle, out)
    search_nsga(out, "--joint --steps-per-generation 2 --batch-size 32", ckpt_dir=tmp_path / "c")
    b = load_bundle(out)
    joint = [p for p in b.front if p.method == "nsga-joint"]
    assert joint and all(p.weights == "nsga-joint" and p.id.startswith("nsga-joint-") for p in joint)
    assert "nsga-joint" in b.weight_sets and "rl" in b.weight_sets
    assert b.build_model("nsga-joint").agent is not None
    assert "## nsga-joint" in (out / "REPORT.md").read_text()
    search_nsga(out, ckpt_dir=tmp_path / "plain")  # a plain search leaves the joint points be
    assert {p.id for p in joint} <= {p.id for p in load_bundle(out).front}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        search_nsga(out, "--joint --name rl")
    assert "would overwrite the weights it starts from; Hint: pick another --name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_nsga(out, "--distill 0.5")
    assert "Hint: add --joint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_nsga(out, "--finetune-within 2")
    assert "--finetune-within 2: a non-negative accuracy margin" in capsys.readouterr().err


def test_the_joint_search_can_hold_the_backbone_as_train_rl_does(rl_parts, tmp_path):
    bundle, _ = rl_parts
    kw = {"joint": True, "generations": 1, "erase_prob": 0.0}
    with pytest.raises(ValueError, match="teacher"):
        _search(rl_parts, tmp_path / "none", distill=0.5, **kw)
    teacher = bundle.build_model("static").eval().requires_grad_(False)
    runs = {}
    for distill in (0.0, 0.5):
        s = _search(
            rl_parts, tmp_path / str(distill), teacher, distill=distill, distill_temperature=2.0, **kw
        )
        assert (s.teacher is teacher) == bool(distill)
        assert s.rl_cfg.augment.erase_prob == 0.0 and s.rl_cfg.distill == distill
        s.run()
        runs[distill] = s.model.state_dict()
    # the same draws with and without the teacher: only the distillation term tells the weights apart
    a, b = runs[0.0], runs[0.5]
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])


def test_a_whole_split_search_scores_each_configuration_once(rl_parts, tmp_path):
    _, splits = rl_parts
    s = _search(rl_parts, tmp_path / "memo", val_batch=0, generations=3)
    assert s.memo is not None and s.run()
    assert s.scored == len(s.memo) < 3 * 2 * 6  # parents and repeats were looked up, not rescored
    codes = np.array(list(s.memo))
    genes = decode(codes, s.cfg.step)
    correct, executed = score_split(s.model, splits.val, splits.info, genes, "cpu")
    fit = fitness(correct, executed, s.cfg.reward)
    assert np.allclose(fit["accuracy"], [s.memo[tuple(c)]["accuracy"] for c in codes.tolist()])
    assert np.allclose(fit["mean_layers"], [s.memo[tuple(c)]["mean_layers"] for c in codes.tolist()])
    # a batch smaller than the split, or the joint search (its weights move), rescores every time
    assert _search(rl_parts, tmp_path / "batch").memo is None
    assert _search(rl_parts, tmp_path / "joint", val_batch=0, joint=True).memo is None
