"""`pods/log` as kube-apiserver serves it: text/plain from the file a kubelet registered, `container`,
`tailLines` and `follow`, and the API's refusals, through the Python client and the real kubectl. The test
plays the kubelet: it writes the log files and the containers' statuses."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kubetune_sandbox.emulator.server import EmulatorServer

PODS = "v1/pods"


@pytest.fixture
def logs(server: EmulatorServer, tmp_path: Path) -> Iterator[Path]:
    """A kubelet's log directory: DIR/<pod>/<container>.log, registered as the emulator's log source."""

    def source(pod: dict[str, Any], container: str) -> Path | None:
        path = tmp_path / "logs" / pod["metadata"]["name"] / f"{container}.log"
        return path if path.exists() else None

    server.set_pod_log_source(source)
    yield tmp_path / "logs"
    server.set_pod_log_source(None)


def pod(server: EmulatorServer, name: str, *containers: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
    if init:
        spec["initContainers"] = [{"name": c, "image": "busybox"} for c in init]
    return server.create(PODS, {"metadata": {"name": name}, "spec": spec}, "default")


def write(logs: Path, pod_name: str, container: str, text: str) -> Path:
    path = logs / pod_name / f"{container}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
    return path


def set_state(server: EmulatorServer, name: str, container: str, state: dict[str, Any]) -> None:
    status = {"containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "busybox",
                                     "imageID": "", "state": state}]}  # fmt: skip
    server.patch(PODS, "default", name, {"status": status}, subresource="status")


def api_error(call: Any) -> kubernetes.client.ApiException:
    with pytest.raises(kubernetes.client.ApiException) as error:
        call()
    return error.value


def test_the_python_client_reads_a_log_whole_and_its_tail(
    server: EmulatorServer, k8s: kubernetes.client.ApiClient, logs: Path
) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    pod(server, "trainer-0", "trainer")
    write(logs, "trainer-0", "trainer", "step 1\nstep 2\nstep 3\n")
    assert core.read_namespaced_pod_log("trainer-0", "default") == "step 1\nstep 2\nstep 3\n"  # one container
    assert core.read_namespaced_pod_log("trainer-0", "default", container="trainer", tail_lines=2) == (
        "step 2\nstep 3\n"
    )
    assert core.read_namespaced_pod_log("trainer-0", "default", tail_lines=0) == ""


def test_the_log_is_plain_text(server: EmulatorServer, http: Any, logs: Path) -> None:
    pod(server, "plain", "main")
    write(logs, "plain", "main", "héllo\n")
    response = http("GET", "/api/v1/namespaces/default/pods/plain/log")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "héllo\n"


def test_refusals_are_the_apis(server: EmulatorServer, k8s: kubernetes.client.ApiClient, logs: Path) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    missing = api_error(lambda: core.read_namespaced_pod_log("nope", "default"))
    assert (missing.status, missing.reason) == (404, "Not Found")
    assert json.loads(missing.body)["message"] == 'pods "nope" not found'

    pod(server, "two", "model", "sidecar", init=("fetch",))
    unnamed = api_error(lambda: core.read_namespaced_pod_log("two", "default"))
    assert (unnamed.status, json.loads(unnamed.body)["reason"]) == (400, "BadRequest")
    assert json.loads(unnamed.body)["message"] == (
        "a container name must be specified for pod two, choose one of: [model sidecar] "
        "or one of the init containers: [fetch]"
    )
    wrong = api_error(lambda: core.read_namespaced_pod_log("two", "default", container="nope"))
    assert wrong.status == 400
    assert json.loads(wrong.body)["message"] == "container nope is not valid for pod two"

    waiting = api_error(lambda: core.read_namespaced_pod_log("two", "default", container="model"))
    assert waiting.status == 400
    assert (
        json.loads(waiting.body)["message"]
        == 'container "model" in pod "two" is waiting to start: ContainerCreating'
    )

    write(logs, "two", "fetch", "fetched\n")  # an init container's log is readable by name
    assert core.read_namespaced_pod_log("two", "default", container="fetch") == "fetched\n"


def test_follow_streams_until_the_container_terminates(
    server: EmulatorServer, k8s: kubernetes.client.ApiClient, logs: Path
) -> None:
    core = kubernetes.client.CoreV1Api(k8s)
    pod(server, "runner", "main")
    set_state(server, "runner", "main", {"running": {"startedAt": "2026-11-29T10:00:00Z"}})
    path = write(logs, "runner", "main", "first\n")

    def kubelet() -> None:
        time.sleep(0.5)
        with path.open("a") as handle:
            handle.write("second\n")
        time.sleep(0.5)
        with path.open("a") as handle:
            handle.write("last\n")
        set_state(server, "runner", "main", {"terminated": {"exitCode": 0, "reason": "Completed"}})

    thread = threading.Thread(target=kubelet)
    thread.start()
    started = time.monotonic()
    stream = core.read_namespaced_pod_log("runner", "default", follow=True, _preload_content=False)
    lines = [line.decode().rstrip("\n") for line in stream]
    thread.join()
    assert lines == ["first", "second", "last"]
    assert time.monotonic() - started < 20  # it ended with the container, not at a timeout


@pytest.mark.kubectl
def test_kubectl_logs(server: EmulatorServer, logs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": "/dev/null"}

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", "--server", server.url, *args], env=env, capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip

    pod(server, "job-abc", "trainer")
    write(logs, "job-abc", "trainer", "one\ntwo\nthree\n")
    set_state(server, "job-abc", "trainer", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    assert kubectl("logs", "job-abc").stdout == "one\ntwo\nthree\n"
    assert kubectl("logs", "job-abc", "-c", "trainer", "--tail=1").stdout == "three\n"
    assert kubectl("logs", "-f", "job-abc").stdout == "one\ntwo\nthree\n"  # ends: the container terminated
    missing = kubectl("logs", "nope")
    assert missing.returncode != 0 and 'pods "nope" not found' in missing.stderr
