"""Bearer-token authentication and RBAC authorization, evaluated as kube-apiserver evaluates them.

The policy is what the emulator stores: Roles, ClusterRoles and their bindings are applied like any
manifest (the chart's, in the sandbox and the integration tests), so a verb missing from the chart
is a 403 here as on a cluster. Requests without a token are the administrator (system:masters), so
tests, controllers and kubectl keep working; an unknown token is 401.

Request attributes are derived from the path and method alone, as kube-apiserver's RequestInfoFactory
does; the rule matching follows k8s.io/kubernetes/pkg/apis/rbac/v1/evaluation_helpers.go and the
subject matching plugin/pkg/auth/authorizer/rbac/rbac.go.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune_sandbox.emulator.store import ApiError, GroupResource, Obj

RBAC_GROUP = "rbac.authorization.k8s.io"
ROLES: GroupResource = (RBAC_GROUP, "roles")
CLUSTER_ROLES: GroupResource = (RBAC_GROUP, "clusterroles")
ROLE_BINDINGS: GroupResource = (RBAC_GROUP, "rolebindings")
CLUSTER_ROLE_BINDINGS: GroupResource = (RBAC_GROUP, "clusterrolebindings")
SERVICE_ACCOUNTS: GroupResource = ("", "serviceaccounts")

AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"  # kube-apiserver's privileged group: allowed everything, whatever RBAC says
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


ADMIN = User("system:admin", (MASTERS, AUTHENTICATED))


def service_account_user(namespace: str, name: str) -> User:
    """The user a ServiceAccount's token authenticates as, with the groups the token authenticator adds."""
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)
    return User(f"system:serviceaccount:{namespace}:{name}", groups)


@dataclass(frozen=True)
class Attributes:
    """What is asked, as kube-apiserver's authorizer sees a request."""

    user: User
    verb: str
    path: str = ""
    resource_request: bool = True
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def resource_and_subresource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
                 "DELETE": "delete"}  # fmt: skip


def request_attributes(user: User, method: str, path: str, params: Mapping[str, str]) -> Attributes:
    """RequestInfoFactory.NewRequestInfo: the verb, group, resource, subresource, namespace and name."""
    method = method.upper()
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:  # /api, /apis/GROUP/VERSION, /version, /openapi/...: not a resource
        return Attributes(user, method.lower(), path=path, resource_request=False)
    verb = _METHOD_VERBS.get(method, "")
    if rest[0] == "watch":  # the legacy /watch/ prefix
        verb, rest = "watch", rest[1:]
        if not rest:
            return Attributes(user, method.lower(), path=path, resource_request=False)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name and verb == "get":
        # A list or watch narrowed by metadata.name authorizes as that one object (resourceNames apply).
        for term in (params.get("fieldSelector") or "").split(","):
            key, _, value = term.partition("=")
            if key.strip() == "metadata.name" and not value.startswith("="):
                name = value.strip()
        verb = "watch" if params.get("watch") in ("true", "1") else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, path, True, group, resource, subresource, namespace, name)


# Rules.


def _has(items: Iterable[str] | None, wanted: str) -> bool:
    values = list(items or [])
    return "*" in values or wanted in values


def _resource_matches(rule: Mapping[str, Any], attributes: Attributes) -> bool:
    combined = attributes.resource_and_subresource
    for resource in rule.get("resources") or []:
        if resource in ("*", combined):
            return True
        if attributes.subresource and resource == f"*/{attributes.subresource}":
            return True
    return False


def _url_matches(rule: Mapping[str, Any], path: str) -> bool:
    for url in rule.get("nonResourceURLs") or []:
        if url in ("*", path) or (url.endswith("*") and path.startswith(url[:-1])):
            return True
    return False


def rule_allows(rule: Mapping[str, Any], attributes: Attributes) -> bool:
    """One PolicyRule against one request (RuleAllows)."""
    if not _has(rule.get("verbs"), attributes.verb):
        return False
    if not attributes.resource_request:
        return _url_matches(rule, attributes.path)
    names = rule.get("resourceNames") or []
    return (
        _has(rule.get("apiGroups"), attributes.group)
        and _resource_matches(rule, attributes)
        and (not names or attributes.name in names)
    )


def subject_matches(subject: Mapping[str, Any], user: User, binding_namespace: str) -> bool:
    """appliesToUser: a RoleBinding's ServiceAccount subject without a namespace means the binding's own."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(namespace) and user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _selected(labels: Mapping[str, str], selector: Mapping[str, Any]) -> bool:
    """A metav1.LabelSelector (matchLabels and matchExpressions), for ClusterRole aggregation."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(operator, False):
            return False
    return True


