from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart import chartkit
from tests.integration.harness import Api, OperatorProcess


@pytest.fixture(scope="module")
def emulator():
    """The API, authorizing every request that carries a token by the RBAC objects stored in it."""
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    namespaces = ("default", chartkit.NAMESPACE)
    with EmulatorServer(crds=all_crds(), namespaces=namespaces, authorization=True) as server:
        yield server


@pytest.fixture(scope="module")
def kubeconfig(emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The administrator's, for kubectl as a user (no token: system:masters)."""
    return emulator.kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture(scope="module")
def operator_kubeconfig(emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's: the chart's ServiceAccount token, with the chart's rendered RBAC applied (defaults:
    cluster-wide), so the operator can do exactly what a `helm install` lets it do."""
    from kubetune_sandbox.cluster import chart

    path = tmp_path_factory.mktemp("kube") / "operator-kubeconfig"
    if emulator.authorization is None:  # a module's own emulator without authorization: the administrator
        return emulator.kubeconfig(path)
    return chart.operator_kubeconfig(emulator, path, chartkit.manifests({}))


@pytest.fixture(scope="module")
def operator(
    operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(autouse=True)
def no_request_is_refused(request: pytest.FixtureRequest, emulator) -> Iterator[None]:
    """A 403 the operator shrugged off is still a verb missing from the chart: it fails the test that saw it
    (a module that refuses on purpose sets REFUSALS_EXPECTED)."""
    authorization = getattr(emulator, "authorization", None)
    before = len(authorization.denied) if authorization is not None else 0
    yield
    if authorization is not None and not getattr(request.module, "REFUSALS_EXPECTED", False):
        refused = authorization.denied_messages()[before:]
        assert not refused, f"the API refused {len(refused)} requests: {sorted(set(refused))}"


@pytest.fixture
def api(emulator) -> Api:
    return Api(emulator.url)
