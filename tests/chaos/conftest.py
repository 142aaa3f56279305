from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubetune.api.crd import all_crds
from kubetune_sandbox.emulator.server import EmulatorServer
from tests.trainer.conftest import moto_server, s3  # S3 over real HTTP, for the storage chaos tests

__all__ = ["moto_server", "s3"]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(crds=all_crds(), history_limit=200_000) as server:
        yield server
