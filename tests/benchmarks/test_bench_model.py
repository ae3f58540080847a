"""`skipvit bench model`: the derived figures and verdict from hand-made measurements, the point
choice, the batching, and one quick real run on the tiny gate bundle through the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from skipvit.benchmarks.bench_model import (
    Config,
    RowMasks,
    batches_of,
    build_configs,
    choose_points,
    mean_layers,
    parse_masks,
)
from skipvit.benchmarks.model_report import derive_rows, render_markdown, verdict
from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.model.flops import forward_flops, gate_flops
from tests.cli_args import argv
from tests.conftest import SHIPPED_BUNDLE

# ---- pure figures


def _rounds(*ips):
    return [{"calls": 1, "seconds": 1.0, "images_per_s": v} for v in ips]


def _configs(depth):
    return [
        {"id": "static", "kind": "static", "gates_per_image": 0},
        {"id": "gates-on", "kind": "gates-on", "gates_per_image": depth},
        {"id": "p", "kind": "point", "gates_per_image": depth},
    ]


def test_derive_rows_pairs_rounds_and_counts_flops(tiny_cfg):
    measured = {
        "static": {8: {"rounds": _rounds(100, 200, 100), "mean_layers": 4.0, "peak_memory_bytes": 10}},
        "gates-on": {8: {"rounds": _rounds(90, 180, 100), "mean_layers": 4.0, "peak_memory_bytes": 11}},
        "p": {8: {"rounds": _rounds(150, 500, 300), "mean_layers": 2.0, "peak_memory_bytes": 12}},
    }
    rows = {r["config"]: r for r in derive_rows(_configs(4), measured, tiny_cfg)}
    st, on, p = rows["static"], rows["gates-on"], rows["p"]
    assert (
        st["achieved_speedup"] == 1.0
        and st["ideal_speedup_flops"] == 1.0
        and st["ideal_speedup_layers"] == 1.0
    )
    # the per-round ratios are 1.5, 2.5, 3.0: their median, not median(p) / median(static) = 300 / 100
    assert p["achieved_speedup"] == 2.5
    assert p["images_per_s"] == 300
    static_flops = forward_flops(tiny_cfg, 4).total
    point_flops = forward_flops(tiny_cfg, 2.0).total + 4 * gate_flops(tiny_cfg)
    assert p["flops_per_image"] == point_flops
    assert p["ideal_speedup_flops"] == pytest.approx(static_flops / point_flops)
    assert p["ideal_speedup_layers"] == 2.0
    assert p["achieved_over_ideal_layers"] == pytest.approx(1.25)
    assert p["achieved_over_ideal_flops"] == pytest.approx(2.5 / (static_flops / point_flops))
    # gates-on: static / gates-on per round = 1.111, 1.111, 1.0 -> median 1/0.9 - 1
    assert on["overhead_vs_static"] == pytest.approx(1 / 0.9 - 1)
    assert on["ideal_speedup_flops"] < 1.0
    assert p["overhead_vs_static"] is None and st["overhead_vs_static"] is None


def _row(config, kind, b, eff=None, overhead=None):
    return {
        "config": config,
        "kind": kind,
        "batch_size": b,
        "achieved_over_ideal_flops": eff,
        "overhead_vs_static": overhead,
    }


def test_verdict_per_target():
    rows = [
        _row("gates-on", "gates-on", 64, overhead=0.04),
        _row("a", "point", 64, eff=0.90),
        _row("b", "point", 256, eff=0.84),
        _row("a", "point", 1, eff=0.61),
        _row("a", "point", 8, eff=0.10),  # batch 8 has no target
    ]
    large, overhead, one = verdict(rows, "cpu")
    assert large["reached"] is False and [r["reached"] for r in large["rows"]] == [True, False]
    assert overhead["reached"] is True
    assert one["reached"] is True and len(one["rows"]) == 1
    rows[0]["overhead_vs_static"] = 0.06
    assert verdict(rows, "cpu")[1]["reached"] is False
    assert verdict(rows, "cuda")[1]["reached"] is None  # a CPU target
    none = verdict([r for r in rows if r["batch_size"] < 64], "cpu")
    assert none[0]["measured"] is False and none[0]["reached"] is None


# ---- choices


def test_batches_cover_every_image_and_wrap():
    x = torch.arange(5).view(5, 1, 1, 1).float()
    bs = batches_of(x, 2)
    assert [b.flatten().tolist() for b in bs] == [[0, 1], [2, 3], [4, 0]]
    assert [b.flatten().tolist() for b in batches_of(x, 8)] == [[0, 1, 2, 3, 4, 0, 1, 2]]


@pytest.mark.skipif(not (SHIPPED_BUNDLE / "bundle.json").is_file(), reason="no shipped bundle")
def test_auto_points_on_the_shipped_bundle():
    bundle = load_bundle(SHIPPED_BUNDLE)
    chosen, _ = choose_points(bundle, "auto")
    # the RL point: `rl`, else the one validation picks (least validation compute within 0.5 pt of static)
    rl = [p for p in bundle.front if p.method == "rl"]
    val = lambda p: p.metrics.get("val_accuracy", p.metrics["accuracy"])  # noqa: E731
    if "rl" in {p.id for p in rl}:
        rl_id = "rl"
    else:
        near = [p for p in rl if val(p) >= val(bundle.point("static")) - 0.005]
        rl_id = min(near, key=lambda p: p.metrics["val_relative_compute"]).id
    floor = val(bundle.point("static")) - 0.05
    nsga = [p for p in bundle.front if p.method in ("nsga", "nsga-joint") and val(p) >= floor]
    leanest = min(nsga, key=lambda p: p.metrics["mean_layers"])
    assert [p.id for p in chosen] == [rl_id, leanest.id]
    assert leanest.metrics["mean_layers"] < bundle.point(rl_id).metrics["mean_layers"]
    everything, _ = choose_points(bundle, "all")
    assert len(everything) == len(bundle.front) - 1 and all(p.method != "static" for p in everything)
    with pytest.raises(KeyError, match="known points"):
        choose_points(bundle, f"{rl_id},no-such-point")
    with pytest.raises(ValueError, match="always measured"):
        choose_points(bundle, f"static,{rl_id}")
    last = everything[-1].id
    assert [p.id for p in choose_points(bundle, f"{rl_id}, {rl_id},{last}")[0]] == [rl_id, last]


def test_mean_layers_weights_each_batch_by_how_often_it_was_timed():
    class Fake:  # runs x[0] layers of 4 for its one row
        def __call__(self, x, policy):
            n = int(x.flatten()[0])
            return SimpleNamespace(executed=torch.tensor([[True] * n + [False] * (4 - n)]))

    cfg = Config("c", "point", "w", Fake(), lambda: None, 0)
    batches = [torch.full((1, 1, 1, 1), float(v)) for v in (0, 1, 2)]
    assert mean_layers(cfg, batches) == 1.0  # each batch once
    assert mean_layers(cfg, batches, 2) == 0.5  # batches 0, 1
    assert mean_layers(cfg, batches, 4) == 0.75  # batches 0, 1, 2, 0
    assert mean_layers(cfg, batches, 7) == pytest.approx((2 * 1 + 2 * 2) / 7)  # 0,1,2 x2, 0


def test_gates_on_runs_every_layer_even_where_every_gate_says_skip(tiny_gate_bundle):
    bundle = load_bundle(tiny_gate_bundle)
    configs = {c.id: c for c in build_configs(bundle, [bundle.point("rl")], torch.device("cpu"))}
    assert list(configs) == ["static", "gates-on", "rl"]
    on, rl = configs["gates-on"], configs["rl"]
    assert on.model is rl.model and on.gates_per_image == rl.model.depth
    with torch.no_grad():
        for g in on.model.agent.gates:
            g.weight.zero_()
            g.bias.fill_(-30.0)  # p = sigmoid(-30): every gate says skip at any positive threshold
    x = batches_of(torch.randn(6, 1, 16, 16), 3)
    with torch.inference_mode():
        assert mean_layers(rl, x) == 0.0
        assert mean_layers(on, x) == on.model.depth


# ---- one real run


def test_quick_run_on_the_tiny_gate_bundle(tiny_gate_bundle, tmp_path, capsys):
    out = tmp_path / "bench" / "model.json"
    md = tmp_path / "model.md"
    small = "--points rl,nsga-a --batch-sizes 1,8 --rounds 2 --min-seconds 0.01 --repeats 2 --limit 16"
    main(argv(f"bench model {small}", bundle=tiny_gate_bundle, out_json=out, out_md=md))
    report = json.loads(out.read_text())
    for key in (
        "command",
        "machine",
        "bundle",
        "device",
        "settings",
        "data",
        "method",
        "flops_per_image",
        "configs",
        "rows",
        "targets",
        "png",
    ):
        assert key in report, key
    assert report["device"] == "cpu" and report["machine"]["device"] == "cpu"
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(report["machine"])
    assert "profiler" in report["method"]["memory"]
    assert report["data"] == {"dataset": "synthetic", "split": "test", "images": 16}
    assert [c["id"] for c in report["configs"]] == ["static", "gates-on", "rl", "nsga-a"]

    cfg = load_bundle(tiny_gate_bundle).architecture
    rows = {(r["config"], r["batch_size"]): r for r in report["rows"]}
    assert len(rows) == 8
    for b in (1, 8):
        st, on, nsga = rows["static", b], rows["gates-on", b], rows["nsga-a", b]
        assert st["mean_layers"] == cfg.depth and st["ideal_speedup_flops"] == 1.0
        assert st["achieved_speedup"] == 1.0
        assert st["flops_per_image"] == forward_flops(cfg, cfg.depth).total
        assert on["mean_layers"] == cfg.depth  # threshold 0.0: every gate says run
        assert on["flops_per_image"] == st["flops_per_image"] + cfg.depth * gate_flops(cfg)
        assert on["overhead_vs_static"] is not None
        assert nsga["mean_layers"] <= 2.0  # genes remove layers 0 and 3
        assert nsga["ideal_speedup_flops"] > 1.5
        for r in (st, on, nsga, rows["rl", b]):
            assert r["images_per_s"] > 0 and len(r["images_per_s_rounds"]) == 2
            assert r["calls"] >= 2 * 2  # two rounds of >= 2 calls
            assert r["peak_memory_bytes"] > 0
    assert rows["static", 8]["peak_memory_bytes"] > rows["static", 1]["peak_memory_bytes"]

    targets = {t["metric"] + str(t["threshold"]): t for t in report["targets"]}
    assert len(targets) == 3
    assert targets["achieved_over_ideal_flops0.85"]["measured"] is False  # no batch >= 64 in this run
    batch1 = targets["achieved_over_ideal_flops0.6"]
    assert batch1["measured"] and {r["config"] for r in batch1["rows"]} == {"rl", "nsga-a"}

    assert (tmp_path / "bench" / "model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert text == render_markdown(report)
    assert "| 8 | nsga-a |" in text and "peak MiB (torch CPU allocator)" in text
    assert "not measured" in text and ("**reached**" in text or "**not reached**" in text)
    assert text in capsys.readouterr().out


# ---- an imported model beside transformers


def test_row_masks_run_exactly_k_layers_per_row_through_the_compaction_path(tiny_model):
    depth = tiny_model.depth
    [(name, k)] = parse_masks("1/2", depth)
    assert name == "mask-1/2" and k == round(depth / 2)
    policy = RowMasks(depth, k)
    masks = policy.masks(6)
    assert masks.shape == (6, depth) and masks.sum(1).tolist() == [k] * 6
    assert len({tuple(r.tolist()) for r in masks}) > 1  # rows differ: per-row skipping
    assert torch.equal(policy.masks(6), masks)  # the same masks for every forward of one batch size
    with torch.inference_mode():
        out = tiny_model(torch.randn(6, 1, 16, 16), policy)
    assert torch.equal(out.executed, masks)
    with pytest.raises(ValueError, match="fractions"):
        parse_masks("two thirds", depth)
    with pytest.raises(ValueError, match="expected 1"):
        parse_masks("1/100", depth)


def test_the_imported_model_targets_apply_where_transformers_was_timed():
    rows = [
        {**_row("transformers", "reference", 1), "ours_over_reference": 1.2},
        {**_row("transformers", "reference", 8), "ours_over_reference": 0.95},
        _row("mask-2/3", "mask", 1, eff=0.5),  # batch 1: no mask target
        _row("mask-2/3", "mask", 8, eff=0.93),
        _row("gates-on", "gates-on", 1, overhead=0.01),
        _row("gates-on", "gates-on", 8, overhead=0.02),
    ]
    ref, masks, gates = verdict(rows, "cpu")
    assert "transformers" in ref["name"] and ref["reached"] is False
    assert [r["batch_size"] for r in ref["rows"] if not r["reached"]] == [8]
    assert masks["reached"] is True and [r["batch_size"] for r in masks["rows"]] == [8]
    assert gates["reached"] is True and gates["threshold"] == 0.03
    rows[-1]["overhead_vs_static"] = 0.031
    assert verdict(rows, "cpu")[2]["reached"] is False


def test_quick_run_on_an_imported_model_beside_transformers(transformers, tmp_path):
    from skipvit.benchmarks.random_vit import write_random_vit

    hf = write_random_vit(tmp_path / "hf", "vit-tiny-16", classes=3)
    bundle = tmp_path / "bundle"
    main(argv("import hf", str(hf), out=bundle))
    out = tmp_path / "model.json"
    main(
        argv(
            "bench model --images random --masks 2/3,1/2 --unchunked --batch-sizes 1,2 --rounds 1 "
            "--min-seconds 0 --limit 2",
            bundle=bundle,
            transformers=hf,
            out_json=out,
        )
    )
    report = json.loads(out.read_text())
    ids = ["static", "gates-on", "static-unchunked", "mask-2/3", "mask-1/2", "transformers"]
    assert [c["id"] for c in report["configs"]] == ids
    assert report["settings"]["cpu_chunk_tokens"] == 2048
    assert report["data"] == {"dataset": "random", "split": None, "images": 2}
    rows = {(r["config"], r["batch_size"]): r for r in report["rows"]}
    for b in (1, 2):
        assert rows["mask-2/3", b]["mean_layers"] == 8 and rows["mask-1/2", b]["mean_layers"] == 6
        assert (
            rows["gates-on", b]["mean_layers"] == 12 and rows["gates-on", b]["overhead_vs_static"] is not None
        )
        assert rows["transformers", b]["ours_over_reference"] > 0
        assert rows["static-unchunked", b]["mean_layers"] == 12
    assert [t["name"].split()[0] for t in report["targets"]] == ["ours", "row", "gates-on"]
