"""A hostile bundle is refused before it costs anything: an architecture its weights do not hold
(checked on the safetensors headers, before any model is built), and every file bundle.json names
inside the bundle and covered by the manifest, dot-files included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from skipvit.model.bundle import BUNDLE_JSON, BundleError, load_bundle, write_manifest

REPO = Path(__file__).resolve().parents[2]
MAX_RSS_MB = 500

# Loads the bundle in a child process whose address space is capped, so that the code this test
# guards against cannot take the host's memory down with it (it fails with MemoryError instead).
CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from skipvit.model.bundle import BundleError, load_bundle
    try:
        bundle = load_bundle(sys.argv[1])
        bundle.build_model(bundle.point().weights)
    except BundleError as e:
        print("REFUSED", e)
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print("PEAK_KIB", hwm.split()[1])
    """
)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    return out


def rewrite(root: Path, edit) -> None:
    """Edit bundle.json and write a manifest that matches (the attacker's bundle is consistent)."""
    meta = json.loads((root / BUNDLE_JSON).read_text())
    edit(meta)
    (root / BUNDLE_JSON).write_text(json.dumps(meta))
    write_manifest(root)


def child_peak_rss_mb(root: Path) -> tuple[str, float]:
    """The child's output and its own peak RSS, VmHWM as it reads it at exit. Not ru_maxrss: Linux
    carries the parent's peak across fork and exec into it, and RUSAGE_CHILDREN is the largest of
    every child this test process ever waited for."""
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = run.stdout + run.stderr
    peak = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("PEAK_KIB ")]
    assert peak, out
    return out, int(peak[0]) / 1024  # VmHWM is in KiB


@pytest.mark.parametrize("arch", [{"dim": 8192}, {"depth": 100_000}], ids=["width-8192", "depth-100000"])
def test_an_architecture_the_weights_do_not_hold_is_refused_without_allocating(bundle_copy, arch):
    rewrite(bundle_copy, lambda meta: meta["architecture"].update(arch))
    out, peak_mb = child_peak_rss_mb(bundle_copy)
    assert "REFUSED" in out, out
    assert "does not describe these weights" in out
    assert peak_mb < MAX_RSS_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize(
    "arch, says",
    [
        ({"dim": 64, "heads": 2}, "has shape"),
        ({"depth": 3}, "implies 3 entries of blocks"),
        ({"num_classes": 7}, "head."),
        ({"shared_layers": True}, "implies 1 entries of blocks"),
    ],
)
def test_architecture_mismatch_is_named(bundle_copy, arch, says):
    rewrite(bundle_copy, lambda meta: meta["architecture"].update(arch))
    with pytest.raises(BundleError, match="does not describe these weights") as e:
        load_bundle(bundle_copy)
    assert says in str(e.value)


def test_an_unexpected_or_missing_tensor_is_refused(bundle_copy):
    from safetensors.torch import load_file, save_file

    path = bundle_copy / "weights" / "static.safetensors"
    state = load_file(path)
    save_file({**state, "extra.weight": state["head.bias"].clone()}, path)
    write_manifest(bundle_copy)
    with pytest.raises(BundleError, match=r"does not know, e\.g\. extra\.weight"):
        load_bundle(bundle_copy)
    del state["norm.weight"]
    save_file(state, path)
    write_manifest(bundle_copy)
    with pytest.raises(BundleError, match=r"lacks 1 tensors .* e\.g\. norm\.weight"):
        load_bundle(bundle_copy)


def test_a_dot_file_the_manifest_does_not_list_is_refused(bundle_copy):
    (bundle_copy / "weights" / ".hidden.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"does not list: weights/\.hidden\.safetensors"):
        load_bundle(bundle_copy)


def test_a_nested_manifest_json_is_not_exempt(bundle_copy):
    (bundle_copy / "weights" / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match=r"does not list: weights/manifest\.json"):
        load_bundle(bundle_copy)


def tampered_copy(root: Path, dest: Path) -> None:
    """Weights with every value changed (same names and shapes): what a tamperer serves."""
    from safetensors.torch import load_file, save_file

    state = load_file(root / "weights" / "static.safetensors")
    save_file({k: v + 1 for k, v in state.items()}, dest)


@pytest.mark.parametrize("where", ["hidden", "absolute", "dotdot", "symlink"])
def test_a_weight_set_outside_the_manifest_is_refused(bundle_copy, tmp_path, where):
    outside = tmp_path / "outside.safetensors"
    tampered_copy(bundle_copy, outside)
    if where == "hidden":
        # Written before the manifest, as the tamperer would: the old check skipped dot-files.
        tampered_copy(bundle_copy, bundle_copy / "weights" / ".t.safetensors")
        rel = "weights/.t.safetensors"
    elif where == "absolute":
        rel = str(outside)
    elif where == "dotdot":
        rel = "../outside.safetensors"
    else:
        (bundle_copy / "weights" / "link.safetensors").symlink_to(outside)
        rel = "weights/link.safetensors"
    meta = json.loads((bundle_copy / BUNDLE_JSON).read_text())
    meta["weight_sets"]["static"] = rel
    (bundle_copy / BUNDLE_JSON).write_text(json.dumps(meta))
    write_manifest(bundle_copy)  # the manifest is consistent; the path is what is wrong
    if where == "hidden":  # a manifest that lists everything but the dot-file, as the old writer made it
        manifest = json.loads((bundle_copy / "manifest.json").read_text())
        del manifest["sha256"][rel]
        (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"outside|inside the bundle|leads out|does not list"):
        load_bundle(bundle_copy)


def test_a_manifest_entry_outside_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("s")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["sha256"][str(outside)] = "0" * 64
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a path inside the bundle"):
        load_bundle(bundle_copy)


def test_a_weight_set_the_manifest_does_not_cover_is_refused(bundle_copy):
    # bundle.json names a file that is not there: no manifest covers it
    rewrite(bundle_copy, lambda meta: meta["weight_sets"].update(static="weights/gone.safetensors"))
    with pytest.raises(BundleError, match="manifest does not cover"):
        load_bundle(bundle_copy)
