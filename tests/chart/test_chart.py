"""The Helm chart: lints, renders, validates offline against the Kubernetes schemas, and grants the operator
exactly the permissions it needs.

``helm`` comes from a PyPI wheel (see :mod:`helmbin`); the manifests are validated with
``kubernetes-validate`` in strict mode (unknown fields are errors) for the oldest and the newest Kubernetes
version this project supports. Objects of custom kinds (kopf's peering objects, the Prometheus Operator's
ServiceMonitor) have no schema there: each is checked by a test of its own, and a kind that is neither
validated nor known fails the test.
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helmbin import HelmNotFoundError, helm_path

from continual_operator.api import crdgen

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "continual-training"
EXPECTED_OBJECTS = ROOT / "tests" / "operator" / "expected"
NAMESPACE = "continual-system"
RELEASE = "continual-training"
#: The oldest Kubernetes version the chart supports (CEL rules in the CRDs need 1.25+, and
#: kubernetes-validate ships schemas from 1.25) and the newest one kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
#: Kinds that only exist through CRDs: kubernetes-validate has no schema for them.
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor"}
KOPF_CRDS = "kopf.dev_peerings.yaml"
WATCHED = ["ml-team-a", "ml-team-b"]

RICH_VALUES: dict[str, Any] = {
    "replicas": 2,
    "watchNamespaces": WATCHED,
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "image": {"tag": "0.1.1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "logLevel": "debug",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "continual-training"}},
                    },
                }
            ]
        }
    },
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "ml"},
    "podLabels": {"example.com/cost-center": "research"},
    "serviceAccount": {"annotations": {"example.com/role": "operator"}},
    "extraEnv": [{"name": "KOPF_EXTRA", "value": "1"}],
    "resources": {"requests": {"cpu": "200m", "memory": "384Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
}
VALUE_SETS = {"default": {}, "rich": RICH_VALUES}

# -- exactly what the operator may do ----------------------------------------------------------------
#: (apiGroup, resource) -> verbs, in every namespace the operator serves.
NAMESPACED_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    ("continual.dev", "continualtrainingruns"): {"get", "list", "watch"},
    ("continual.dev", "trainingbatches"): {"get", "list", "watch", "create", "patch"},
    # the S3 inbox: the credentials Secret a run names (get only, never list)
    ("", "secrets"): {"get"},
    ("continual.dev", "continualtrainingruns/status"): {"get", "patch", "update"},
    ("continual.dev", "trainingbatches/status"): {"get", "patch", "update"},
    ("continual.dev", "continualtrainingruns/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete", "patch"},
    # gangs: a JobSet per attempt, or an Indexed Job and its headless Service
    ("jobset.x-k8s.io", "jobsets"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "list", "watch", "create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "list", "watch", "create"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
#: What kopf reads cluster-wide in either mode.
CLUSTER_PERMISSIONS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
PEERING_VERBS = {"get", "list", "watch", "patch"}
#: The API resource of each kind the operator creates (tests/operator/expected holds one of each).
CREATED_KINDS = {
    ("batch/v1", "Job"): ("batch", "jobs"),
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): ("jobset.x-k8s.io", "jobsets"),
    ("v1", "Service"): ("", "services"),
    ("v1", "ConfigMap"): ("", "configmaps"),
    ("v1", "PersistentVolumeClaim"): ("", "persistentvolumeclaims"),
    ("v1", "ServiceAccount"): ("", "serviceaccounts"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rbac.authorization.k8s.io", "rolebindings"),
}


# -- helm -----------------------------------------------------------------------------------------------
Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Runs helm with its own config, cache and data folders (the user's are left alone)."""
    try:
        binary = helm_path()
    except HelmNotFoundError as error:
        pytest.skip(f"no helm binary: {error}")
    home = tmp_path_factory.mktemp("helm-home")
    env = os.environ | {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    return run


@pytest.fixture(scope="session")
def values_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], Path]:
    folder = tmp_path_factory.mktemp("values")
    counter = itertools.count()

    def write(values: dict[str, Any]) -> Path:
        path = folder / f"values-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    return write


