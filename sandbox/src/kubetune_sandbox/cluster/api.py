"""What the sandbox's controllers need from the API: the emulator's thread-safe helpers, as a Protocol.

`EmulatorServer` satisfies it directly; tests may pass a fake. Resources are "group/version/plural"
("v1/pods" for the core group), as the emulator's helpers take them.
"""

from __future__ import annotations

import logging
import random
import string
from collections.abc import Mapping
from typing import Any, Protocol

Obj = dict[str, Any]
log = logging.getLogger("kubetune_sandbox.cluster")

PODS = "v1/pods"
SERVICES = "v1/services"
CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
JOBS = "batch/v1/jobs"
DEPLOYMENTS = "apps/v1/deployments"


class Cluster(Protocol):
    def get(
        self, resource: str, namespace: str | None, name: str, *, subresource: str | None = None
    ) -> Obj | None: ...

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]: ...

    def create(self, resource: str, body: Mapping[str, Any], namespace: str | None = None) -> Obj: ...

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        patch_type: str = "application/merge-patch+json",
    ) -> Obj: ...

    def delete(
        self, resource: str, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj | None: ...


def is_not_found(error: Exception) -> bool:
    return getattr(error, "code", None) == 404


def random_suffix(length: int = 5) -> str:
    """As the API's generateName: consonants and digits that cannot spell words or look alike."""
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=length))


def safe_status_patch(cluster: Cluster, resource: str, obj: Obj, status: Obj) -> bool:
    """Write an object's status; False (not an error) when the object is gone meanwhile."""
    meta = obj["metadata"]
    try:
        cluster.patch(resource, meta.get("namespace"), meta["name"], {"status": status}, subresource="status")
    except Exception as error:
        if is_not_found(error):
            return False
        raise
    return True


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def letters(text: str) -> str:
    return "".join(c for c in text.lower() if c in string.ascii_lowercase + string.digits + "-")
