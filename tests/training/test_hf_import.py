"""`skipvit import hf` / `export hf` against transformers itself: random-initialised tiny ViT and
DeiT classifiers, saved with save_pretrained, imported, and compared logit for logit (float32,
within 1e-4); the refusals, which need no transformers; and the export's round trip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skipvit.cli import main
from skipvit.model.bundle import BundleError, Point, load_bundle
from tests.cli_args import argv

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever fetched
TOL = 1e-4

# name -> (transformers class, config options, processor options)
CASES = {
    "vit-cls": ("ViTForImageClassification", {}, {}),
    "deit-teacher": (
        "DeiTForImageClassificationWithTeacher",
        {"hidden_size": 48, "num_attention_heads": 3, "num_hidden_layers": 3, "intermediate_size": 96},
        {},
    ),
    "deit": ("DeiTForImageClassification", {}, {}),
    # DeiT's processor: resize to 20 x 20 (bicubic), cut 16 x 16 from the middle
    "deit-resize-crop": (
        "DeiTForImageClassification",
        {},
        {
            "image_processor_type": "DeiTImageProcessor",
            "size": {"height": 20, "width": 20},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": 16, "width": 16},
        },
    ),
    "patch8-24px-grey": (
        "ViTForImageClassification",
        {
            "patch_size": 8,
            "image_size": 24,
            "num_channels": 1,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "hidden_act": "gelu_new",
            "layer_norm_eps": 1e-6,
        },
        {"image_mean": [0.45], "image_std": [0.22]},
    ),
    "no-qkv-bias": ("ViTForImageClassification", {"qkv_bias": False, "intermediate_size": 80}, {}),
    "1000-classes": (
        "ViTForImageClassification",
        {"num_labels": 1000},
        {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]},
    ),
}
BASE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 16,
    "patch_size": 4,
    "num_channels": 3,
    "num_labels": 5,
}


def save_hf(transformers, root: Path, case: str) -> Path:
    """A random-initialised model of ``case``, saved as save_pretrained saves it, with a processor."""
    cls_name, options, processor = CASES[case]
    opts = {**BASE, **options}
    n = opts.pop("num_labels")
    family = "DeiTConfig" if cls_name.startswith("DeiT") else "ViTConfig"
    config = getattr(transformers, family)(
        **opts, id2label={i: f"class {i}" for i in range(n)}, label2id={f"class {i}": i for i in range(n)}
    )
    torch.manual_seed(sum(map(ord, case)))
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # weights far from the init, so that a wrong mapping shows in the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(root)
    size, channels = opts["image_size"], opts["num_channels"]
    pre = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406][:channels],
        "image_std": [0.229, 0.224, 0.225][:channels],
        **processor,
    }
    (root / "preprocessor_config.json").write_text(json.dumps(pre))
    return root


@pytest.mark.parametrize("case", list(CASES))
def test_the_static_point_computes_what_transformers_computes(transformers, tmp_path, case):
    from skipvit.training.hf.reference import compare

    src = save_hf(transformers, tmp_path / "hf", case)
    main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    bundle = load_bundle(tmp_path / "b")
    config = json.loads((src / "config.json").read_text())
    assert bundle.dataset["classes"] == [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert bundle.architecture.distill_head == (case == "deit-teacher")
    result = compare(bundle, src, n=4)
    print(f"{case}: logits {result['logits_max_abs_diff']:.2e}, images {result['images_max_abs_diff']:.2e}")
    assert result["logits_max_abs_diff"] <= TOL
    assert result["images_max_abs_diff"] is not None and result["images_max_abs_diff"] <= TOL
    assert result["same_top1"] == 1.0


def test_check_prints_the_comparison(transformers, tmp_path, capsys):
    src = save_hf(transformers, tmp_path / "hf", "vit-cls")
    main(["import", "hf", str(src), "--out", str(tmp_path / "b"), "--check", "--check-n", "2"])
    out = capsys.readouterr().out
    assert "parity with transformers on 2 random inputs: max |logit difference|" in out
    assert "Parity with transformers" in (tmp_path / "b" / "REPORT.md").read_text()
    load_bundle(tmp_path / "b")  # the manifest covers the report written after the check


def test_the_server_answers_with_the_imported_labels_and_probabilities(transformers, tmp_path):
    from skipvit.service.engine import Engine

    src = save_hf(transformers, tmp_path / "hf", "deit-teacher")
    main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    engine = Engine(load_bundle(tmp_path / "b"), torch.device("cpu"))
    images = torch.randint(
        0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    processor = transformers.AutoImageProcessor.from_pretrained(str(src), local_files_only=True)
    pixels = processor(
        images=[i.numpy() for i in images], return_tensors="pt", input_data_format="channels_first"
    )
    hf = transformers.DeiTForImageClassificationWithTeacher.from_pretrained(str(src), local_files_only=True)
    with torch.no_grad():
        probs = hf(pixel_values=pixels.pixel_values).logits.softmax(-1)
    for row, p in zip(engine.predict(images, "static"), probs, strict=True):
        assert row.label == f"class {int(p.argmax())}"
        assert abs(row.probability - float(p.max())) <= TOL


# ---------------------------------------------------------------- refusals (no transformers needed)


def write_dir(
    root: Path, config: dict, pre: dict | None = None, weights: str | None = "model.safetensors"
) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    if pre is not None:
        (root / "preprocessor_config.json").write_text(json.dumps(pre))
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(root / weights))
    elif weights:
        (root / weights).write_bytes(b"not opened")
    return root


VIT = {
    "architectures": ["ViTForImageClassification"],
    "model_type": "vit",
    "id2label": {"0": "a", "1": "b"},
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "intermediate_size": 64,
    "image_size": 16,
    "patch_size": 4,
}
PRE = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": 16, "width": 16}}


@pytest.mark.parametrize(
    ("config", "pre", "weights", "message"),
    [
        (
            {**VIT, "architectures": ["SwinForImageClassification"], "model_type": "swin"},
            PRE,
            "model.safetensors",
            "SwinForImageClassification is not supported; Hint: supported are ViTFor",
        ),
        ({**VIT, "architectures": ["BeitForImageClassification"]}, PRE, "model.safetensors", "not supported"),
        (VIT, PRE, "pytorch_model.bin", "save_pretrained('"),
        (VIT, None, "model.safetensors", "no preprocessor_config.json"),
        ({**VIT, "patch_size": [4, 8]}, PRE, "model.safetensors", "not square"),
        ({**VIT, "hidden_act": "gelu_10"}, PRE, "model.safetensors", "hidden_act 'gelu_10' is not supported"),
        ({**VIT, "use_mask_token": True}, PRE, "model.safetensors", "mask token"),
        ({**VIT, "layer_scale_init_value": 0.1}, PRE, "model.safetensors", "layer scale"),
        ({**VIT, "id2label": {}}, PRE, "model.safetensors", "id2label"),
        (VIT, {**PRE, "image_mean": [0.5]}, "model.safetensors", "1/3 values for a model of 3 channels"),
        (VIT, PRE, "model.safetensors", "lacks vit.embeddings"),
    ],
)
def test_refusals_say_what_is_supported(tmp_path, capsys, config, pre, weights, message):
    src = write_dir(tmp_path / "hf", config, pre, weights)
    with pytest.raises(SystemExit):
        main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert message in err and ("Hint:" in err or "not square" in err), err
    assert not (tmp_path / "b").exists()


def test_a_preprocess_section_that_disagrees_with_the_dataset_is_refused(tmp_path, transformers):
    src = save_hf(transformers, tmp_path / "hf", "vit-cls")
    main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["dataset"]["mean"] = [0.0, 0.0, 0.0]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    from skipvit.model.bundle import write_manifest

    write_manifest(tmp_path / "b")
    with pytest.raises(BundleError, match="preprocess"):
        load_bundle(tmp_path / "b")


# ---------------------------------------------------------------- export


def test_export_computes_the_bundle_and_reimports_to_the_same_predictions(
    transformers, tiny_bundle, tmp_path
):
    from skipvit.training.hf.reference import compare

    out = tmp_path / "hf"
    main(argv("export hf --point static", bundle=tiny_bundle, out=out))
    bundle = load_bundle(tiny_bundle)
    result = compare(bundle, out, n=8)
    print(f"export: logits {result['logits_max_abs_diff']:.2e}, images {result['images_max_abs_diff']:.2e}")
    assert result["logits_max_abs_diff"] <= TOL and result["images_max_abs_diff"] <= TOL
    main(["import", "hf", str(out), "--out", str(tmp_path / "back")])
    back = load_bundle(tmp_path / "back")
    assert back.dataset["classes"] == bundle.dataset["classes"]
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, again = bundle.build_model("static")(x).logits, back.build_model("static")(x).logits
    assert torch.equal(ours.argmax(1), again.argmax(1))
    assert (ours - again).abs().max() <= TOL
    torch.testing.assert_close(torch.tensor(back.dataset["mean"]), torch.tensor(bundle.dataset["mean"]))


def test_an_imported_deit_exports_back_as_deit_with_teacher(transformers, tmp_path):
    from skipvit.training.hf.reference import compare

    src = save_hf(transformers, tmp_path / "hf", "deit-teacher")
    main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    main(argv("export hf", bundle=tmp_path / "b", out=tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    assert compare(load_bundle(tmp_path / "b"), tmp_path / "out", n=4)["logits_max_abs_diff"] <= TOL


def test_export_refuses_a_point_that_skips_layers(tiny_bundle, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    bundle = load_bundle(copy)
    bundle.upsert_points([Point("lac-a1", "lac", "static", {"alpha": 1.0}, {})])
    bundle.save()
    with pytest.raises(SystemExit):
        main(argv("export hf --point lac-a1", bundle=copy, out=tmp_path / "out"))
    assert "Hint: export a point that runs every layer" in capsys.readouterr().err


def test_transformers_is_imported_only_by_a_check():
    """Help, the import and export commands' modules, and the server never import transformers."""
    code = (
        "import sys\nfrom skipvit.cli import main\n"
        "for words in (['--help'], ['import', '--help'], ['import', 'hf', '--help'], ['export', 'hf', '--help']):\n"
        "    try:\n        main(words)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "import skipvit.service.app, skipvit.training.hf.import_hf, skipvit.training.hf.export_hf\n"
        "print('transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
    assert "{hf}" in done.stdout


def test_export_check_accuracy_reads_a_split_with_transformers_alone(
    transformers, tiny_bundle, tmp_path, capsys
):
    """``--check-accuracy test``: the bundle's test split classified by transformers alone (its
    own image processor on the raw uint8 images) scores what the bundle scores, image for image;
    the export imported back predicts the same on every image."""
    from skipvit.training.data import bundle_data
    from skipvit.training.hf.reference import accuracy_check

    out = tmp_path / "hf"
    main(argv("export hf --point static --check --check-accuracy test", bundle=tiny_bundle, out=out))
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("test split"))
    assert "same prediction on 100.00%" in line, line
    main(["import", "hf", str(out), "--out", str(tmp_path / "back")])
    data = bundle_data(load_bundle(tiny_bundle), None).split("test")
    again = accuracy_check(load_bundle(tmp_path / "back"), out, data)
    assert again["same_prediction"] == 1.0 and again["n"] == len(data)
    assert again["accuracy_bundle"] == again["accuracy_transformers"]