@pytest.fixture(scope="session")
def render(helm: Helm, values_file: Callable[[dict[str, Any]], Path]) -> Callable[..., list[dict[str, Any]]]:
    """``helm template`` with the given values: the rendered objects, in order."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def template(values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
        key = yaml.safe_dump([values, extra])
        if key not in cache:
            args = ["template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", values_file(values), *extra]
            result = helm(*args)
            assert result.returncode == 0, result.stderr
            cache[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return cache[key]

    return template


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def permissions(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs granted by the rules (without resourceNames: those grant less)."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


# -- lint and render -----------------------------------------------------------------------------------
def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == "0.1.0"
    # The images are tagged with the package version, and the chart's default image tag is appVersion.
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_helm_lint(
    helm: Helm, values_file: Callable[[dict[str, Any]], Path], strict: bool, values: str
) -> None:
    result = helm("lint", CHART, "-f", values_file(VALUE_SETS[values]), *(["--strict"] if strict else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_default_values_render_cluster_wide_objects(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render({})
    assert Counter(doc["kind"] for doc in docs) == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Service": 1,
        "Deployment": 1,
        "ClusterKopfPeering": 1,
    }
    namespaced = [doc for doc in docs if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {NAMESPACE, None}
    assert only(docs, "ClusterKopfPeering")["metadata"]["name"] == "continual-training"


def test_rich_values_render_namespaced_objects(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render(RICH_VALUES)
    assert Counter(doc["kind"] for doc in docs) == {
        "ServiceAccount": 1,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Role": 2,
        "RoleBinding": 2,
        "Service": 1,
        "ServiceMonitor": 1,
        "Deployment": 1,
        "PodDisruptionBudget": 1,
        "KopfPeering": 2,
    }
    for kind in ("Role", "RoleBinding", "KopfPeering"):
        assert sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == kind) == WATCHED


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2, "peering": {"enabled": False}}, "replicas > 1 needs peering.enabled=true"),
        ({"logLevel": "loud"}, "logLevel"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"replica": 2}, "replica"),  # a typo is an error, not a silently ignored key
    ],
    ids=["replicas-without-peering", "log-level", "namespace", "typo"],
)
def test_unsafe_or_invalid_values_are_refused(
    helm: Helm, values_file: Callable[[dict[str, Any]], Path], values: dict[str, Any], message: str
) -> None:
    result = helm("template", RELEASE, CHART, "-f", values_file(values))
    assert result.returncode != 0
    assert message in result.stderr


# -- offline validation ------------------------------------------------------------------------------
def peering_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from the vendored kopf CRDs."""
    schemas = {}
    for crd in yaml.safe_load_all((CHART / "crds" / KOPF_CRDS).read_text()):
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[api_version, crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_rendered_manifests_validate_strictly(
    render: Callable[..., list[dict[str, Any]]], values: str, k8s: str
) -> None:
    docs = render(VALUE_SETS[values])
    custom = [doc for doc in docs if doc["kind"] in CUSTOM_KINDS]
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, k8s, strict=True)
    # Custom kinds: the peering objects against kopf's CRD schema; the ServiceMonitor by
    # test_service_monitor_scrapes_the_metrics_port (its CRD is the Prometheus Operator's, not ours).
    peering = peering_crd_schemas()
    for doc in custom:
        if doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        schema = peering[doc["apiVersion"], doc["kind"]]
        jsonschema.Draft4Validator(schema).validate(doc)
    assert len(custom) == {"default": 1, "rich": 3}[values]


