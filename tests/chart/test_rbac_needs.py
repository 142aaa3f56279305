"""The chart's RBAC against what the operator sends: every (group, resource, verb) its API client and Kopf issue
is allowed for its ServiceAccount, evaluated as kube-apiserver's RBAC authorizer evaluates the rendered Roles and
bindings (kubetune_sandbox.emulator.rbac), and nothing else is granted to it.

The kinds come from the client's own table (kubetune.adapters.kube._PLURALS): a kind added there without a line
in OPERATOR_VERBS fails, so the chart cannot fall behind the client.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.adapters.kube import _PLURALS
from kubetune_sandbox.emulator.rbac import Attributes, Policy, service_account_user
from tests.chart.chartkit import NAMESPACE, RELEASE, VALUE_SETS, manifests

SA = service_account_user(NAMESPACE, RELEASE)
_READ = {"get", "list", "watch"}
_OWN = _READ | {"create", "patch", "delete"}  # the children it creates, patches (adopts, scales) and deletes

# What the operator's client does with each kind it names (it never PUTs: every write is a PATCH).
OPERATOR_VERBS: dict[tuple[str, str], set[str]] = {
    ("v1", "ConfigMap"): _OWN,
    ("v1", "Service"): _OWN,
    ("v1", "Pod"): _READ,  # the trainer's pods, made by the Job controller
    ("v1", "Secret"): set(),  # named in pod specs (storageSecretRef), never read
    ("v1", "Event"): {"create", "patch"},  # Kopf posts events; repeats are patched
    ("batch/v1", "Job"): _OWN,
    ("apps/v1", "Deployment"): _OWN,
    ("policy/v1", "PodDisruptionBudget"): _OWN,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): _OWN,
    ("kubetune.dev/v1alpha1", "FineTuneJob"): _READ | {"patch"},  # Kopf's finalizer and annotations
    ("kubetune.dev/v1alpha1", "ModelDeployment"): _READ | {"patch"},
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _READ | {"patch"},  # a user's route, weights patched
    ("keda.sh/v1alpha1", "ScaledObject"): _OWN,
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): _OWN,
    ("coordination.k8s.io/v1", "Lease"): {"get", "create", "patch"},  # leader election, its own Lease only
}
# Beyond the client's kinds: subresources, and what Kopf itself watches.
SUBRESOURCES_AND_KOPF: dict[tuple[str, str], set[str]] = {
    ("kubetune.dev", "finetunejobs/status"): {"get", "patch"},
    ("kubetune.dev", "modeldeployments/status"): {"get", "patch"},
    # Children's ownerReferences set blockOwnerDeletion, which needs update on the owner's finalizers where
    # the OwnerReferencesPermissionEnforcement admission plugin runs (OpenShift).
    ("kubetune.dev", "finetunejobs/finalizers"): {"update"},
    ("kubetune.dev", "modeldeployments/finalizers"): {"update"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): _READ,  # Kopf's resource scanning
}
OPT_IN = {("keda.sh", "scaledobjects"): "keda", ("gateway.networking.k8s.io", "httproutes"): "gatewayAPI"}
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
RELEASE_NAMESPACED = {("coordination.k8s.io", "leases")}  # only in the operator's own namespace
LEASE_NAME = "kubetune-operator"


def needs(values: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    wanted = {(api_version.rpartition("/")[0], _PLURALS[(api_version, kind)]): verbs
              for (api_version, kind), verbs in OPERATOR_VERBS.items()}  # fmt: skip
    wanted |= SUBRESOURCES_AND_KOPF
    for key, value in OPT_IN.items():
        if not (values.get(value) or {}).get("enabled"):
            wanted[key] = set()
    if values.get("watchNamespaces"):
        wanted[("", "namespaces")] = _READ  # Kopf follows the watched namespaces when not cluster-wide
    return wanted


def _policy(values: dict[str, Any]) -> Policy:
    documents = manifests(values)
    kinds = {"Role": "roles", "ClusterRole": "clusterroles", "RoleBinding": "rolebindings",
             "ClusterRoleBinding": "clusterrolebindings"}  # fmt: skip
    return Policy.of(lambda resource: [d for d in documents if kinds.get(d["kind"]) == resource[1]])


def _asks(group: str, resource: str, verb: str, namespace: str) -> Attributes:
    plural, _, sub = resource.partition("/")
    name = LEASE_NAME if (group, plural) in RELEASE_NAMESPACED else ("x" if sub else "")
    return Attributes(SA, verb, "", True, group, plural, sub, namespace, name)


def _namespaces(values: dict[str, Any], group: str, resource: str) -> list[str]:
    if (group, resource) in CLUSTER_SCOPED:
        return [""]
    if (group, resource) in RELEASE_NAMESPACED:
        return [NAMESPACE]
    return list(values.get("watchNamespaces") or ["team-x", "default"])


def granted(policy: Policy, values: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) some rule bound to the operator's ServiceAccount grants."""
    found = set()
    bindings = [*policy.cluster_role_bindings, *policy.role_bindings]
    for binding in bindings:
        namespace = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == RELEASE for s in binding["subjects"]
        ):
            continue
        rules = (
            policy.cluster_role_rules(ref["name"])
            if ref["kind"] == "ClusterRole"
            else (policy.roles[(namespace, ref["name"])].get("rules") or [])
        )
        for rule in rules:
            found |= {(g, r, v) for g in rule.get("apiGroups", []) for r in rule.get("resources", [])
                      for v in rule["verbs"]}  # fmt: skip
    return found


