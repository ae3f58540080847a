"""A small ``kustomize build`` for the subset of kustomize that deploy/k8s uses, so that the tests
render the manifests with no kustomize binary (none installs from PyPI or Debian's packages).

Supported, with kustomize's behaviour: ``resources`` (files inside the root, or directories
holding a kustomization), ``namespace`` (sets every namespaced object's namespace and renames a
Namespace object), ``labels`` (metadata labels, and pod templates with ``includeTemplates``),
``images`` (``newName``, ``newTag``, ``digest``), ``configMapGenerator`` (``files``),
``secretGenerator`` (``envs``), the ``disableNameSuffixHash`` and ``labels`` options, the name
hash kustomize appends to generated objects (and the references to them in pod specs), and
``patches`` holding JSON 6902 operations (add, replace, remove) with a kind/name target.
Anything else raises ``Unsupported``, so the manifests cannot quietly outgrow the renderer.
tests/test_k8s.py compares the output with ``kubectl kustomize`` where one is installed.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "labels",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
CLUSTER_SCOPED = {"Namespace"}
NAMESPACED = {
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PersistentVolumeClaim",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def build(root: Path) -> list[dict]:
    """The objects ``kustomize build root`` would print (in no particular order)."""
    root = root.resolve()
    spec = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8")) or {}
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise Unsupported(f"{root}: kustomization fields {sorted(unknown)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = (root / entry).resolve()
        if path.is_dir():
            objects += build(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(_read_inside(root, entry)) if doc]
    renamed: dict[tuple[str, str], str] = {}
    for kind, entries in (
        ("ConfigMap", spec.get("configMapGenerator", [])),
        ("Secret", spec.get("secretGenerator", [])),
    ):
        for entry in entries:
            obj = _generate(root, kind, entry)
            if not (entry.get("options") or {}).get("disableNameSuffixHash"):
                hashed = f"{obj['metadata']['name']}-{_name_hash(obj)}"
                renamed[(kind, obj["metadata"]["name"])] = hashed
                obj["metadata"]["name"] = hashed
            objects.append(obj)
    for patch in spec.get("patches", []):
        _patch(root, objects, patch)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for group in spec.get("labels", []):
        _add_labels(objects, group)
    for image in spec.get("images", []):
        _set_image(objects, image)
    if renamed:
        for obj in objects:
            _rename_references(obj, renamed)
    return objects


def _read_inside(root: Path, rel: str) -> str:
    """A file under ``root``: kustomize's load restrictor refuses any other."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise Unsupported(f"{rel} is outside {root} (kustomize refuses it)")
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- generators


def _generate(root: Path, kind: str, entry: dict) -> dict:
    known = {"name", "files", "envs", "options"}
    options = entry.get("options") or {}
    if set(entry) - known or set(options) - {"disableNameSuffixHash", "labels"}:
        raise Unsupported(f"{kind} generator fields {sorted(set(entry) - known)} / options {sorted(options)}")
    data: dict[str, str] = {}
    for item in entry.get("files", []):
        key, _, rel = item.rpartition("=")
        data[key or Path(rel).name] = _read_inside(root, rel)
    for rel in entry.get("envs", []):
        for line in _read_inside(root, rel).splitlines():
            line = line.lstrip()
            if line and not line.startswith("#"):
                key, sep, value = line.partition("=")
                if not sep:
                    raise Unsupported(f"{rel}: {line!r} is not KEY=VALUE")
                data[key] = value
    metadata: dict[str, Any] = {"name": entry["name"]}
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _go_json(value: Any) -> str:
    """``json.Marshal`` of Go: sorted keys, no spaces, ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _name_hash(obj: dict) -> str:
    """kustomize's suffix: the first ten hex digits of a SHA-256 over kind, type and data, with
    the vowels and the digits 0, 1, 3 swapped for letters so that the suffix spells no words."""
    encoded: dict[str, Any] = {"kind": obj["kind"], "name": "", "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        encoded["type"] = obj["type"]
    digest = hashlib.sha256(_go_json(encoded).encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


# --------------------------------------------------------------------------- transformers


def _set_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        elif obj["kind"] in NAMESPACED:
            obj["metadata"]["namespace"] = namespace
        elif obj["kind"] not in CLUSTER_SCOPED:
            raise Unsupported(f"namespace of a {obj['kind']}")


def _add_labels(objects: list[dict], group: dict) -> None:
    if set(group) - {"pairs", "includeSelectors", "includeTemplates"} or group.get("includeSelectors"):
        raise Unsupported(f"labels entry {group}")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(group["pairs"])
        if group.get("includeTemplates") and obj["kind"] in WORKLOADS:
            template = obj["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(group["pairs"])


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] not in WORKLOADS:
        return []
    pod = obj["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod.get("containers", [])


def _set_image(objects: list[dict], image: dict) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"images entry {image}")
    for obj in objects:
        for container in _containers(obj):
            ref = container["image"]
            name = ref.split("@", 1)[0]
            if ":" in name.rsplit("/", 1)[-1]:
                name = name.rsplit(":", 1)[0]
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{new}:{image['newTag']}"
            else:
                container["image"] = new + ref[len(name) :]


def _rename_references(obj: dict, renamed: dict[tuple[str, str], str]) -> None:
    """Point a pod template's env, envFrom and volumes at the generated objects' hashed names."""
    if obj["kind"] not in WORKLOADS:
        return

    def fix(ref: dict, kind: str, field: str = "name") -> None:
        if ref is not None and (kind, ref.get(field)) in renamed:
            ref[field] = renamed[(kind, ref[field])]

    for container in _containers(obj):
        for env in container.get("env", []):
            source = env.get("valueFrom") or {}
            fix(source.get("secretKeyRef"), "Secret")
            fix(source.get("configMapKeyRef"), "ConfigMap")
        for source in container.get("envFrom", []):
            fix(source.get("secretRef"), "Secret")
            fix(source.get("configMapRef"), "ConfigMap")
    for volume in obj["spec"]["template"]["spec"].get("volumes", []):
        fix(volume.get("secret"), "Secret", "secretName")
        fix(volume.get("configMap"), "ConfigMap")


# --------------------------------------------------------------------------- patches


def _patch(root: Path, objects: list[dict], patch: dict) -> None:
    if set(patch) - {"path", "patch", "target"} or set(patch.get("target", {})) - {"kind", "name"}:
        raise Unsupported(f"patch {patch}")
    text = _read_inside(root, patch["path"]) if "path" in patch else patch["patch"]
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise Unsupported("only JSON 6902 patches (a list of operations)")
    target = patch["target"]
    matched = [
        o
        for o in objects
        if o["kind"] == target["kind"] and o["metadata"]["name"] == target.get("name", o["metadata"]["name"])
    ]
    if not matched:
        raise Unsupported(f"patch target {target} matches nothing")
    for obj in matched:
        for op in operations:
            _apply(obj, op)


def _apply(doc: dict, op: dict) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    value = copy.deepcopy(op.get("value"))
    if op["op"] == "add":
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value
    elif op["op"] == "replace":
        if isinstance(node, list):
            node[int(last)] = value
        else:
            if last not in node:
                raise KeyError(f"replace: no {op['path']}")
            node[last] = value
    elif op["op"] == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise Unsupported(f"patch operation {op['op']}")