def test_strict_validation_catches_a_misspelt_field(render: Callable[..., list[dict[str, Any]]]) -> None:
    """The check above is not vacuous: one unknown field in the pod makes the Deployment invalid."""
    deployment = copy.deepcopy(only(render({}), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsNonroot"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_crds_validate_strictly(k8s: str) -> None:
    """Our generated CRDs and the vendored kopf ones: CustomResourceDefinition is a built-in kind."""
    ours = [yaml.safe_load(path.read_text()) for path in sorted((ROOT / "crds").glob("*.yaml"))]
    kopfs = [doc for doc in yaml.safe_load_all((CHART / "crds" / KOPF_CRDS).read_text()) if doc]
    assert len(ours) == len(crdgen.crd_manifests())
    assert len(kopfs) == 2
    for crd in ours + kopfs:
        assert crd["kind"] == "CustomResourceDefinition"
        kubernetes_validate.validate(crd, k8s, strict=True)


def test_chart_crds_are_the_generated_ones_plus_kopfs() -> None:
    ours = {path.name: path.read_bytes() for path in (ROOT / "crds").glob("*.yaml")}
    chart = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert set(ours) == set(crdgen.rendered_files())
    assert set(chart) == set(ours) | {KOPF_CRDS}
    for name, content in ours.items():
        assert chart[name] == content, f"charts/continual-training/crds/{name} differs from crds/{name}"


def test_helm_installs_every_crd(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render({}, "--include-crds")
    names = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "CustomResourceDefinition"}
    assert names == {
        "continualtrainingruns.continual.dev",
        "trainingbatches.continual.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }


# -- the operator pod --------------------------------------------------------------------------------
@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_operator_pod_is_hardened(render: Callable[..., list[dict[str, Any]]], values: str) -> None:
    docs = render(VALUE_SETS[values])
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable place is /tmp, an emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["resources"] == VALUE_SETS[values].get(
        "resources", yaml.safe_load((CHART / "values.yaml").read_text())["resources"]
    )
    assert {"requests", "limits"} <= container["resources"].keys()


def test_default_operator_command(render: Callable[..., list[dict[str, Any]]]) -> None:
    container = operator_container(render({}))
    assert container["image"] == "ghcr.io/continual-training/operator:0.1.0"
    assert container["command"] == ["continual-training"]
    assert container["args"] == [
        "--log-level",
        "info",
        "operator",
        "--all-namespaces",
        "--peering",
        "continual-training",
        "--metrics-port",
        "8080",
        "--liveness-endpoint",
        "http://0.0.0.0:8081/healthz",
    ]


def test_rich_operator_command(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render(RICH_VALUES)
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/continual-training/operator:0.1.1"
    assert container["imagePullPolicy"] == "Always"
    assert container["args"] == [
        "--log-level",
        "debug",
        "operator",
        "--namespace",
        "ml-team-a",
        "--namespace",
        "ml-team-b",
        "--peering",
        "continual-training",
        "--metrics-port",
        "8080",
        "--liveness-endpoint",
        "http://0.0.0.0:8081/healthz",
    ]
    assert only(docs, "Deployment")["spec"]["replicas"] == 2


def test_standalone_without_peering(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render({"peering": {"enabled": False}})
    args = operator_container(docs)["args"]
    assert "--standalone" in args
    assert "--peering" not in args
    assert not [doc for doc in docs if doc["kind"] in {"ClusterKopfPeering", "KopfPeering"}]
    rules = permissions(only(docs, "ClusterRole")["rules"])
    assert not [key for key in rules if key[0] == "kopf.dev"]


@pytest.mark.parametrize(
    "values",
    [{}, RICH_VALUES, {"peering": {"enabled": False}}],
    ids=["default", "rich", "standalone"],
)
def test_the_cli_accepts_the_chart_arguments(
    render: Callable[..., list[dict[str, Any]]], values: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract with ``continual-training``'s parser: every flag the chart passes must exist."""
    from continual_operator.cli import build_parser

    container = operator_container(render(values))
    try:
        parsed = build_parser().parse_args(container["args"])
    except SystemExit:
        pytest.fail(f"continual-training rejects {container['args']}: {capsys.readouterr().err}")
    assert parsed.command == "operator"
    assert parsed.metrics_port == 8080
    assert parsed.liveness_endpoint == "http://0.0.0.0:8081/healthz"
    assert parsed.namespace == (values.get("watchNamespaces") or None)
    assert parsed.standalone is (values.get("peering") == {"enabled": False})


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_operator_environment(render: Callable[..., list[dict[str, Any]]]) -> None:
    env = env_of(operator_container(render({})))
    # The trainer image is each run's spec.image (defaulted by the CRD), not an operator setting.
    assert "CONTINUAL_TRAINER_IMAGE" not in env
    # kopf names each peer after POD_ID: the pod name, so that `kubectl get clusterkopfpeering` is readable.
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["HOME"] == "/tmp"
    rich = env_of(operator_container(render(RICH_VALUES)))
    assert rich["KOPF_EXTRA"] == "1"


def test_liveness_probe_targets_the_liveness_endpoint(render: Callable[..., list[dict[str, Any]]]) -> None:
    container = operator_container(render({"health": {"port": 9091}, "metrics": {"port": 9090}}))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9090, "health": 9091}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    args = container["args"]
    assert args[args.index("--liveness-endpoint") + 1] == "http://0.0.0.0:9091/healthz"
    assert args[args.index("--metrics-port") + 1] == "9090"


def test_scheduling_values_reach_the_pod(render: Callable[..., list[dict[str, Any]]]) -> None:
    template = only(render(RICH_VALUES), "Deployment")["spec"]["template"]
    pod = template["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert pod[key] == RICH_VALUES[key], key
    assert template["metadata"]["annotations"] == RICH_VALUES["podAnnotations"]
    assert template["metadata"]["labels"].items() >= RICH_VALUES["podLabels"].items()


def test_pod_disruption_budget_only_with_several_replicas(
    render: Callable[..., list[dict[str, Any]]],
) -> None:
    assert not [doc for doc in render({}) if doc["kind"] == "PodDisruptionBudget"]
    docs = render(RICH_VALUES)
    budget = only(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= budget["spec"]["selector"]["matchLabels"].items()


def test_service_monitor_scrapes_the_metrics_port(render: Callable[..., list[dict[str, Any]]]) -> None:
    assert not [doc for doc in render({}) if doc["kind"] == "ServiceMonitor"]
    docs = render(RICH_VALUES)
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["targetPort"] == "metrics"
    assert port["port"] == 8080
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= service["spec"]["selector"].items()


# -- RBAC ----------------------------------------------------------------------------------------------
def all_rules(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in {"ClusterRole", "Role"}:
            yield from doc["rules"]


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_no_wildcards_and_no_escalation_verbs(
    render: Callable[..., list[dict[str, Any]]], values: str
) -> None:
    for rule in all_rules(render(VALUE_SETS[values])):
        for field in ("apiGroups", "resources", "verbs"):
            assert not [item for item in rule[field] if "*" in item], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule
        assert not {"pods/log", "pods/exec"} & set(rule["resources"]), rule
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"], rule
            assert rule["verbs"] == ["get"], rule  # a Secret the run names, never a listing


def test_cluster_wide_rbac_is_exact(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render({})
    role = only(docs, "ClusterRole")
    assert permissions(role["rules"]) == NAMESPACED_PERMISSIONS | CLUSTER_PERMISSIONS | {
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS
    }
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = only(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["name"]


def test_namespaced_rbac_is_exact(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render(RICH_VALUES)
    # Cluster-wide, only what kopf must read there: no access to any namespace's objects.
    assert permissions(only(docs, "ClusterRole")["rules"]) == CLUSTER_PERMISSIONS
    account = only(docs, "ServiceAccount")["metadata"]
    roles = {doc["metadata"]["namespace"]: doc for doc in docs if doc["kind"] == "Role"}
    bindings = {doc["metadata"]["namespace"]: doc for doc in docs if doc["kind"] == "RoleBinding"}
    assert sorted(roles) == sorted(bindings) == WATCHED
    for namespace in WATCHED:
        assert permissions(roles[namespace]["rules"]) == NAMESPACED_PERMISSIONS | {
            ("kopf.dev", "kopfpeerings"): PEERING_VERBS
        }
        binding = bindings[namespace]
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
        ]


def expected_objects() -> list[dict[str, Any]]:
    """One of each object the operator creates, as pinned by the resource builders' tests."""
    docs = [yaml.safe_load(path.read_text()) for path in sorted(EXPECTED_OBJECTS.glob("*.yaml"))]
    return [doc for doc in docs if not doc["apiVersion"].startswith("continual.dev/")]


@pytest.mark.parametrize("values", list(VALUE_SETS), ids=list(VALUE_SETS))
def test_operator_may_create_what_it_builds(render: Callable[..., list[dict[str, Any]]], values: str) -> None:
    docs = render(VALUE_SETS[values])
    kind = "Role" if VALUE_SETS[values].get("watchNamespaces") else "ClusterRole"
    granted = permissions(next(doc for doc in docs if doc["kind"] == kind)["rules"])
    created = expected_objects()
    assert {(o["apiVersion"], o["kind"]) for o in created} == set(CREATED_KINDS), "a new kind: review RBAC"
    for obj in created:
        assert "create" in granted[CREATED_KINDS[obj["apiVersion"], obj["kind"]]], obj["kind"]
    # The API server lets the operator create the trainer's Role only if it holds every permission that
    # Role grants (no `escalate` verb needed, none given).
    (trainer_role,) = [o for o in created if o["kind"] == "Role"]
    for rule in trainer_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= granted[group, resource], (group, resource)
    # The headline permissions, spelled out.
    assert "create" in granted["batch", "jobs"]
    assert "patch" in granted["continual.dev", "continualtrainingruns/status"]
