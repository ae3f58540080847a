"""Bring your own ViT, end to end: a random-initialised transformers ViT saved with
save_pretrained, an image-folder dataset of its labels, and every method run on the imported
backbone (`import hf` -> `train exits` -> `search dyce` -> `search lac` -> `train rl --init-from`
-> `search nsga`), then the bundle served: `/pareto` lists the points, `/classify` answers with the
model's labels. Nothing is downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skipvit.cli import main
from skipvit.model.bundle import load_bundle
from skipvit.training.data import load_bundle_splits
from tests.cli_args import argv

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever fetched
LABELS = ["red", "green", "blue"]
SIZE = 16


def save_vit(transformers, root: Path) -> Path:
    """A tiny random-initialised ViT classifier of LABELS with a bicubic image processor."""
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=4,
        num_channels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(root)
    pre = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": SIZE, "width": SIZE},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (root / "preprocessor_config.json").write_text(json.dumps(pre))
    return root


def colour_image(k: int, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """Class ``k``: noise with channel ``k`` raised (uint8, size x size x 3)."""
    arr = rng.integers(0, 120, (size, size, 3))
    arr[..., k] += 120
    return arr.astype(np.uint8)


def write_folder(root: Path, counts=(("train", 24), ("val", 8), ("test", 8))) -> Path:
    """root/{train,val,test}/<label>/*.png, images larger than the model's (they are resized)."""
    rng = np.random.default_rng(0)
    for split, n in counts:
        for k, name in enumerate(LABELS):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(colour_image(k, rng)).save(d / f"{i}.png")
    return root


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_the_folder_dataset_reads_an_imported_bundles_labels_size_and_normalisation(transformers, tmp_path):
    src = save_vit(transformers, tmp_path / "hf")
    main(["import", "hf", str(src), "--out", str(tmp_path / "b")])
    bundle = load_bundle(tmp_path / "b")
    data = write_folder(tmp_path / "data", (("train", 3), ("val", 2), ("test", 2)))
    (data / "train" / "blue" / "0.png").unlink()  # classes keep the model's order, whatever the files
    splits = load_bundle_splits(bundle.dataset, data, resample="bicubic")
    assert list(splits.info.classes) == LABELS and splits.info.image_size == SIZE
    assert list(splits.info.mean) == bundle.dataset["mean"] and list(splits.info.std) == bundle.dataset["std"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 6, 6)  # val/ is the validation split
    assert splits.train.images.shape[1:] == (3, SIZE, SIZE)
    first = Image.open(data / "train" / "red" / "0.png").convert("RGB")
    want = np.asarray(first.resize((SIZE, SIZE), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert splits.train.images[0].numpy().tolist() == want.tolist()
    (data / "train" / "purple").mkdir()
    with pytest.raises(ValueError, match=r"purple.*Hint"):
        load_bundle_splits(bundle.dataset, data)
    with pytest.raises(ValueError, match="--data folder --data-dir"):
        load_bundle_splits(bundle.dataset, None)


@pytest.mark.slow
def test_every_method_runs_on_an_imported_vit_and_the_bundle_is_served(transformers, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from skipvit.service.app import create_app
    from skipvit.service.engine import BundleView
    from skipvit.service.settings import Settings
    from tests.service.helpers import files, wait_ready

    src = save_vit(transformers, tmp_path / "hf")
    data = write_folder(tmp_path / "data")
    b = tmp_path / "bundle"
    common = {"data": "folder", "data_dir": data, "device": "cpu"}
    steps = {
        "import": argv(f"import hf {src}", out=b),
        "exits": argv("train exits --epochs 1 --types linear", bundle=b, ckpt_dir=tmp_path / "c1", **common),
        "dyce": argv("search dyce --lambdas 3 --thresholds 5 --max-points 3", bundle=b, **common),
        "lac": argv("search lac --alphas 0.5 --modes per-example", bundle=b, **common),
        "rl": argv(
            "train rl --epochs 1 --batch-size 32", init_from=b, out=b, ckpt_dir=tmp_path / "c2", **common
        ),
        "nsga": argv(
            "search nsga --generations 2 --population 4 --val-batch 0",
            bundle=b,
            ckpt_dir=tmp_path / "c3",
            **common,
        ),
    }
    for step, line in steps.items():
        t0 = time.perf_counter()
        main(line)
        print(f"{step}: {time.perf_counter() - t0:.1f} s")

    bundle = load_bundle(b)
    imported = json.loads((src / "config.json").read_text())
    assert bundle.dataset["name"] == "imported" and bundle.dataset["classes"] == LABELS
    assert bundle.preprocess is not None and bundle.preprocess.resample == "bicubic"
    assert bundle.architecture.depth == imported["num_hidden_layers"]
    methods = {p.method for p in bundle.front}
    assert methods == {"static", "dyce", "lac", "rl", "nsga"}, methods
    assert BundleView(bundle).resample == "bicubic"

    # the commands that read a split take the same --data folder --data-dir
    where = argv("--split val", data="folder", data_dir=data, device="cpu")
    capsys.readouterr()
    main(["evaluate", "--bundle", str(b), "--point", "rl", "--json", *where])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["split"] == "val" and evaluated["n"] == 8 * len(LABELS)
    main(["compare", "--bundle", str(b), "--point", "rl", "--json", *where])
    assert json.loads(capsys.readouterr().out)["n"] == 8 * len(LABELS)
    main(
        [
            "analyze",
            "--bundle",
            str(b),
            "--point",
            "rl",
            "--data",
            "folder",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "an"),
        ]
    )
    assert (tmp_path / "an" / "analysis.json").is_file()

    app = create_app(Settings(bundle=b, device="cpu", admin_token="t" * 32))
    with TestClient(app) as client:
        wait_ready(client)
        pareto = client.get("/pareto").json()
        assert {p["id"] for p in pareto["points"]} == {p.id for p in bundle.front}
        rng = np.random.default_rng(1)
        blobs = [png(colour_image(k, rng)) for k in range(3)]  # 24 px: resized bicubic by the server
        for point in [p.id for p in bundle.front]:
            r = client.post(f"/classify?point={point}", files=files(*blobs))
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert len(results) == 3 and all(row["label"] in LABELS for row in results)
