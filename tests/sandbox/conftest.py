"""Fixtures: the API emulator with the sandbox's controllers and kubelet, and a test image mapping.

Test pods use the image `test/sh`, which runs its command as a host program (`sh -c ...`), so every
controller is exercised against the emulator in well under a second per test; `test/venv` is laid out like
the trainer image (a venv at /opt/kubetune, first on PATH).
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.trainer_config import TRAINER_VENV
from kubetune_sandbox.cluster.controllers import DeploymentController, JobController
from kubetune_sandbox.cluster.images import ImageMap, LocalImage
from kubetune_sandbox.cluster.kubelet import Kubelet
from kubetune_sandbox.cluster.services import ServiceProxy

SH_IMAGE = "test/sh"
VENV_IMAGE = "test/venv"


def venv_image(root: Path) -> LocalImage:
    """An image laid out like the trainer's: a venv at TRAINER_VENV (here `root`, which uses this venv's
    interpreter and libraries) first on PATH. Its own directory, not this venv's: a process that runs from it
    ran what the pod said, never a substitute the sandbox picked."""
    prefix = Path(sys.prefix)
    (root / "bin").mkdir()
    (root / "bin" / "python").symlink_to(sys.executable)
    (root / "lib").symlink_to(prefix / "lib")
    shutil.copy(prefix / "pyvenv.cfg", root / "pyvenv.cfg")
    return LocalImage(paths={TRAINER_VENV: str(root)}, path=(f"{TRAINER_VENV}/bin",))


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def cluster(server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The emulator with the sandbox's Job/Deployment controllers, Service proxy and kubelet running."""
    images = ImageMap(
        extra={SH_IMAGE: LocalImage(), VENV_IMAGE: venv_image(tmp_path_factory.mktemp("image"))}
    )
    kubelet = Kubelet(
        server, tmp_path_factory.mktemp("kubelet"), images, poll_seconds=0.1, default_grace_seconds=5
    )
    server.set_pod_log_source(kubelet.log_file)
    components = [kubelet, JobController(server, poll_seconds=0.1), DeploymentController(server, poll_seconds=0.1),
                  ServiceProxy(server, poll_seconds=0.1)]  # fmt: skip
    for component in components:
        component.start()
    yield server
    for component in components:
        component.stop()
    server.set_pod_log_source(None)


def pod_log(server: Any, pod: dict[str, Any], container: str = "main") -> str:
    """A container's log through the API (`pods/log`), as kubectl reads it."""
    meta = pod["metadata"]
    url = f"{server.url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log?container={container}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")


def sh_job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": SH_IMAGE,
        "command": ["sh", "-c", script],
        "env": [{"name": "KUBETUNE_TERMINATION_LOG", "value": "/dev/termination-log"}],
        "terminationMessagePath": "/dev/termination-log",
    }
    container.update(spec.pop("container", {}))
    pod_spec = {"restartPolicy": "Never", "containers": [container], **spec.pop("pod", {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"test": name}}, "spec": pod_spec},
            **spec,
        },
    }


def job_pods(server: Any, name: str) -> list[dict[str, Any]]:
    return server.list("v1/pods", "default", label_selector=f"job-name={name}")


def job_condition(server: Any, name: str, kind: str) -> dict[str, Any] | None:
    job = server.get("batch/v1/jobs", "default", name) or {}
    return next(
        (
            c
            for c in (job.get("status") or {}).get("conditions") or []
            if c["type"] == kind and c["status"] == "True"
        ),
        None,
    )


def pid_alive(pid: int) -> bool:
    try:
        with Path(f"/proc/{pid}/stat").open() as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