@dataclass(frozen=True)
class Policy:
    """The RBAC objects stored, indexed for evaluation."""

    roles: Mapping[tuple[str, str], Obj]
    cluster_roles: Mapping[str, Obj]
    role_bindings: tuple[Obj, ...]
    cluster_role_bindings: tuple[Obj, ...]

    @classmethod
    def of(cls, objects: Callable[[GroupResource], list[Obj]]) -> Policy:
        """From a lister: (group, plural) -> every stored object of that resource."""
        return cls(
            roles={(r["metadata"].get("namespace", ""), r["metadata"]["name"]): r for r in objects(ROLES)},
            cluster_roles={r["metadata"]["name"]: r for r in objects(CLUSTER_ROLES)},
            role_bindings=tuple(objects(ROLE_BINDINGS)),
            cluster_role_bindings=tuple(objects(CLUSTER_ROLE_BINDINGS)),
        )

    def cluster_role_rules(self, name: str) -> list[Obj]:
        """A ClusterRole's rules; an aggregated one has those of the ClusterRoles its selectors pick, as the
        aggregation controller would write them."""
        role = self.cluster_roles.get(name)
        if role is None:
            return []
        selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors")
        if not selectors:
            return list(role.get("rules") or [])
        return [
            rule
            for other_name, other in sorted(self.cluster_roles.items())
            if other_name != name
            and any(_selected(other["metadata"].get("labels") or {}, s) for s in selectors)
            for rule in other.get("rules") or []
        ]

    def _bound_rules(self, binding: Obj, namespace: str) -> list[Obj]:
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            return self.cluster_role_rules(ref.get("name", ""))
        if ref.get("kind") == "Role" and namespace:  # a ClusterRoleBinding cannot refer to a Role
            return list((self.roles.get((namespace, ref.get("name", ""))) or {}).get("rules") or [])
        return []

    def allows(self, attributes: Attributes) -> bool:
        """VisitRulesFor: ClusterRoleBindings everywhere, then the RoleBindings of the request's namespace."""
        if MASTERS in attributes.user.groups:
            return True
        scoped = [(b, "") for b in self.cluster_role_bindings]
        if attributes.namespace:
            scoped += [(b, attributes.namespace) for b in self.role_bindings
                       if b["metadata"].get("namespace") == attributes.namespace]  # fmt: skip
        for binding, namespace in scoped:
            if not any(subject_matches(s, attributes.user, namespace) for s in binding.get("subjects") or []):
                continue
            if any(rule_allows(rule, attributes) for rule in self._bound_rules(binding, namespace)):
                return True
        return False


def forbidden(attributes: Attributes) -> ApiError:
    """403 as kube-apiserver words it (responsewriters.forbiddenMessage inside errors.NewForbidden)."""
    user = attributes.user.name
    if not attributes.resource_request:
        return ApiError(
            403, "Forbidden", f'forbidden: User "{user}" cannot {attributes.verb} path "{attributes.path}"'
        )
    what = f'User "{user}" cannot {attributes.verb} resource "{attributes.resource_and_subresource}"'
    what += f' in API group "{attributes.group}"'
    what += f' in the namespace "{attributes.namespace}"' if attributes.namespace else " at the cluster scope"
    qualified = f"{attributes.resource}.{attributes.group}" if attributes.group else attributes.resource
    subject = f'{qualified} "{attributes.name}"' if attributes.name else qualified
    details = {"name": attributes.name, "group": attributes.group, "kind": attributes.resource}
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {what}", details)


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


# The part of kube-apiserver's bootstrap policy every authenticated client relies on: discovery.
BOOTSTRAP: tuple[tuple[GroupResource, Obj], ...] = (
    (CLUSTER_ROLES, {
        "apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": "system:discovery"},
        "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi",
                                       "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
    }),
    (CLUSTER_ROLE_BINDINGS, {
        "apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:discovery"},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "system:discovery"},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": AUTHENTICATED}],
    }),
)  # fmt: skip


class Authorization:
    """Tokens and decisions. A token names a ServiceAccount (valid while it exists) or a plain user."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[User, tuple[str, str] | None]] = {}
        self.allowed: collections.Counter[str] = collections.Counter()  # user -> requests allowed
        self.denied: list[Attributes] = []  # every request refused, in order

    def issue_token(self, user: User, service_account: tuple[str, str] | None = None) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (user, service_account)
        return token

    def service_account_token(self, namespace: str, name: str) -> str:
        return self.issue_token(service_account_user(namespace, name), (namespace, name))

    def authenticate(self, header: str | None, service_account_exists: Callable[[str, str], bool]) -> User:
        """The request's user: the administrator without credentials; 401 for a token not known (or whose
        ServiceAccount is gone, as the service-account token authenticator checks)."""
        if not header:
            return ADMIN
        scheme, _, token = header.partition(" ")
        entry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or (entry[1] is not None and not service_account_exists(*entry[1])):
            raise unauthorized()
        return entry[0]

    def authorize(self, attributes: Attributes, policy: Callable[[], Policy]) -> None:
        """Record the decision; 403 Forbidden if no binding's rule allows the request. The policy is read
        only for users outside system:masters."""
        if MASTERS in attributes.user.groups or policy().allows(attributes):
            self.allowed[attributes.user.name] += 1
            return
        self.denied.append(attributes)
        raise forbidden(attributes)

    def denied_messages(self, user: str | None = None) -> list[str]:
        return [forbidden(a).message for a in self.denied if user in (None, a.user.name)]
