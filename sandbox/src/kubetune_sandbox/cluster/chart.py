"""The operator's identity from the Helm chart: its ServiceAccount, (Cluster)Roles and bindings, rendered with
helm-python-sdk (Helm 4 embedded) and applied to the emulator, so the operator runs with exactly the
permissions a `helm install` would give it and a verb missing from the chart is a 403.

The chart is read from the source tree (charts/kubetune beside sandbox/), as the quickstart reads examples/.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kubetune_sandbox.cluster.api import Cluster, Obj
from kubetune_sandbox.cluster.seed import SandboxError

CHART = Path(__file__).resolve().parents[4] / "charts" / "kubetune"
RELEASE = "kubetune"
OPERATOR_NAMESPACE = "kubetune-system"
RBAC_RESOURCES = {
    "ServiceAccount": "v1/serviceaccounts",
    "ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "rbac.authorization.k8s.io/v1/roles",
    "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings",
}


def render(
    values: Mapping[str, Any] | None = None,
    *,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = OPERATOR_NAMESPACE,
) -> list[Obj]:
    """Every object `helm template` would print for these values."""
    try:
        import helm_python as helm
    except ImportError as error:
        raise SandboxError(
            "rendering the chart's RBAC needs helm-python-sdk: pip install -e '.[sandbox]'"
        ) from error
    if not (chart / "Chart.yaml").is_file():
        raise SandboxError(
            f"no Helm chart at {chart}: the sandbox applies the chart's RBAC from the source tree"
        )
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(dict(values or {}), name=release, namespace=namespace, is_install=True)
    return [
        document
        for template, text in sorted(rendered.items())
        if not template.endswith("NOTES.txt")
        for document in yaml.safe_load_all(text)
        if document
    ]


def operator_rbac(documents: Iterable[Obj]) -> list[Obj]:
    """The ServiceAccount, Roles and bindings among rendered objects, in the order they are applied."""
    order = list(RBAC_RESOURCES)
    return sorted(
        (d for d in documents if d.get("kind") in RBAC_RESOURCES), key=lambda d: order.index(d["kind"])
    )


def apply(cluster: Cluster, documents: Iterable[Obj]) -> tuple[str, str]:
    """Create the objects (namespaces must exist); returns the ServiceAccount's (namespace, name)."""
    service_account = None
    for document in documents:
        namespace = (document.get("metadata") or {}).get("namespace")
        cluster.create(RBAC_RESOURCES[document["kind"]], document, namespace)
        if document["kind"] == "ServiceAccount":
            service_account = (str(namespace), str(document["metadata"]["name"]))
    if service_account is None:
        raise SandboxError(
            "the chart rendered no ServiceAccount for the operator (serviceAccount.create: false?)"
        )
    return service_account


def operator_kubeconfig(server: Any, path: Path, documents: Iterable[Obj]) -> Path:
    """Apply the operator's RBAC to an authorizing `EmulatorServer` and write a kubeconfig holding its
    ServiceAccount's token: what the operator's pod would authenticate as."""
    namespace, name = apply(server, operator_rbac(documents))
    return Path(server.kubeconfig(path, token=server.service_account_token(namespace, name)))
