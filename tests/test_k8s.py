"""Kubernetes manifests (deploy/k8s), checked offline: no cluster, no network.

- Rendered by ``tests.kustomize`` (kustomize's subset that the manifests use; no kustomize binary
  installs from PyPI or Debian's packages), and compared with ``kubectl kustomize`` where kubectl
  is installed. Rendered twice: as shipped, and with the documented bundle-volume patch.
- Every object validated against the Kubernetes OpenAPI schemas of every version from
  ``MIN_KUBERNETES`` to the newest that kubernetes-validate ships, in strict mode.
- checkov's Kubernetes checks (run from ``.venv-checkov``), every skip carrying its reason.
- Checked against what they run: the image (Dockerfile), the server's settings and routes, and
  the monitoring files (promtool, the dashboard, the metrics the service exports).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate  # dev extra
import pytest
import yaml  # dev extra (PyYAML)
from packaging.version import Version

from skipvit.service.settings import Settings
from tests import kustomize
from tests.test_deploy import (
    BUNDLE_IN_IMAGE,
    DOCKERFILE,
    PORT,
    REPO,
    exec_form,
    parse_dockerfile,
    split_flags,
    stages,
)
from tests.test_monitoring import (
    _PROMQL_RANGE,
    DASHBOARD_FILE,
    EXPORTED_METRICS,
    dashboard_panels,
    duration_seconds,
    load_dashboard,
    panel_exprs,
    promql_metric_names,
)

K8S = REPO / "deploy" / "k8s"
TOKEN_FILE = "admin-token.env"
SCRAPE_FILE = K8S / "monitoring" / "prometheus-scrape.yaml"
ADAPTER_FILE = K8S / "monitoring" / "prometheus-adapter.yaml"
DASHBOARD_COPY = K8S / "monitoring" / "skipvit.json"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
# The preStop `sleep` action is on by default from 1.30.
MIN_KUBERNETES = Version("1.30")
KUBERNETES_VERSIONS = sorted(
    {v for v in kubernetes_validate.utils.all_versions() if Version(v) >= MIN_KUBERNETES}, key=Version
)
TEST_TOKEN = "test-only-token-" + "0123456789abcdef"
MARGIN_S = 5  # what the grace period must leave beyond preStop and the drain's bounds

# --------------------------------------------------------------------------- rendering


def _copy(tmp: Path) -> Path:
    """deploy/k8s without its (private) token file, with a test token in its place."""
    root = tmp / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns(TOKEN_FILE))
    (root / TOKEN_FILE).write_text(f"admin-token={TEST_TOKEN}\n", encoding="utf-8")
    return root


def _enable_bundle_volume(root: Path) -> None:
    """Uncomment the `patches` block exactly as kustomization.yaml tells a reader to."""
    path = root / "kustomization.yaml"
    text = path.read_text(encoding="utf-8")
    block = re.search(r"^# patches:\n(?:^#   .*\n)+", text, re.M)
    assert block, "kustomization.yaml lost the commented `patches` block of the bundle-volume variant"
    uncommented = re.sub(r"^# ?", "", block.group(0), flags=re.M)
    path.write_text(text.replace(block.group(0), uncommented), encoding="utf-8")


@pytest.fixture(scope="module")
def k8s_dir(tmp_path_factory) -> Path:
    return _copy(tmp_path_factory.mktemp("shipped"))


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory) -> Path:
    root = _copy(tmp_path_factory.mktemp("volume"))
    _enable_bundle_volume(root)
    return root


@pytest.fixture(scope="module")
def objects(k8s_dir) -> list[dict]:
    return kustomize.build(k8s_dir)


@pytest.fixture(scope="module")
def volume_objects(volume_dir) -> list[dict]:
    return kustomize.build(volume_dir)


def _one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod(objects: list[dict]) -> dict:
    return _one(objects, "Deployment", "skipvit")["spec"]["template"]["spec"]


def _container(objects: list[dict]) -> dict:
    containers = _pod(objects)["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    return containers[0]


def _by_key(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _kubectl_kustomize(root: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is compared with kustomize where it is")
    version = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    kustomize_version = json.loads(version.stdout or "{}").get("kustomizeVersion", "v0")
    if Version(kustomize_version.lstrip("v")) < Version("5"):
        pytest.skip(f"kubectl's kustomize is {kustomize_version}; the manifests need 5 or newer")
    proc = subprocess.run(
        [kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {root}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.mark.parametrize("variant", ["shipped", "bundle-volume"])
def test_renderer_agrees_with_kubectl_kustomize(variant, k8s_dir, volume_dir, objects, volume_objects):
    root, ours = (k8s_dir, objects) if variant == "shipped" else (volume_dir, volume_objects)
    theirs = _by_key(_kubectl_kustomize(root))
    mine = _by_key(ours)
    assert sorted(mine) == sorted(theirs)
    for key, obj in theirs.items():
        assert mine[key] == obj, f"{key}: tests/kustomize.py renders it differently from kustomize"


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n", encoding="utf-8")
    with pytest.raises(kustomize.Unsupported, match="namePrefix"):
        kustomize.build(tmp_path)


# --------------------------------------------------------------------------- schemas and checkov


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(version, objects, volume_objects):
    errors = []
    for obj in [*objects, _one(volume_objects, "Deployment")]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {e.message}")
    assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


def test_strict_schema_check_rejects_an_unknown_field(objects):
    deployment = json.loads(json.dumps(_one(objects, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def _checkov_skips(objects: list[dict]) -> dict[tuple[str, str], str]:
    """(check id, checkov's resource id) -> the reason written in the object's annotation."""
    skips = {}
    for obj in objects:
        meta = obj["metadata"]
        resource = f"{obj['kind']}.{meta.get('namespace', 'default')}.{meta['name']}"
        for key, value in (meta.get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                skips[(check.strip(), resource)] = reason.strip()
    return skips


def test_every_checkov_skip_carries_a_reason(objects):
    skips = _checkov_skips(objects)
    for (check, resource), reason in skips.items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{resource}: {check!r} is not a checkov check id"
        assert len(reason.split()) >= 8, f"{resource}: skip of {check} needs a reason, not {reason!r}"


def test_checkov_passes_its_kubernetes_checks(objects, volume_objects, tmp_path):
    assert CHECKOV.is_file(), (
        f"{CHECKOV.relative_to(REPO)} is missing; Hint: `make test` makes it (constraints-checkov.txt)"
    )
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "shipped.yaml").write_text(yaml.safe_dump_all(objects), encoding="utf-8")
    (scan / "bundle-volume.yaml").write_text(
        yaml.safe_dump(_one(volume_objects, "Deployment")), encoding="utf-8"
    )
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(scan), "--framework", "kubernetes", "--skip-download", "-o", "json"],
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path), "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    results = report["results"]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed_checks"]]
    assert not failed, "checkov:\n" + "\n".join(failed)
    assert report["summary"]["passed"] >= 50, report["summary"]  # it did run the Kubernetes checks
    skipped = {(c["check_id"], c["resource"]) for c in results["skipped_checks"]}
    assert skipped == set(_checkov_skips(objects)), "checkov skipped other checks than the annotations name"


# --------------------------------------------------------------------------- the image and the server


@pytest.fixture(scope="module")
def final_stage() -> list[tuple[str, str]]:
    return stages(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")))[-1]


def _flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def _image_env(final_stage) -> dict[str, str]:
    env = {}
    for keyword, args in final_stage:
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))
    return env


def _image_cmd(final_stage) -> list[str]:
    return exec_form([args for kw, args in final_stage if kw == "CMD"][-1])


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``2Gi``) as a number."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units[unit]


def _env(objects: list[dict]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (downward API, Secret references)."""
    container = _container(objects)
    env = {}
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var["value"]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref.get("containerName", container["name"]) == container["name"], ref
            kind, _, resource = ref["resource"].partition(".")
            amount = _quantity(container["resources"][kind][resource])
            env[var["name"]] = str(math.ceil(amount / _quantity(ref.get("divisor", "1"))))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = _one(objects, "Secret", ref["name"])
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        else:
            pytest.fail(f"{var['name']}: no resolver for {sorted(source)}")
    return env


def test_deployment_runs_the_image_as_built(objects, final_stage):
    container, pod = _container(objects), _pod(objects)
    assert "command" not in container and "args" not in container, "the image's CMD is the contract"
    cmd = _image_cmd(final_stage)
    assert cmd[:2] == ["skipvit", "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    exposed = " ".join(args for kw, args in final_stage if kw == "EXPOSE").split()
    assert ports == {"http": PORT} and int(_flag(cmd, "--port")) == PORT and str(PORT) in exposed
    assert _flag(cmd, "--host") == "0.0.0.0"
    assert _flag(cmd, "--bundle") == BUNDLE_IN_IMAGE
    copies = [split_flags(args)[1].split()[-1] for kw, args in final_stage if kw == "COPY"]
    assert BUNDLE_IN_IMAGE in copies, "the image does not carry the bundle its CMD serves"
    # The CMD's flags win over these variables: set in the manifest, they would be ignored.
    overridden = {"SKIPVIT_BUNDLE", "SKIPVIT_HOST", "SKIPVIT_PORT"} & set(_env(objects))
    assert not overridden, f"{overridden} are overridden by the image's CMD flags"
    user, _, group = [args for kw, args in final_stage if kw == "USER"][-1].partition(":")
    for context in (pod["securityContext"], container["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group or user))


def test_probes_hit_routes_the_app_serves(objects, final_stage):
    from skipvit.service.routes import router

    served = {route.path for route in router.routes if "GET" in getattr(route, "methods", ())}
    container = _container(objects)
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for kind, probe in probes.items():
        assert probe["port"] == "http" and probe["path"] in served, f"{kind}: {probe}"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/livez"
    healthcheck = [args for kw, args in final_stage if kw == "HEALTHCHECK"][-1]
    assert f":{PORT}/livez'" in healthcheck, "the image's HEALTHCHECK and the liveness probe differ"


def test_every_skipvit_variable_is_a_setting(objects, volume_objects):
    settings = {f"SKIPVIT_{name.upper()}" for name in Settings.model_fields}
    for variant in (objects, volume_objects):
        names = {var["name"] for var in _container(variant).get("env", [])}
        unknown = {n for n in names if n.startswith("SKIPVIT_")} - settings
        assert not unknown, f"no setting reads {sorted(unknown)} (service/settings.py)"


def test_settings_accept_the_manifest_and_size_the_engine_to_the_cpu_limit(objects, final_stage, monkeypatch):
    from skipvit.service.worker import MAX_AUTO_WORKERS, layout

    for name in list(os.environ):
        if name.startswith("SKIPVIT_"):
            monkeypatch.delenv(name)
    for name, value in _env(objects).items():
        monkeypatch.setenv(name, value)
    cmd = _image_cmd(final_stage)  # what `skipvit serve` passes on to Settings
    settings = Settings(
        bundle=_flag(cmd, "--bundle"), host=_flag(cmd, "--host"), port=int(_flag(cmd, "--port"))
    )
    assert (settings.device, settings.engine) == ("cpu", "process")
    assert settings.admin_token.get_secret_value() == TEST_TOKEN

    resources = _container(objects)["resources"]
    cpu = _quantity(resources["limits"]["cpu"])
    assert resources["requests"] == resources["limits"], "requests == limits: Guaranteed QoS"
    assert cpu == int(cpu) and 1 <= cpu <= MAX_AUTO_WORKERS, f"CPU limit {cpu}: whole cores, 1 to 4"
    workers, threads = layout(settings.device, settings.engine_workers, settings.torch_threads)
    assert (workers, threads) == (int(cpu), 1), "one engine process per core of the limit, one thread each"


def test_service_links_are_off(objects, monkeypatch):
    # For the Service named `skipvit`, the kubelet would inject SKIPVIT_PORT=tcp://<ip>:8000 (and
    # SKIPVIT_SERVICE_HOST, ...): the server's own prefix, and no port number.
    assert _one(objects, "Service", "skipvit")
    assert _pod(objects)["enableServiceLinks"] is False
    monkeypatch.setenv("SKIPVIT_PORT", "tcp://10.0.0.1:8000")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_grace_period_outlasts_prestop_and_drain(objects):
    pod, container = _pod(objects), _container(objects)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(
        _env(objects).get("SKIPVIT_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default)
    )
    grace = pod["terminationGracePeriodSeconds"]
    # service/lifecycle.py: admitted requests get `drain` seconds, and a batch still stuck in the
    # engine after that gets as long again.
    assert pre_stop + 2 * drain + MARGIN_S < grace, (pre_stop, drain, grace)
    stated = re.search(
        r"preStop (\d+) s \+ drain (\d+) s \+ stuck engine (\d+) s \+ margin (\d+) s = (\d+) s < (\d+) s",
        (K8S / "deployment.yaml").read_text(encoding="utf-8"),
    )
    assert stated, "deployment.yaml lost the comment with the grace period's arithmetic"
    numbers = [int(n) for n in stated.groups()]
    assert numbers == [pre_stop, drain, drain, MARGIN_S, pre_stop + 2 * drain + MARGIN_S, grace], numbers


def test_pod_meets_the_restricted_security_profile(objects, final_stage):
    pod, container = _pod(objects), _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"], "a read-only root fs needs /tmp writable"
    # Where the image writes: HOME (the generated admin token's default place) and the caches.
    for name in ("HOME", "XDG_CACHE_HOME"):
        path = _image_env(final_stage)[name]
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{name}={path}"
    namespace = _one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --------------------------------------------------------------------------- services, budget, scaling


def test_services_select_the_pods_on_the_http_port(objects):
    template_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = _one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    for name in ("skipvit", "skipvit-peers"):
        spec = _one(objects, "Service", name)["spec"]
        assert spec["selector"] == selector, name
        assert spec["ports"] == [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]
    assert _one(objects, "Service", "skipvit")["spec"]["type"] == "ClusterIP"
    peers = _one(objects, "Service", "skipvit-peers")["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is False
    assert _env(objects)["SKIPVIT_FLEET_PEERS"] == f"skipvit-peers:{PORT}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        obj = _one(objects, kind)
        chosen = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
        assert chosen["matchLabels"] == selector, kind
    policy = _one(objects, "NetworkPolicy")["spec"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]


def test_every_object_carries_the_app_labels(objects):
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "skipvit", obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "skipvit", obj["metadata"]["name"]


def test_disruption_budget_and_replica_floor(objects):
    assert _one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    hpa = _one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2, "with maxUnavailable 1, two replicas keep one serving"
    assert "replicas" not in _one(objects, "Deployment")["spec"], "the autoscaler owns the replica count"
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "skipvit"}


def _adapter_metrics() -> dict[str, dict]:
    """The custom metrics prometheus-adapter serves, by name, with their rules."""
    served = {}
    for rule in yaml.safe_load(ADAPTER_FILE.read_text(encoding="utf-8"))["rules"]:
        (series,) = promql_metric_names(rule["seriesQuery"])
        assert series in EXPORTED_METRICS, f"the adapter reads {series}, which the service does not export"
        matches = re.compile(rule["name"]["matches"])
        # The adapter's default: the first group if the pattern has one, else the whole match.
        as_ = rule["name"].get("as") or ("$1" if matches.groups else "$0")
        served[matches.sub(re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", as_), series)] = rule
    return served


def test_autoscaler_reads_what_the_adapter_serves(objects):
    served = _adapter_metrics()
    metrics = _one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics and all(m["type"] == "Pods" for m in metrics), "scale on serving signals, not CPU"
    for metric in metrics:
        name = metric["pods"]["metric"]["name"]
        assert name in served, f"the HPA reads {name}; the adapter serves {sorted(served)}"
        overrides = served[name]["resources"]["overrides"]
        assert {overrides[label]["resource"] for label in ("namespace", "pod")} == {"namespace", "pod"}


def test_queue_target_sits_below_the_batch_ceiling(objects):
    env = _env(objects)
    max_batch = int(env.get("SKIPVIT_MAX_BATCH_SIZE", Settings.model_fields["max_batch_size"].default))
    (metric,) = _one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "skipvit_queue_depth_1m"
    target = _quantity(metric["pods"]["target"]["averageValue"])
    # hpa.yaml: full batches average max_batch / 2 in the queue; the target is a quarter below.
    assert target == 0.75 * max_batch / 2, f"re-derive hpa.yaml's target for max_batch_size {max_batch}"
    behavior = _one(objects, "HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120, "the queue empties whenever load dips"


# --------------------------------------------------------------------------- monitoring


def _relabel(labels: dict[str, str], configs: list[dict]) -> dict[str, str] | None:
    """Prometheus relabelling (keep, drop, replace) of one target; None when it is dropped."""
    labels = dict(labels)
    for config in configs:
        value = config.get("separator", ";").join(labels.get(s, "") for s in config.get("source_labels", []))
        match = re.fullmatch(config.get("regex", "(.*)"), value)
        action = config.get("action", "replace")
        if action in ("keep", "drop") and bool(match) != (action == "keep"):
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", config.get("replacement", "$1"))
            labels[config["target_label"]] = match.expand(replacement)
    return labels


def _scrape_job() -> dict:
    (job,) = yaml.safe_load(SCRAPE_FILE.read_text(encoding="utf-8"))["scrape_configs"]
    return job


def test_scrape_job_keeps_the_http_port_of_the_pods_and_labels_them(objects):
    job = _scrape_job()
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    assert discovery["namespaces"]["names"] == [_one(objects, "Namespace")["metadata"]["name"]]
    pod_labels = _one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]

    def target(labels: dict[str, str], port_name: str) -> dict[str, str]:
        meta = {
            f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in labels.items()
        }
        return {
            **meta,
            "__address__": "10.0.0.7:8000",
            "__meta_kubernetes_namespace": "skipvit",
            "__meta_kubernetes_pod_name": "skipvit-7d9c-x2x4q",
            "__meta_kubernetes_pod_container_port_name": port_name,
        }

    port_name = _container(objects)["ports"][0]["name"]
    kept = _relabel(target(pod_labels, port_name), job["relabel_configs"])
    assert kept is not None, "the job drops the skipvit pods"
    assert (kept["namespace"], kept["pod"]) == ("skipvit", "skipvit-7d9c-x2x4q"), "the adapter maps these"
    other_app = {**pod_labels, "app.kubernetes.io/name": "other"}
    assert _relabel(target(other_app, port_name), job["relabel_configs"]) is None
    assert _relabel(target(pod_labels, "debug"), job["relabel_configs"]) is None


def test_windows_hold_four_scrapes(objects):
    interval = duration_seconds(_scrape_job()["scrape_interval"])
    exprs = [e for p in dashboard_panels(load_dashboard()) for e in panel_exprs(p)]
    exprs += [rule["metricsQuery"] for rule in _adapter_metrics().values()]
    windows = {w for e in exprs for w in _PROMQL_RANGE.findall(e)}
    short = sorted(w for w in windows if duration_seconds(w) < 4 * interval)
    assert not short, f"windows {short} hold fewer than 4 scrapes at {interval:g} s"


def _adapter_query(rule: dict) -> str:
    """The adapter's query as it sends it for one pod."""
    query = rule["metricsQuery"].replace("<<.Series>>", next(iter(promql_metric_names(rule["seriesQuery"]))))
    query = query.replace("<<.LabelMatchers>>", 'namespace="skipvit",pod=~"skipvit-a|skipvit-b"')
    return query.replace("<<.GroupBy>>", "pod")


def test_promtool_accepts_the_scrape_job_and_the_adapter_queries(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing; Hint: run `make test`, which installs the Debian package prometheus"
    )

    def check(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [promtool, "check", *args], capture_output=True, text=True, timeout=60, check=False
        )

    proc = check("config", "--syntax-only", str(SCRAPE_FILE))
    if "kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check the rest of the job with
        # a static target in its place (the discovery block is checked by the test above).
        config = yaml.safe_load(SCRAPE_FILE.read_text(encoding="utf-8"))
        for job in config["scrape_configs"]:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": [f"skipvit:{PORT}"]}]
        stand_in = tmp_path / "scrape.yaml"
        stand_in.write_text(yaml.safe_dump(config), encoding="utf-8")
        proc = check("config", "--syntax-only", str(stand_in))
    assert proc.returncode == 0, f"promtool check config:\n{proc.stdout}\n{proc.stderr}"

    rules = [
        {"record": f"adapter:{name}", "expr": _adapter_query(r)} for name, r in _adapter_metrics().items()
    ]
    rules_file = tmp_path / "adapter.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}), encoding="utf-8")
    proc = check("rules", str(rules_file))
    assert proc.returncode == 0, f"promtool check rules (adapter queries):\n{proc.stdout}\n{proc.stderr}"


def test_dashboard_copy_is_identical():
    assert DASHBOARD_COPY.read_bytes() == DASHBOARD_FILE.read_bytes(), (
        f"{DASHBOARD_COPY.relative_to(REPO)} differs from {DASHBOARD_FILE.relative_to(REPO)}; "
        f"Hint: cp {DASHBOARD_FILE.relative_to(REPO)} {DASHBOARD_COPY.relative_to(REPO)}"
    )


def test_monitoring_config_maps(objects):
    dashboard = _one(objects, "ConfigMap", "skipvit-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"skipvit.json": DASHBOARD_FILE.read_text(encoding="utf-8")}
    assert _one(objects, "ConfigMap", "skipvit-prometheus-scrape")["data"] == {
        SCRAPE_FILE.name: SCRAPE_FILE.read_text(encoding="utf-8")
    }
    assert _one(objects, "ConfigMap", "skipvit-prometheus-adapter")["data"] == {
        ADAPTER_FILE.name: ADAPTER_FILE.read_text(encoding="utf-8")
    }


# --------------------------------------------------------------------------- the token, the image tag, the variant


def test_no_secret_is_committed():
    spec = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    for path in K8S.rglob("*.yaml"):
        docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
        kinds = {doc.get("kind") for doc in docs if isinstance(doc, dict)}
        assert "Secret" not in kinds, f"{path.relative_to(REPO)} holds a Secret"
    (generator,) = spec["secretGenerator"]
    assert set(generator) == {"name", "envs"}, "the token comes from a file, never a literal"
    for env_file in generator["envs"]:
        rel = (K8S / env_file).relative_to(REPO).as_posix()
        ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", rel], check=False, timeout=30)
        assert ignored.returncode == 0, f"{rel} must be in .gitignore"
        tracked = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--error-unmatch", rel],
            capture_output=True,
            check=False,
            timeout=30,
        )
        assert tracked.returncode != 0, f"{rel} is committed"
        assert re.search(rf"^k8s-token: {re.escape(rel)}$", (REPO / "Makefile").read_text(), re.M), (
            "`make k8s-token` must write the file the kustomization reads"
        )


def test_image_tag_is_the_package_version(objects):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _container(objects)["image"] == f"skipvit:{version}"


def test_bundle_volume_variant(objects, volume_objects, final_stage):
    container = _container(volume_objects)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod(volume_objects)["volumes"]}
    (name,) = set(mounts) - {m["name"] for m in _container(objects)["volumeMounts"]}
    assert mounts[name]["readOnly"] is True and volumes[name]["persistentVolumeClaim"]["readOnly"] is True
    command = container["command"]
    assert command[:2] == ["skipvit", "serve"] and _flag(command, "--bundle") == mounts[name]["mountPath"]
    image_cmd = _image_cmd(final_stage)
    for flag in ("--host", "--port"):
        assert _flag(command, flag) == _flag(image_cmd, flag), flag
    # Nothing else differs from the shipped deployment.
    shipped = json.loads(json.dumps(_one(objects, "Deployment")))
    variant = json.loads(json.dumps(_one(volume_objects, "Deployment")))
    for doc in (shipped, variant):
        pod = doc["spec"]["template"]["spec"]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != name]
        for c in pod["containers"]:
            c.pop("command", None)
            c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != name]
    assert shipped == variant
