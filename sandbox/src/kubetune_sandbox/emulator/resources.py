"""The resources served, and how the API names them in errors and validates their metadata."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kmock

from kubetune_sandbox.emulator.store import ApiError, GroupResource

ALL_VERBS = ("create", "delete", "get", "list", "patch", "watch")  # no PUT (update), no deletecollection

NAMESPACES: GroupResource = ("", "namespaces")
CRDS: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")

# (apiVersion, plural, kind, namespaced, short names, subresources) of the built-in resources served: what
# the operator creates and watches, and what Kopf and the sandbox's controllers need.
BUILTINS: tuple[tuple[str, str, str, bool, tuple[str, ...], tuple[str, ...]], ...] = (
    ("v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    ("v1", "configmaps", "ConfigMap", True, ("cm",), ()),
    ("v1", "secrets", "Secret", True, (), ()),
    ("v1", "services", "Service", True, ("svc",), ("status",)),
    ("v1", "pods", "Pod", True, ("po",), ("status",)),
    ("v1", "events", "Event", True, ("ev",), ()),
    ("v1", "serviceaccounts", "ServiceAccount", True, ("sa",), ()),
    ("batch/v1", "jobs", "Job", True, (), ("status",)),
    ("apps/v1", "deployments", "Deployment", True, ("deploy",), ("status",)),
    ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), ("status",)),
    ("autoscaling/v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("hpa",), ("status",)),
    ("coordination.k8s.io/v1", "leases", "Lease", True, (), ()),
    # RBAC: the policy the emulator's authorizer (rbac.py) evaluates, when it is on.
    ("rbac.authorization.k8s.io/v1", "roles", "Role", True, (), ()),
    ("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", True, (), ()),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False, (), ()),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False, (), ()),
    ("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False,
     ("crd", "crds"), ("status",)),
)  # fmt: skip
_CATEGORY_ALL = {"pods", "services", "deployments", "jobs"}
_LABEL_NAMED = {NAMESPACES, ("", "services")}  # names must be DNS-1123 labels, not subdomains

# Server-owned metadata: a client cannot set or change it.
SERVER_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                    "resourceVersion")  # fmt: skip

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*")
DNS_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', start and "
    "end with an alphanumeric character, and be at most 253 long"
)


@dataclass(frozen=True)
class Target:
    """What a resource URL points at, resolved against the served resources."""

    group: str
    version: str
    plural: str
    info: kmock.ResourceInfo
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def storage(self) -> GroupResource:
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def kind(self) -> str:
        return self.info.kind or self.plural.capitalize()

    @property
    def qualified(self) -> str:
        """As the API names resources in messages: `pods`, `finetunejobs.kubetune.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def error(self, code: int, reason: str, message: str, name: str | None = None) -> ApiError:
        """An error about one object, with the details the API gives (the plural as the kind)."""
        name = name or self.name or ""
        return ApiError(code, reason, message, {"name": name, "group": self.group, "kind": self.plural})

    def not_found(self) -> ApiError:
        return self.error(404, "NotFound", f'{self.qualified} "{self.name}" not found')

    def conflict(self) -> ApiError:
        message = (
            f'Operation cannot be fulfilled on {self.qualified} "{self.name}": the object has been modified;'
            " please apply your changes to the latest version and try again"
        )
        return self.error(409, "Conflict", message)

    def invalid(self, name: str, causes: list[tuple[str, str]]) -> ApiError:
        """422 Invalid, with one cause per (field, message) as the API reports them."""
        details = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]
        return ApiError.invalid(self.kind, self.group, name, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def not_found_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def metadata_causes(target: Target, meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The name rules of built-in resources (labels, annotations and finalizers are not validated)."""
    name = str(meta.get("name", ""))
    if target.group == "rbac.authorization.k8s.io":  # path segment names: "system:discovery" is valid
        if name in ("", ".", "..") or "/" in name or "%" in name:
            rule = "may not be '.' or '..' and may not contain '/' or '%'"
            return [("metadata.name", f'Invalid value: "{name}": {rule}')]
        return []
    label_only = target.storage in _LABEL_NAMED
    limit = 63 if label_only else 253
    if len(name) <= limit and (_DNS_LABEL if label_only else DNS_SUBDOMAIN).fullmatch(name):
        return []
    kind, characters = ("RFC 1123 label", "'-'") if label_only else ("RFC 1123 subdomain", "'-' or '.'")
    message = (
        f'Invalid value: "{name}": a lowercase {kind} must consist of lower case alphanumeric characters'
    )
    message += f" or {characters}, start and end with an alphanumeric character, and be at most {limit} long"
    return [("metadata.name", message)]


def builtin_resources() -> Iterator[tuple[kmock.resource, kmock.ResourceInfo]]:
    """The built-in resources, as kmock's registry (`resources`) holds them."""
    for api_version, plural, kind, namespaced, short_names, subresources in BUILTINS:
        group, _, version = api_version.rpartition("/")
        info = kmock.ResourceInfo(
            namespaced=namespaced,
            kind=kind,
            singular=kind.lower(),
            verbs=set(ALL_VERBS),
            shortnames=set(short_names),
            categories={"all"} if plural in _CATEGORY_ALL else set(),
            subresources=set(subresources),
        )
        yield kmock.resource(group, version, plural), info
