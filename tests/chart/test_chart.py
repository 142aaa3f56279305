"""The Helm chart through helm-python-sdk (Helm 4 embedded): lint, schema, rendering, CRD identity with crds/,
Kubernetes schemas, Pod Security and least-privilege RBAC, over the defaults and every named value set."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from kubetune.api.common import ResourceIdentity
from kubetune.api.manifests import load_yaml
from tests.chart import chartkit
from tests.chart.chartkit import CHART, NAMESPACE, REPO, VALUE_SETS, env_of, manifests, of_kind, one, render
from tests.chart.thirdparty import THIRD_PARTY_KINDS, structural_errors
from tests.pss import pod_spec_of, restricted_violations

SETS = sorted(VALUE_SETS)


def _load_sync_crds() -> Any:
    spec = importlib.util.spec_from_file_location("sync_crds", CHART / "hack" / "sync-crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- lint and schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_lint_strict_passes(name: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report
    # The only remark left is Helm's suggestion of an icon.
    assert {m["error"] for m in report["messages"]} <= {"icon is recommended"}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"watchNamespace": ["team-a"]}, "watchNamespace"),  # the plural is the real key
        ({"image": {"tagg": "1.0"}}, "tagg"),
        ({"crds": {"instal": False}}, "instal"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
        ({"metrics": {"prometheusRule": {"stuckPhases": {"Runing": "1h"}}}}, "Runing"),
        ({"operator": {"resyncSeconds": 0}}, "resyncSeconds"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"metrics": {"prometheusRule": {"checkpointMaxAge": "an hour"}}}, "checkpointMaxAge"),
        ({"metrics": {"prometheusRule": {"disabledAlerts": ["KubetuneEverything"]}}}, "disabledAlerts"),
        ({"defaults": {"gpuTolerations": [{"key": "x", "operater": "Exists"}]}}, "operater"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_schema_refuses_misspelt_or_unsafe_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(values)


# Kubernetes objects passed through as they are: the level above them is closed, and kubernetes-validate
# (here) and the API server's strict field validation (at install) check their insides. `global` is what
# Helm shares between a parent chart and its subcharts.
PASS_THROUGH = {
    ".global",
    ".affinity.nodeAffinity", ".affinity.podAffinity", ".affinity.podAntiAffinity",
    ".operator.extraEnv[].valueFrom.configMapKeyRef", ".operator.extraEnv[].valueFrom.secretKeyRef",
    ".operator.extraEnv[].valueFrom.fieldRef", ".operator.extraEnv[].valueFrom.resourceFieldRef",
    ".networkPolicy.metricsFrom[].podSelector", ".networkPolicy.metricsFrom[].namespaceSelector",
}  # fmt: skip


def test_service_monitor_without_its_service_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs metrics\.service\.enabled"):
        render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


def test_every_schema_object_is_closed() -> None:
    """additionalProperties false (or typed maps) everywhere but the pass-through Kubernetes objects."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []
    seen: set[str] = set()

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "additionalProperties" not in node:
            seen.add(path)
            if path not in PASS_THROUGH:
                open_objects.append(path)
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    assert open_objects == []
    assert seen == PASS_THROUGH, "PASS_THROUGH lists paths the schema no longer has"


def _schema_paths(node: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths = {path}
    for key, child in (node.get("properties") or {}).items():
        paths |= _schema_paths(child, (*path, key))
    return paths


def test_every_value_is_in_the_schema_and_documented_in_values_yaml() -> None:
    schema_paths = _schema_paths(json.loads((CHART / "values.schema.json").read_text()))
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, unknown = [], []
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_.-]*):( |$)", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), key)
        stack.append((indent, key))
        if path not in schema_paths:
            # Inside a typed map (labels, resources, nodeSelector): the parent is the documented value.
            if path[:-1] in schema_paths:
                continue
            unknown.append(".".join(path))
            continue
        following = next(
            (text for text in lines[number + 1 :] if text.strip() and not text.lstrip().startswith("#")), ""
        )
        is_parent = len(following) - len(following.lstrip()) > indent and not following.lstrip().startswith(
            "- "
        )
        above = lines[number - 1].strip() if number else ""
        if not is_parent and not above.startswith("#"):
            undocumented.append(".".join(path))
    assert unknown == [], "values.yaml keys missing from values.schema.json"
    assert undocumented == [], "values without a comment right above them"


