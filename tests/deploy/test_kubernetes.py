"""Ring 1: deploy/kubernetes/ validated offline, as `kubectl apply -f deploy/kubernetes/` would send it.

Built-in kinds go through kubernetes-validate (Kubernetes' own OpenAPI schemas, bundled in the
package, strict: unknown fields are errors); custom resources through their CRD's schema with
jsonschema and their CEL rules with cel-python. Then the objects are checked against each other,
against the image (Dockerfile) and against the server's own routes and settings.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app import config as app_config
from app.config import Settings
from tests.deploy.manifests import CRDS, KUBE, cel_holds, load_crds, load_manifests, pod_template_matches, \
    settings_vars, validate_custom_resource
from tests.docker.dockerfile_model import load as load_dockerfile

# Oldest Kubernetes these manifests are meant for (the preStop sleep action is on by default from
# 1.30) and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
OBJECTS = load_manifests()
CUSTOM_GROUPS = {"inference.networking.k8s.io", "llm-d.ai", "gateway.networking.k8s.io"}


def _group(obj: dict) -> str:
    return obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""


def _one(kind: str, name: str) -> dict:
    found = [o for _, o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def crds() -> dict:
    return load_crds()


@pytest.fixture(scope="module")
def server_pod() -> dict:
    return _one("Deployment", "llm-eval")["spec"]["template"]


@pytest.fixture(scope="module")
def container(server_pod) -> dict:
    (c,) = server_pod["spec"]["containers"]
    return c


def test_the_folder_holds_what_the_readme_promises():
    kinds = sorted({o["kind"] for _, o in OBJECTS})
    assert kinds == ["ConfigMap", "Deployment", "HTTPRoute", "HorizontalPodAutoscaler", "InferenceObjective",
                     "InferencePool", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
    for name, obj in OBJECTS:
        assert "namespace" not in obj["metadata"], f"{name}: {obj['kind']} pins a namespace; apply -n decides"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), obj["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name, obj", [(n, o) for n, o in OBJECTS if _group(o) not in CUSTOM_GROUPS],
                         ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_builtin_objects_validate_against_kubernetes_schemas(name, obj, version):
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name, obj", [(n, o) for n, o in OBJECTS if _group(o) in CUSTOM_GROUPS],
                         ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}")
def test_custom_resources_validate_against_their_crds(name, obj, crds):
    validate_custom_resource(obj, crds)


def _broken(kind: str, name: str, change) -> dict:
    obj = copy.deepcopy(_one(kind, name))
    change(obj)
    return obj


@pytest.mark.parametrize("obj, error", [
    (_broken("InferencePool", "llm-eval", lambda o: o["spec"].pop("targetPorts")), "'targetPorts' is a required"),
    (_broken("InferencePool", "llm-eval", lambda o: o["spec"].update(targetPort=80)), "Additional properties"),
    (_broken("InferencePool", "llm-eval", lambda o: o["spec"]["targetPorts"].append({"number": 80})), "p1.number==p2.number"),
    (_broken("InferencePool", "llm-eval", lambda o: o["spec"]["endpointPickerRef"].pop("port")), "has(self.port)"),
    (_broken("InferenceObjective", "interactive", lambda o: o["spec"].update(priority="high")), "is not of type 'integer'"),
    (_broken("HTTPRoute", "llm-eval", lambda o: o["spec"]["rules"][0]["matches"][0]["path"].update(value="v1")),
     "self.value.startsWith('/')"),
])
def test_the_crd_checks_can_fail(obj, error, crds):
    with pytest.raises((AssertionError, jsonschema.ValidationError), match=re.escape(error)):
        validate_custom_resource(obj, crds)


def test_the_kubernetes_checks_can_fail():
    bad = _broken("Deployment", "llm-eval", lambda o: o["spec"].update(replica=2))
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)
    assert cel_holds("self.x > 1", {"x": 2}) and not cel_holds("self.x > 1", {"x": 1})


def test_crd_copies_are_the_versions_the_readme_names():
    readme = (CRDS / "README.md").read_text()
    rows = re.findall(r"^\| `(\S+\.yaml)` \| (\S+) \| `([0-9a-f]{40})` \| (\S+) \| `([0-9a-f]{64})` \|$", readme, re.M)
    assert {r[0] for r in rows} == {p.name for p in CRDS.glob("*.yaml")}, "every CRD copy has a row, and only they"
    for file, repo, commit, tag, sha in rows:
        text = (CRDS / file).read_bytes()
        assert hashlib.sha256(text).hexdigest() == sha, f"{file} changed since it was copied from {repo}@{tag}"
        annotations = yaml.safe_load(text)["metadata"]["annotations"]
        bundle = [v for k, v in annotations.items() if k.endswith("/bundle-version")]
        assert bundle in ([tag], ["main-dev"]), f"{file}: bundle-version {bundle} is not {tag}"


# ---- the objects agree with each other ----

def test_services_pdb_and_pool_select_the_server_pods(server_pod):
    labels = server_pod["metadata"]["labels"]
    assert pod_template_matches(_one("Deployment", "llm-eval")["spec"]["selector"]["matchLabels"], labels)
    assert pod_template_matches(_one("Service", "llm-eval")["spec"]["selector"], labels)
    assert pod_template_matches(_one("PodDisruptionBudget", "llm-eval")["spec"]["selector"]["matchLabels"], labels)
    assert pod_template_matches(_one("InferencePool", "llm-eval")["spec"]["selector"]["matchLabels"], labels)
    epp_labels = _one("Deployment", "llm-eval-epp")["spec"]["template"]["metadata"]["labels"]
    assert not pod_template_matches(_one("InferencePool", "llm-eval")["spec"]["selector"]["matchLabels"], epp_labels)
    # The picker reads /metrics with its "vllm" mapping for pods that say so.
    assert labels["llm-d.ai/engine-type"] == "vllm"


def test_pool_targets_the_server_port_and_its_picker(container):
    pool = _one("InferencePool", "llm-eval")["spec"]
    assert [p["number"] for p in pool["targetPorts"]] == [p["containerPort"] for p in container["ports"]]
    ref = pool["endpointPickerRef"]
    epp_service = _one("Service", ref["name"])
    assert ref["port"]["number"] in [p["port"] for p in epp_service["spec"]["ports"]]
    epp = _one("Deployment", ref["name"])
    assert pod_template_matches(epp_service["spec"]["selector"], epp["spec"]["template"]["metadata"]["labels"])
    args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == "llm-eval"
    assert args[args.index("--pool-group") + 1] == "inference.networking.k8s.io"


def test_picker_config_is_mounted_and_consistent():
    epp = _one("Deployment", "llm-eval-epp")["spec"]["template"]["spec"]
    (c,) = epp["containers"]
    config_path = c["args"][c["args"].index("--config-file") + 1]
    (mount,) = [m for m in c["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in epp["volumes"] if v["name"] == mount["name"]]
    data = _one("ConfigMap", volume["configMap"]["name"])["data"]
    config = yaml.safe_load(data[config_path[len(mount["mountPath"]) + 1:]])
    assert config["kind"] == "EndpointPickerConfig"
    declared = {p.get("name", p["type"]) for p in config["plugins"]}
    used = {ref["pluginRef"] for profile in config["schedulingProfiles"] for ref in profile["plugins"]}
    assert used <= declared and {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"} <= used
    (source,) = [p for p in config["plugins"] if p["type"] == "metrics-data-source"]
    assert source["parameters"]["path"] == "/metrics"
    role = _one("Role", "llm-eval-epp")
    binding = _one("RoleBinding", "llm-eval-epp")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == epp["serviceAccountName"] == "llm-eval-epp"


def test_objectives_and_route_point_at_the_pool():
    for obj in [o for _, o in OBJECTS if o["kind"] == "InferenceObjective"]:
        assert obj["spec"]["poolRef"]["name"] == "llm-eval"
    (backend,) = _one("HTTPRoute", "llm-eval")["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == ("inference.networking.k8s.io", "InferencePool", "llm-eval")


def test_hpa_scales_the_deployment_on_the_adapters_queue_metric():
    hpa = _one("HorizontalPodAutoscaler", "llm-eval")["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) == ("Deployment", "llm-eval")
    (metric,) = hpa["metrics"]
    rules = yaml.safe_load((KUBE / "autoscaling" / "prometheus-adapter-rules.yaml").read_text())["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    # The series is the server's queued-requests gauge, under vLLM's name (issue 11's /metrics).
    assert rule["seriesQuery"].startswith("vllm:num_requests_waiting{")
    assert re.fullmatch(rule["name"]["matches"], "vllm:num_requests_waiting")
    assert _one("Deployment", "llm-eval")["spec"]["replicas"] == hpa["minReplicas"]


# ---- the pod agrees with the image and the server ----

def test_one_gpu_per_pod(container):
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_port_is_the_images(container):
    runtime = load_dockerfile().stage("runtime")
    (port,) = [p["containerPort"] for p in container["ports"]]
    assert runtime.one("EXPOSE").value.split() == [str(port)]
    cmd = runtime.one("CMD").exec_form
    assert cmd[cmd.index("--bind") + 1] == f"0.0.0.0:{port}"
    assert container["ports"][0]["name"] == "http"


def _routes() -> set[str]:
    from app import create_app
    from tests.fake_engine import FakeEngine

    return {rule.rule for rule in create_app({"ENGINE_FACTORY": FakeEngine}).url_map.iter_rules()}


def test_probes_load_ready_and_never_kill_a_busy_pod(container):
    routes = _routes()
    for probe in ("startupProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["path"] in routes and get["port"] == "http"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "a 7B engine may take minutes to load"
    # Liveness is a TCP connect (completed by the kernel from the listen backlog): it cannot time
    # out behind 64 threads busy with long generations, as an HTTP request could.
    live = container["livenessProbe"]
    assert set(live) & {"httpGet", "exec", "grpc"} == set() and live["tcpSocket"]["port"] == "http"
    assert live["periodSeconds"] * live["failureThreshold"] >= 60


def test_metrics_route_for_the_picker_and_prometheus(server_pod):
    if "/metrics" not in _routes():
        pytest.skip("the server has no /metrics route yet (issue 11 adds it)")
    annotations = server_pod["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"


def _env(container) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_env_is_server_settings(container):
    env = _env(container)
    unknown = set(env) - settings_vars() - {"DRAIN_TIMEOUT"}  # DRAIN_TIMEOUT: see the next test
    assert not unknown, f"not server settings: {unknown}"
    Settings.from_env({k: v for k, v in env.items() if k in settings_vars()})  # and valid values


def test_drain_timeout_is_a_server_setting(container):
    if "DRAIN_TIMEOUT" not in settings_vars():
        pytest.skip("Settings has no DRAIN_TIMEOUT yet (issue 11 adds the drain)")
    drain = int(_env(container)["DRAIN_TIMEOUT"])
    fields = {app_config._ENV_NAMES.get(f.name, f.name.upper()): f.name for f in dataclasses.fields(Settings)}
    assert getattr(Settings.from_env({"DRAIN_TIMEOUT": str(drain)}), fields["DRAIN_TIMEOUT"]) == drain


def test_grace_period_covers_prestop_and_drain(server_pod, container):
    from app import serve

    drain = int(_env(container)["DRAIN_TIMEOUT"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = server_pod["spec"]["terminationGracePeriodSeconds"]
    # SIGTERM comes after preStop; then the drain, then what app.serve allows gunicorn to exit and
    # nginx to send its last answers; only then may the kubelet kill.
    need = pre_stop + drain + serve.EXIT_GRACE_S + serve.NGINX_STOP_S
    assert grace >= need, f"grace {grace} s < preStop {pre_stop} + drain {drain} + exit {need - pre_stop - drain}"
    assert grace <= need + 30, "a hung pod would hold its GPU for minutes"
    epp_grace = _one("Deployment", "llm-eval-epp")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert epp_grace >= grace
