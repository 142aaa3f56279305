"""The emulator's authorizer: request attributes as kube-apiserver derives them, RBAC evaluation, and the
401/403 answers over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from kubetune_sandbox.emulator import rbac
from kubetune_sandbox.emulator.rbac import ADMIN, Attributes, Policy, request_attributes, service_account_user
from kubetune_sandbox.emulator.server import EmulatorServer

SA = service_account_user("kubetune-system", "kubetune")
ALICE = rbac.User("alice", ("developers", rbac.AUTHENTICATED))
RBAC_V1 = "rbac.authorization.k8s.io/v1"


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        ("GET", "/api/v1/namespaces/ns/pods/p", {}, ("get", "", "pods", "", "ns", "p")),
        ("GET", "/api/v1/namespaces/ns/pods", {}, ("list", "", "pods", "", "ns", "")),
        ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "", "pods", "", "", "")),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": "1", "fieldSelector": "metadata.name=p"},
         ("watch", "", "pods", "", "ns", "p")),
        ("GET", "/api/v1/namespaces/ns/pods/p/log", {}, ("get", "", "pods", "log", "ns", "p")),
        ("POST", "/apis/batch/v1/namespaces/ns/jobs", {}, ("create", "batch", "jobs", "", "ns", "")),
        ("PUT", "/apis/apps/v1/namespaces/ns/deployments/d", {}, ("update", "apps", "deployments", "", "ns", "d")),
        ("PATCH", "/apis/kubetune.dev/v1alpha1/namespaces/ns/finetunejobs/j/status", {},
         ("patch", "kubetune.dev", "finetunejobs", "status", "ns", "j")),
        ("DELETE", "/api/v1/namespaces/ns/configmaps/c", {}, ("delete", "", "configmaps", "", "ns", "c")),
        ("DELETE", "/api/v1/namespaces/ns/configmaps", {}, ("deletecollection", "", "configmaps", "", "ns", "")),
        # A namespace is its own namespace; its status is a subresource, not a resource "status" in it.
        ("GET", "/api/v1/namespaces/team-a", {}, ("get", "", "namespaces", "", "team-a", "team-a")),
        ("PUT", "/api/v1/namespaces/team-a/status", {}, ("update", "", "namespaces", "status", "team-a", "team-a")),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {"watch": "true"},
         ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", "", "")),
        ("GET", "/api/v1/watch/namespaces/ns/pods", {}, ("watch", "", "pods", "", "ns", "")),
    ],
)  # fmt: skip
def test_request_attributes_are_derived_like_kube_apiserver(
    method: str, path: str, params: dict[str, str], expected: tuple[str, ...]
) -> None:
    got = request_attributes(SA, method, path, params)
    assert got.resource_request
    assert (got.verb, got.group, got.resource, got.subresource, got.namespace, got.name) == expected


@pytest.mark.parametrize("path", ["/api", "/apis", "/apis/kubetune.dev/v1alpha1", "/version", "/openapi/v3"])
def test_discovery_paths_are_non_resource_requests(path: str) -> None:
    got = request_attributes(SA, "GET", path, {})
    assert not got.resource_request and got.verb == "get" and got.path == path


def _attrs(verb: str, resource: str, *, group: str = "", sub: str = "", ns: str = "team-a", name: str = "",
           user: rbac.User = SA) -> Attributes:  # fmt: skip
    return Attributes(user, verb, "", True, group, resource, sub, ns, name)


@pytest.mark.parametrize(
    ("rule", "attributes", "allowed"),
    [
        ({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}, _attrs("create", "jobs", group="batch"), True),
        ({"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}, _attrs("create", "jobs", group="batch"), False),
        ({"apiGroups": [""], "resources": ["jobs"], "verbs": ["create"]}, _attrs("create", "jobs", group="batch"), False),
        ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, _attrs("delete", "jobs", group="batch"), True),
        # The main resource does not grant its subresources, nor the other way round.
        ({"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs"], "verbs": ["patch"]},
         _attrs("patch", "finetunejobs", group="kubetune.dev", sub="status"), False),
        ({"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["patch"]},
         _attrs("patch", "finetunejobs", group="kubetune.dev", sub="status"), True),
        ({"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["patch"]},
         _attrs("patch", "finetunejobs", group="kubetune.dev"), False),
        ({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}, _attrs("get", "pods", sub="status"), True),
        ({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}, _attrs("get", "pods", sub="log"), False),
        # resourceNames narrow to named requests: a create or a plain list has no name.
        ({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get", "create"]},
         _attrs("get", "configmaps", name="a"), True),
        ({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get", "create"]},
         _attrs("get", "configmaps", name="b"), False),
        ({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get", "create"]},
         _attrs("create", "configmaps"), False),
        ({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}, Attributes(SA, "get", "/apis/batch/v1", False), True),
        ({"nonResourceURLs": ["/api"], "verbs": ["get"]}, Attributes(SA, "get", "/apis", False), False),
        # A non-resource rule grants no resource, and a resource rule no URL.
        ({"nonResourceURLs": ["*"], "verbs": ["*"]}, _attrs("get", "pods"), False),
        ({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, Attributes(SA, "get", "/version", False), False),
    ],
)  # fmt: skip
def test_rule_matching(rule: dict[str, Any], attributes: Attributes, allowed: bool) -> None:
    assert rbac.rule_allows(rule, attributes) is allowed


@pytest.mark.parametrize(
    ("subject", "binding_namespace", "user", "matches"),
    [
        ({"kind": "ServiceAccount", "name": "kubetune", "namespace": "kubetune-system"}, "", SA, True),
        ({"kind": "ServiceAccount", "name": "kubetune", "namespace": "other"}, "", SA, False),
        ({"kind": "ServiceAccount", "name": "kubetune"}, "kubetune-system", SA, True),  # the binding's own
        ({"kind": "ServiceAccount", "name": "kubetune"}, "", SA, False),  # a ClusterRoleBinding needs one
        ({"kind": "Group", "name": "system:serviceaccounts"}, "", SA, True),
        ({"kind": "Group", "name": "system:serviceaccounts:kubetune-system"}, "", SA, True),
        ({"kind": "Group", "name": "system:serviceaccounts:default"}, "", SA, False),
        ({"kind": "User", "name": "system:serviceaccount:kubetune-system:kubetune"}, "", SA, True),
        ({"kind": "User", "name": "alice"}, "", ALICE, True),
        ({"kind": "Group", "name": "developers"}, "", ALICE, True),
        ({"kind": "User", "name": "developers"}, "", ALICE, False),
    ],
)
def test_subject_matching(
    subject: dict[str, str], binding_namespace: str, user: rbac.User, matches: bool
) -> None:
    assert rbac.subject_matches(subject, user, binding_namespace) is matches


def _role(
    kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {
        "apiVersion": RBAC_V1,
        "kind": kind,
        "metadata": meta | extra.pop("metadata", {}),
        "rules": rules,
        **extra,
    }


def _binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict[str, str]], *,
             namespace: str | None = None) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name} | ({"namespace": namespace} if namespace else {})
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}
    return {"apiVersion": RBAC_V1, "kind": kind, "metadata": meta, "roleRef": ref, "subjects": subjects}


SA_SUBJECT = {"kind": "ServiceAccount", "name": "kubetune", "namespace": "kubetune-system"}
JOBS_RULE = {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]}


def _policy(*objects: dict[str, Any]) -> Policy:
    by_kind = {
        rbac.ROLES: "Role",
        rbac.CLUSTER_ROLES: "ClusterRole",
        rbac.ROLE_BINDINGS: "RoleBinding",
        rbac.CLUSTER_ROLE_BINDINGS: "ClusterRoleBinding",
    }
    return Policy.of(lambda resource: [o for o in objects if o["kind"] == by_kind[resource]])


def test_a_role_binding_grants_only_in_its_namespace() -> None:
    policy = _policy(
        _role("Role", "jobs", [JOBS_RULE], "team-a"),
        _binding("RoleBinding", "jobs", "Role", "jobs", [SA_SUBJECT], namespace="team-a"),
    )
    assert policy.allows(_attrs("create", "jobs", group="batch", ns="team-a"))
    assert not policy.allows(_attrs("create", "jobs", group="batch", ns="team-b"))
    assert not policy.allows(
        _attrs("list", "jobs", group="batch", ns="")
    )  # cluster-wide needs a ClusterRoleBinding
    assert not policy.allows(_attrs("delete", "jobs", group="batch", ns="team-a"))


def test_a_role_binding_may_bind_a_cluster_role_into_its_namespace() -> None:
    policy = _policy(
        _role("ClusterRole", "jobs", [JOBS_RULE]),
        _binding("RoleBinding", "jobs", "ClusterRole", "jobs", [SA_SUBJECT], namespace="team-a"),
    )
    assert policy.allows(_attrs("create", "jobs", group="batch", ns="team-a"))
    assert not policy.allows(_attrs("create", "jobs", group="batch", ns="team-b"))


def test_a_cluster_role_binding_grants_everywhere_and_cannot_bind_a_role() -> None:
    cluster_wide = _policy(
        _role("ClusterRole", "jobs", [JOBS_RULE]),
        _binding("ClusterRoleBinding", "jobs", "ClusterRole", "jobs", [SA_SUBJECT]),
    )
    for namespace in ("team-a", "team-b", ""):
        assert cluster_wide.allows(_attrs("get", "jobs", group="batch", ns=namespace))
    to_a_role = _policy(
        _role("Role", "jobs", [JOBS_RULE], "team-a"),
        _binding("ClusterRoleBinding", "jobs", "Role", "jobs", [SA_SUBJECT]),
    )
    assert not to_a_role.allows(_attrs("get", "jobs", group="batch", ns="team-a"))


def test_a_binding_to_a_missing_role_or_another_subject_grants_nothing() -> None:
    policy = _policy(
        _binding("RoleBinding", "jobs", "Role", "absent", [SA_SUBJECT], namespace="team-a"),
        _role("Role", "jobs", [JOBS_RULE], "team-a"),
        _binding(
            "RoleBinding", "alice", "Role", "jobs", [{"kind": "User", "name": "alice"}], namespace="team-a"
        ),
    )
    assert not policy.allows(_attrs("get", "jobs", group="batch"))
    assert policy.allows(_attrs("get", "jobs", group="batch", user=ALICE))


def test_system_masters_is_allowed_everything_without_any_binding() -> None:
    assert _policy().allows(_attrs("delete", "secrets", user=ADMIN))
    assert not _policy().allows(_attrs("get", "pods"))


def test_aggregated_cluster_roles_take_the_rules_of_the_roles_they_select() -> None:
    aggregate = {"clusterRoleSelectors": [{"matchLabels": {"example.com/aggregate-to-jobs": "true"}}]}
    policy = _policy(
        _role("ClusterRole", "jobs-aggregate", [], aggregationRule=aggregate),
        _role(
            "ClusterRole",
            "jobs-part",
            [JOBS_RULE],
            metadata={"labels": {"example.com/aggregate-to-jobs": "true"}},
        ),
        _role("ClusterRole", "pods", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]),
        _binding("ClusterRoleBinding", "jobs", "ClusterRole", "jobs-aggregate", [SA_SUBJECT]),
    )
    assert policy.allows(_attrs("create", "jobs", group="batch"))
    assert not policy.allows(_attrs("get", "pods"))


def test_forbidden_messages_are_worded_as_kube_apiserver_words_them() -> None:
    namespaced = rbac.forbidden(
        _attrs("patch", "finetunejobs", group="kubetune.dev", sub="status", name="j1")
    )
    assert (namespaced.code, namespaced.reason) == (403, "Forbidden")
    assert namespaced.message == (
        'finetunejobs.kubetune.dev "j1" is forbidden: User "system:serviceaccount:kubetune-system:kubetune"'
        ' cannot patch resource "finetunejobs/status" in API group "kubetune.dev" in the namespace "team-a"'
    )
    assert namespaced.details == {"name": "j1", "group": "kubetune.dev", "kind": "finetunejobs"}
    cluster = rbac.forbidden(_attrs("list", "namespaces", ns=""))
    assert cluster.message == (
        'namespaces is forbidden: User "system:serviceaccount:kubetune-system:kubetune" cannot list resource'
        ' "namespaces" in API group "" at the cluster scope'
    )
    path = rbac.forbidden(Attributes(SA, "get", "/metrics", False))
    assert path.message.endswith('cannot get path "/metrics"')


# -- over HTTP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authorizing() -> Any:
    with EmulatorServer(namespaces=("default", "kubetune-system", "team-a"), authorization=True) as server:
        server.create("v1/serviceaccounts", {"metadata": {"name": "kubetune"}}, "kubetune-system")
        server.create(
            f"{RBAC_V1}/roles",
            _role(
                "Role",
                "configmaps",
                [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]}],
            ),
            "team-a",
        )
        server.create(
            f"{RBAC_V1}/rolebindings",
            _binding("RoleBinding", "configmaps", "Role", "configmaps", [SA_SUBJECT]),
            "team-a",
        )
        yield server


def test_over_http_the_token_is_the_service_account_and_rbac_decides(authorizing: EmulatorServer) -> None:
    server = authorizing
    assert server.authorization is not None
    token = server.service_account_token("kubetune-system", "kubetune")
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    configmaps = f"{server.url}/api/v1/namespaces/team-a/configmaps"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    before = server.authorization.allowed[SA.name]

    assert http.get(f"{server.url}/apis").status_code == 200  # discovery, from the bootstrap policy
    assert http.post(configmaps, json=body, timeout=10).status_code == 201
    assert http.get(f"{configmaps}/c", timeout=10).status_code == 200
    assert server.authorization.allowed[SA.name] == before + 3

    denied = http.delete(f"{configmaps}/c", timeout=10)
    assert denied.status_code == 403
    assert denied.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'configmaps "c" is forbidden: User "system:serviceaccount:kubetune-system:kubetune" cannot delete'
                   ' resource "configmaps" in API group "" in the namespace "team-a"',
        "details": {"name": "c", "group": "", "kind": "configmaps"},
    }  # fmt: skip
    elsewhere = http.get(f"{server.url}/api/v1/namespaces/default/configmaps", timeout=10)
    assert elsewhere.status_code == 403 and 'cannot list resource "configmaps"' in elsewhere.json()["message"]
    assert server.get("v1/configmaps", "team-a", "c") is not None  # the refused delete did nothing
    assert server.authorization.denied_messages(SA.name)[-2:] == [
        denied.json()["message"],
        elsewhere.json()["message"],
    ]

    # No credentials: the administrator; a token nobody issued: 401.
    assert requests.delete(f"{configmaps}/c", timeout=10).status_code == 200
    unknown = requests.get(configmaps, headers={"Authorization": "Bearer made-up"}, timeout=10)
    assert unknown.status_code == 401 and unknown.json()["reason"] == "Unauthorized"


def test_a_service_account_token_stops_authenticating_when_the_account_is_deleted(
    authorizing: EmulatorServer,
) -> None:
    server = authorizing
    server.create("v1/serviceaccounts", {"metadata": {"name": "short-lived"}}, "team-a")
    headers = {"Authorization": f"Bearer {server.service_account_token('team-a', 'short-lived')}"}
    assert requests.get(f"{server.url}/version", headers=headers, timeout=10).status_code == 200
    server.delete("v1/serviceaccounts", "team-a", "short-lived")
    assert requests.get(f"{server.url}/version", headers=headers, timeout=10).status_code == 401


def test_rbac_names_are_path_segments_not_dns_names(authorizing: EmulatorServer) -> None:
    """Names with colons (system:…) are valid RBAC names; what a path segment cannot hold is refused."""
    server = authorizing
    assert server.get(f"{RBAC_V1}/clusterroles", None, "system:discovery") is not None
    with pytest.raises(Exception, match="may not contain '/'"):
        server.create(f"{RBAC_V1}/clusterroles", _role("ClusterRole", "a/b", []))
