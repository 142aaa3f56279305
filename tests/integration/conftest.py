from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Api, OperatorProcess


@pytest.fixture(scope="module")
def emulator():
    from kubetune.api.crd import all_crds
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer(crds=all_crds()) as server:
        yield server


@pytest.fixture(scope="module")
def kubeconfig(emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return emulator.kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture(scope="module")
def operator(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def api(emulator) -> Api:
    return Api(emulator.url)