def test_chart_defaults_pass_the_schema_and_match_values_yaml() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.values)
        assert chart.values == yaml.safe_load((CHART / "values.yaml").read_text())


# -- rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_every_value_set_renders_an_operator(name: str) -> None:
    documents = manifests(VALUE_SETS[name])
    deployment = one(documents, "Deployment")
    # Two replicas behind a Lease: old and new pods may overlap in a rollout, only the holder acts.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["args"][0] == "operator"
    for document in documents:
        namespaced = document["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
        assert ("namespace" in document["metadata"]) == namespaced, document["kind"]


def test_defaults_are_cluster_wide_with_json_logs_and_no_monitoring_objects() -> None:
    documents = manifests({})
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted([
        "CustomResourceDefinition", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "ClusterRole", "ClusterRole", "Deployment", "Service", "PodDisruptionBudget", "Role", "RoleBinding",
    ])  # fmt: skip
    container = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--json-logs" in container["args"]
    assert env_of(container)["KUBETUNE_WATCH_NAMESPACES"] == ""


def test_namespaced_mode_has_a_role_per_namespace_and_only_cluster_reads_cluster_wide() -> None:
    documents = manifests(VALUE_SETS["namespaced"])
    roles = [r for r in of_kind(documents, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [
        b for b in of_kind(documents, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": NAMESPACE}]
        assert binding["roleRef"]["kind"] == "Role"
    operator_cluster_roles = [
        r for r in of_kind(documents, "ClusterRole") if not r["metadata"]["name"].endswith(("-view", "-edit"))
    ]
    assert len(operator_cluster_roles) == 1
    cluster_resources = {res for rule in operator_cluster_roles[0]["rules"] for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    for resource in ("finetunejobs/finalizers", "modeldeployments/finalizers"):
        assert _verbs(roles[:1], "kubetune.dev", resource) == {"update"}, resource
    for rule in operator_cluster_roles[0]["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
    container = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["KUBETUNE_WATCH_NAMESPACES"] == "team-a,team-b"
    for monitor in of_kind(documents, "PodMonitor"):
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_monitoring_on_renders_every_monitoring_object() -> None:
    documents = manifests(VALUE_SETS["monitoring"])
    assert one(documents, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitors = {m["metadata"]["name"]: m for m in of_kind(documents, "PodMonitor")}
    assert set(monitors) == {"kubetune-trainer", "kubetune-serving"}
    assert monitors["kubetune-trainer"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "kubetune",
        "kubetune.dev/stage": "train",
    }
    assert monitors["kubetune-trainer"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitors["kubetune-serving"]["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert monitors["kubetune-serving"]["spec"]["namespaceSelector"] == {"any": True}
    dashboard = one(documents, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    json.loads(dashboard["data"]["kubetune.json"])
    for group in one(documents, "PrometheusRule")["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["team"] == "ml-platform"


def test_serving_and_trainer_pod_monitors_select_the_pods_the_operator_renders() -> None:
    """The PodMonitors' selectors and ports match the pods render/ produces."""
    from kubetune.render import finetunejob as ftj

    monitors = {
        m["metadata"]["name"]: m["spec"] for m in of_kind(manifests(VALUE_SETS["monitoring"]), "PodMonitor")
    }
    owner = ResourceIdentity(name="support-bot", namespace="team-a", uid="u")
    example = load_yaml((REPO / "examples" / "01-lora-basic" / "finetunejob.yaml").read_text())
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.render.pod import OperatorDefaults

    spec = FineTuneJobSpec.model_validate(example["spec"])
    job = ftj.training_job(owner, spec, OperatorDefaults(), "digest")
    labels = job["spec"]["template"]["metadata"]["labels"]
    trainer = monitors["kubetune-trainer"]
    assert trainer["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for c in job["spec"]["template"]["spec"]["containers"] for p in c.get("ports") or []}
    assert trainer["podMetricsEndpoints"][0]["port"] in ports
    relabel = trainer["podMetricsEndpoints"][0]["relabelings"][0]["sourceLabels"][0]
    assert relabel == "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", ftj.JOB_LABEL)
    serving = monitors["kubetune-serving"]
    from kubetune.render import modeldeployment as md

    assert serving["selector"]["matchExpressions"][0]["key"] == md.DEPLOYMENT_LABEL
    assert serving["podMetricsEndpoints"][0]["port"] == "http"
    assert (
        md.selector_labels(ResourceIdentity(name="chat", namespace="team-a", uid="u")).items()
        >= serving["selector"]["matchLabels"].items()
    )


def test_crds_off_renders_no_crds_and_keep_is_the_default() -> None:
    assert of_kind(manifests(VALUE_SETS["crds-off"]), "CustomResourceDefinition") == []
    for crd in of_kind(manifests({}), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for crd in of_kind(manifests(VALUE_SETS["crds-not-kept"]), "CustomResourceDefinition"):
        assert crd["metadata"]["annotations"] == {"argocd.argoproj.io/sync-options": "Prune=false"}
    for crd in of_kind(manifests({"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


def test_custom_images_reach_the_operator_and_its_defaults() -> None:
    documents = manifests(VALUE_SETS["custom-images"])
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (
        container["image"]
        == "registry.example.com:5000/platform/kubetune-operator:0.1.0-rc1@sha256:" + "a" * 64
    )
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    env = env_of(container)
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.example.com:5000/platform/trainer:cu13"
    assert env["KUBETUNE_VLLM_IMAGE"] == "vllm/vllm-openai:v0.12.0"
    assert env["KUBETUNE_TGI_IMAGE"] == "mirror.example.com/hf/tgi:3.3.6@sha256:" + "b" * 64
    assert env["KUBETUNE_TRAINER_SERVICE_ACCOUNT"] == "trainer"
    assert env["KUBETUNE_IMAGE_PULL_POLICY"] == "Always"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert json.loads(env["KUBETUNE_GPU_TOLERATIONS"])[1]["value"] == "h100"
    assert "--no-json-logs" in container["args"] and "--verbose" in container["args"]


def test_workload_pull_secrets_reach_the_operators_defaults() -> None:
    from kubetune.handlers.settings import OperatorConfig

    values = {"defaults": {"imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}]}}
    env = env_of(one(manifests(values), "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert OperatorConfig.from_env(env).defaults.image_pull_secrets == ("regcred", "mirror")
    assert OperatorConfig.from_env({}).defaults.image_pull_secrets == ()
    with pytest.raises(ValueError, match="not a Secret name"):
        OperatorConfig.from_env({"KUBETUNE_IMAGE_PULL_SECRETS": '[{"name": "Not_A_Name"}]'})


def test_validation_pods_disk_is_a_chart_value() -> None:
    from kubetune.handlers.settings import OperatorConfig

    values = {"defaults": {"trainer": {"validationEphemeralStorage": "64Gi"}}}
    env = env_of(one(manifests(values), "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert OperatorConfig.from_env(env).defaults.validation_ephemeral_storage == "64Gi"
    with pytest.raises(ValueError, match="not a quantity"):
        OperatorConfig.from_env({"KUBETUNE_VALIDATION_EPHEMERAL_STORAGE": "lots"})


def test_existing_service_account_without_rbac() -> None:
    documents = manifests(VALUE_SETS["existing-service-account"])
    assert of_kind(documents, "ServiceAccount") == []
    assert not [d for d in documents if d["apiVersion"].startswith("rbac.")]
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubetune-operator"
    assert one(documents, "Deployment")["metadata"]["name"] == "ml-operator"


def test_the_operator_settings_read_exactly_what_the_chart_sets() -> None:
    """Every KUBETUNE_* variable the operator reads is set by the chart, and the chart sets nothing unread."""
    sources = "\n".join(
        p.read_text() for p in (REPO / "operator" / "src" / "kubetune" / "handlers").glob("*.py")
    )
    read = set(re.findall(r'"((?:KUBETUNE|POD)_[A-Z_]+)"', sources))
    container = one(manifests({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    chart = set(env_of(container))
    assert read - chart == set(), "the operator reads variables the chart never sets"
    # Serving images are set for the ModelDeployment settings; drop them from this set once settings.py reads them.
    assert chart - read <= {"KUBETUNE_VLLM_IMAGE", "KUBETUNE_TGI_IMAGE"} - read


def test_chart_defaults_equal_the_operators_built_in_defaults() -> None:
    from kubetune.handlers.settings import OperatorConfig

    container = one(manifests({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    from_chart = OperatorConfig.from_env(env)
    built_in = OperatorConfig.from_env({"POD_NAMESPACE": NAMESPACE, "POD_NAME": env["POD_NAME"]})  # auto: on
    assert from_chart == built_in
    assert from_chart.leader_election is not None
    try:
        from kubetune.render.modeldeployment import ServingDefaults
    except ImportError:  # pragma: no cover
        return
    assert env["KUBETUNE_VLLM_IMAGE"].removeprefix("docker.io/") == ServingDefaults().vllm_image
    assert env["KUBETUNE_TGI_IMAGE"] == ServingDefaults().tgi_image


def test_notes_tell_the_next_steps() -> None:
    notes = render({})["kubetune/templates/NOTES.txt"]
    assert "rollout status deployment/kubetune" in notes
    assert "kubectl apply -f examples/01-lora-basic/finetunejob.yaml" in notes
    assert "Monitoring is off" in notes
    assert "apply the CRDs yourself" in render(VALUE_SETS["crds-off"])["kubetune/templates/NOTES.txt"]
    assert "team-a, team-b" in render(VALUE_SETS["namespaced"])["kubetune/templates/NOTES.txt"]


# -- CRDs: the chart's copies are crds/ ---------------------------------------------------------------------


def test_crd_templates_are_in_sync_with_crds_folder() -> None:
    sync = _load_sync_crds()
    expected = sync.expected()
    present = {p.name: p.read_text() for p in (CHART / "templates" / "crds").glob("*.yaml")}
    assert present == expected, "run: python charts/kubetune/hack/sync-crds.py"


@pytest.mark.parametrize("path", sorted((REPO / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_crd_template_holds_the_crd_file_byte_for_byte(path: Path) -> None:
    sync = _load_sync_crds()
    template = (CHART / "templates" / "crds" / path.name).read_text()
    assert sync.strip_helm_lines(template) == path.read_text()


def test_rendered_crds_equal_crds_folder_plus_chart_metadata() -> None:
    rendered = {c["metadata"]["name"]: c for c in of_kind(manifests({}), "CustomResourceDefinition")}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        source = load_yaml(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert crd["metadata"]["labels"].items() >= source["metadata"]["labels"].items()
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_drift_in_crds_folder_is_detected(tmp_path: Path) -> None:
    sync = _load_sync_crds()
    path = sorted((REPO / "crds").glob("*.yaml"))[0]
    template = (CHART / "templates" / "crds" / path.name).read_text()
    edited = path.read_text().replace("maxLength: 64", "maxLength: 65", 1)
    assert sync.template_for(path.name, edited) != template


# -- Kubernetes schemas, Pod Security, RBAC ---------------------------------------------------------------


@cache
def _validate(document_json: str, version: str) -> None:
    """kubernetes-validate once per distinct document (the CRDs repeat across value sets)."""
    kubernetes_validate.validate(json.loads(document_json), version, strict=True)


@pytest.mark.parametrize("name", SETS)
def test_every_manifest_passes_kubernetes_validate_strict(name: str) -> None:
    checked = 0
    for document in manifests(VALUE_SETS[name]):
        if document["kind"] in THIRD_PARTY_KINDS:
            assert structural_errors(document) == [], document["kind"]
            continue
        for version in chartkit.KUBE_VERSIONS:
            _validate(json.dumps(document, sort_keys=True), version)
        checked += 1
    assert checked >= 4


def test_kubernetes_validate_catches_unknown_fields() -> None:
    deployment = one(manifests({}), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, chartkit.KUBE_VERSIONS[-1], strict=True)


def test_structural_check_of_third_party_kinds_catches_typos() -> None:
    monitor = one(manifests(VALUE_SETS["monitoring"]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert structural_errors(monitor)


@pytest.mark.parametrize("name", SETS)
def test_every_pod_meets_restricted_pod_security(name: str) -> None:
    pods = [pod_spec_of(doc) for doc in manifests(VALUE_SETS[name])]
    pods = [pod for pod in pods if pod is not None]
    assert pods
    for pod in pods:
        assert restricted_violations(pod) == []
        assert pod["securityContext"]["runAsUser"] != 0


def test_the_pod_security_check_can_fail() -> None:
    pod = pod_spec_of(one(manifests({}), "Deployment"))
    assert pod is not None
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert restricted_violations(pod)


def _rbac_rules(documents: list[chartkit.Manifest]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['kind']}/{doc['metadata']['name']}", rule)
        for doc in documents
        if doc["kind"] in ("Role", "ClusterRole")
        for rule in doc.get("rules") or []
    ]


def rbac_problems(documents: list[chartkit.Manifest]) -> list[str]:
    problems = []
    for where, rule in _rbac_rules(documents):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            if any("*" in item for item in rule.get(field) or []):
                problems.append(f"{where}: wildcard in {field}")
        resources = set(rule.get("resources") or [])
        if resources & {"secrets", "secrets/*"} and set(rule["verbs"]) & {"get", "list", "watch"}:
            problems.append(f"{where}: reads secrets")
        if set(rule["verbs"]) & {"escalate", "bind", "impersonate"}:
            problems.append(f"{where}: {sorted(set(rule['verbs']) & {'escalate', 'bind', 'impersonate'})}")
        if resources & {"pods/exec", "pods/attach", "nodes", "nodes/proxy", "serviceaccounts/token"}:
            problems.append(f"{where}: {sorted(resources)}")
    return problems


@pytest.mark.parametrize("name", SETS)
def test_rbac_has_no_wildcards_and_never_reads_secrets(name: str) -> None:
    assert rbac_problems(manifests(VALUE_SETS[name])) == []


def test_the_rbac_check_can_fail() -> None:
    documents = manifests({})
    role = next(d for d in documents if d["kind"] == "ClusterRole")
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})
    role["rules"].append({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]})
    assert len(rbac_problems(documents)) == 2


def _verbs(documents: list[chartkit.Manifest], group: str, resource: str) -> set[str]:
    return {
        verb
        for _, rule in _rbac_rules(documents)
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


# What the operator's RBAC must and may grant: tests/chart/test_rbac_needs.py, evaluated as RBAC evaluates it.


def test_leader_election_gets_its_lease_in_the_release_namespace_and_the_pod_its_name() -> None:
    documents = manifests({})
    role = next(r for r in of_kind(documents, "Role") if r["metadata"]["name"] == "kubetune-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE  # a Role: no Lease anywhere else
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["kubetune-operator"],
            "verbs": ["get", "patch"],
        },
    ]
    binding = next(
        b for b in of_kind(documents, "RoleBinding") if b["metadata"]["name"] == "kubetune-leader-election"
    )
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": NAMESPACE}]
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert fields == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    assert env_of(pod["containers"][0])["KUBETUNE_LEADER_ELECTION"] == "true"
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    budget = one(documents, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == one(documents, "Deployment")["spec"]["selector"]["matchLabels"]
    )


def test_one_replica_without_leader_election_is_recreated_and_needs_no_lease() -> None:
    documents = manifests({"replicas": 1, "operator": {"leaderElection": {"enabled": False}}})
    deployment = one(documents, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two operators at once
    assert of_kind(documents, "PodDisruptionBudget") == []
    assert not [r for r in of_kind(documents, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["KUBETUNE_LEADER_ELECTION"] == "false" and "POD_NAMESPACE" not in env


def test_several_replicas_without_leader_election_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"replicas > 1 needs operator\.leaderElection\.enabled"):
        render({"replicas": 2, "operator": {"leaderElection": {"enabled": False}}})


def test_aggregated_user_roles_only_touch_kubetune_objects() -> None:
    roles = {r["metadata"]["name"]: r for r in of_kind(manifests({}), "ClusterRole")}
    view, edit = roles["kubetune-view"], roles["kubetune-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    for role in (view, edit):
        assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"kubetune.dev"}