SETS = ["defaults", "namespaced", "monitoring"]


@pytest.mark.parametrize("name", SETS)
def test_everything_the_operator_sends_is_allowed(name: str) -> None:
    values = VALUE_SETS[name]
    policy = _policy(values)
    refused = [
        (group, resource, verb, namespace)
        for (group, resource), verbs in needs(values).items()
        for verb in verbs
        for namespace in _namespaces(values, group, resource)
        if not policy.allows(_asks(group, resource, verb, namespace))
    ]
    assert refused == []


@pytest.mark.parametrize("name", SETS)
def test_nothing_beyond_what_the_operator_sends_is_granted(name: str) -> None:
    values = VALUE_SETS[name]
    wanted = {(g, r, v) for (g, r), verbs in needs(values).items() for v in verbs}
    assert granted(_policy(values), values) - wanted == set()


def test_the_namespaced_mode_grants_nothing_outside_the_watched_namespaces() -> None:
    values = VALUE_SETS["namespaced"]
    policy = _policy(values)
    assert policy.allows(_asks("batch", "jobs", "create", "team-a"))
    assert not policy.allows(_asks("batch", "jobs", "create", "team-c"))
    assert not policy.allows(_asks("batch", "jobs", "list", ""))  # no cluster-wide list of children


def test_the_lease_is_granted_by_name_only() -> None:
    policy = _policy({})
    assert policy.allows(_asks("coordination.k8s.io", "leases", "patch", NAMESPACE))
    other = Attributes(SA, "patch", "", True, "coordination.k8s.io", "leases", "", NAMESPACE, "someone-elses")
    assert not policy.allows(other)


def test_the_check_notices_a_missing_status_verb() -> None:
    """modeldeployments/status taken out of the rendered ClusterRole: the evaluation refuses its patch."""
    values: dict[str, Any] = {}
    documents = manifests(values)
    for document in documents:
        for rule in document.get("rules") or []:
            if "modeldeployments/status" in rule.get("resources", []) and document["kind"] == "ClusterRole":
                rule["resources"] = [r for r in rule["resources"] if r != "modeldeployments/status"]
    kinds = {"Role": "roles", "ClusterRole": "clusterroles", "RoleBinding": "rolebindings",
             "ClusterRoleBinding": "clusterrolebindings"}  # fmt: skip
    policy = Policy.of(lambda resource: [d for d in documents if kinds.get(d["kind"]) == resource[1]])
    assert not policy.allows(_asks("kubetune.dev", "modeldeployments/status", "patch", "default"))
    assert policy.allows(_asks("kubetune.dev", "finetunejobs/status", "patch", "default"))


def test_every_kind_the_client_names_has_its_verbs_here() -> None:
    assert set(OPERATOR_VERBS) == set(_PLURALS)
