"""The sandbox's Job and Deployment controllers, kubelet and Service proxy against the API emulator,
with tiny shell commands as containers."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetune.api.common import ResourceIdentity
from tests.sandbox.conftest import (
    SH_IMAGE,
    VENV_IMAGE,
    job_condition,
    job_pods,
    pid_alive,
    pod_log,
    sh_job,
    wait_for,
)

JOBS, PODS = "batch/v1/jobs", "v1/pods"


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_job_runs_a_real_process_and_reports_its_exit_and_message(cluster: Any) -> None:
    cluster.create("v1/configmaps", {"metadata": {"name": "cfg"}, "data": {"a.json": '{"x": 1}'}}, "default")
    script = 'cat /etc/cfg/a.json > "$KUBETUNE_TERMINATION_LOG"; echo "hello $(GREETING) from $POD"'
    body = sh_job(
        "hello",
        script,
        container={
            "env": [
                {"name": "KUBETUNE_TERMINATION_LOG", "value": "/dev/termination-log"},
                {"name": "GREETING", "value": "world"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ],
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}],
        },
        pod={"volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]},
    )
    cluster.create(JOBS, body, "default")
    wait_for("Complete", lambda: job_condition(cluster, "hello", "Complete"))
    (pod,) = job_pods(cluster, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["podIP"].startswith("127.1.")
    state = terminated(pod)
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert json.loads(state["message"]) == {"x": 1}
    assert pod_log(cluster, pod).strip() == f"hello world from {pod['metadata']['name']}"  # pods/log
    job = cluster.get(JOBS, "default", "hello")
    assert job["status"]["succeeded"] == 1 and job["status"]["completionTime"]
    assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "hello"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]


def test_failures_retry_until_the_backoff_limit(cluster: Any) -> None:
    cluster.create(JOBS, sh_job("flaky", "echo broken >&2; exit 3", backoffLimit=1,
                                container={"terminationMessagePolicy": "FallbackToLogsOnError"}), "default")  # fmt: skip
    failed = wait_for("Failed", lambda: job_condition(cluster, "flaky", "Failed"))
    assert failed["reason"] == "BackoffLimitExceeded"
    pods = job_pods(cluster, "flaky")
    assert len(pods) == 2
    for pod in pods:
        state = terminated(pod)
        assert state["exitCode"] == 3 and state["reason"] == "Error"
        assert state["message"] == "broken"  # FallbackToLogsOnError: the log's tail


def test_pod_failure_policy_fails_at_once_on_a_bad_input_exit_code(cluster: Any) -> None:
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [2]}}
        ]
    }
    cluster.create(JOBS, sh_job("invalid", "exit 2", backoffLimit=5, podFailurePolicy=policy), "default")
    failed = wait_for("Failed", lambda: job_condition(cluster, "invalid", "Failed"))
    assert failed["reason"] == "PodFailurePolicy"
    assert len(job_pods(cluster, "invalid")) == 1


def test_indexed_job_gives_each_pod_its_index(cluster: Any) -> None:
    body = sh_job("indexed", 'echo "$JOB_COMPLETION_INDEX" > "$KUBETUNE_TERMINATION_LOG"',
                  completionMode="Indexed", completions=3, parallelism=3)  # fmt: skip
    cluster.create(JOBS, body, "default")
    wait_for("Complete", lambda: job_condition(cluster, "indexed", "Complete"))
    messages = sorted(terminated(p)["message"].strip() for p in job_pods(cluster, "indexed"))
    assert messages == ["0", "1", "2"]
    assert cluster.get(JOBS, "default", "indexed")["status"]["completedIndexes"] == "0-2"


def test_deadline_and_suspend(cluster: Any) -> None:
    cluster.create(JOBS, sh_job("sleepy", "sleep 60", suspend=True), "default")
    wait_for("Suspended", lambda: job_condition(cluster, "sleepy", "Suspended"))
    time.sleep(0.5)
    assert job_pods(cluster, "sleepy") == []  # no pods while suspended
    cluster.patch(JOBS, "default", "sleepy", {"spec": {"suspend": False}})
    wait_for(
        "a running pod",
        lambda: [p for p in job_pods(cluster, "sleepy") if p["status"].get("phase") == "Running"],
    )
    cluster.patch(JOBS, "default", "sleepy", {"spec": {"suspend": True}})
    wait_for("its pods deleted", lambda: not job_pods(cluster, "sleepy"))
    assert not job_condition(cluster, "sleepy", "Failed")  # a suspension is not a failure


def test_deleting_a_pod_kills_its_process_and_the_job_retries(cluster: Any) -> None:
    # The trap shows SIGTERM arrives first (the grace period) and the process group goes with it.
    script = "trap 'echo got-term; exit 143' TERM; sleep 60 & wait"
    cluster.create(JOBS, sh_job("victim", script, backoffLimit=2), "default")
    pod = wait_for("running", lambda: next(iter(p for p in job_pods(cluster, "victim")
                                                if p["status"].get("phase") == "Running"), None))  # fmt: skip
    log = wait_for("its log file", lambda: cluster.emulator.pod_log_source(pod, "main"))
    pids = wait_for("its pid", lambda: _pids_with_log(log))
    cluster.delete(PODS, "default", pod["metadata"]["name"])
    wait_for("the process to die", lambda: not any(pid_alive(pid) for pid in pids), timeout=10)
    assert "got-term" in log.read_text()
    replacement = wait_for("a replacement pod", lambda: [p for p in job_pods(cluster, "victim")
                                                         if p["metadata"]["uid"] != pod["metadata"]["uid"]])  # fmt: skip
    assert replacement
    wait_for(
        "failed counted", lambda: (cluster.get(JOBS, "default", "victim")["status"].get("failed") or 0) >= 1
    )
    cluster.delete(JOBS, "default", "victim", propagation_policy="Background")


def _pids_with_log(log: Path) -> list[int]:
    """Processes whose stdout is this log file (the container's shell and its children)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(proc / "fd" / "1").resolve() == log.resolve():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _web_deployment(name: str, version: str, replicas: int = 1) -> dict[str, Any]:
    # A tiny HTTP server answering its version; bound to 0.0.0.0, which the kubelet maps to the pod's IP.
    server = (
        "import http.server,sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        self.send_response(200); self.end_headers(); self.wfile.write(b'{version}')\n"
        "    def log_message(self,*a): pass\n"
        "http.server.HTTPServer((sys.argv[1], 8080), H).serve_forever()\n"
    )
    container = {
        "name": "web",
        "image": SH_IMAGE,
        "command": [sys.executable, "-c", server, "0.0.0.0"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"terminationGracePeriodSeconds": 2,
                                                                   "containers": [container]}},
        },
    }  # fmt: skip


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_deployment_and_service_forward_to_ready_pods_and_roll_out_changes(cluster: Any) -> None:
    cluster.create("apps/v1/deployments", _web_deployment("web", "v1", replicas=2), "default")
    service = {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                                                      "ports": [{"port": 80, "targetPort": "http"}]}}  # fmt: skip
    cluster.create("v1/services", service, "default")

    def ready(expected: int) -> bool:
        status = cluster.get("apps/v1/deployments", "default", "web").get("status") or {}
        return status.get("readyReplicas") == expected and status.get("updatedReplicas") == expected

    wait_for("2 ready replicas", lambda: ready(2))
    ip = wait_for(
        "a clusterIP", lambda: cluster.get("v1/services", "default", "web")["spec"].get("clusterIP")
    )
    assert ip.startswith("127.2.")
    assert wait_for("the service to answer", lambda: _try(f"http://{ip}:80/")) == "v1"
    pod_ips = {p["status"]["podIP"] for p in cluster.list(PODS, "default", label_selector="app=web")}
    assert len(pod_ips) == 2  # each pod on its own address, same port

    cluster.patch(
        "apps/v1/deployments",
        "default",
        "web",
        {"spec": {"template": _web_deployment("web", "v2", 2)["spec"]["template"]}},
    )
    wait_for("v2 behind the service", lambda: _try(f"http://{ip}:80/") == "v2" and ready(2), timeout=30)
    wait_for(
        "old pods gone", lambda: len(cluster.list(PODS, "default", label_selector="app=web")) == 2, timeout=30
    )
    status = cluster.get("apps/v1/deployments", "default", "web")["status"]
    assert (
        status["observedGeneration"]
        == cluster.get("apps/v1/deployments", "default", "web")["metadata"]["generation"]
    )


def _try(url: str) -> str | None:
    try:
        return _get(url)
    except OSError:
        return None


def test_kubelet_runs_the_pods_command_and_args_as_written_with_the_images_path(cluster: Any) -> None:
    # `python` is found on the image's PATH (its venv's bin first), not swapped for the sandbox's interpreter.
    probe = "import os, sys, kubetune_trainer; print(sys.executable, os.environ['PATH'].split(':')[0], *sys.argv[1:])"
    body = sh_job(
        "verbatim",
        "",
        container={"image": VENV_IMAGE, "command": ["python"], "args": ["-c", probe, "a b", "c"]},
    )
    cluster.create(JOBS, body, "default")
    wait_for("Complete", lambda: job_condition(cluster, "verbatim", "Complete"))
    (pod,) = job_pods(cluster, "verbatim")
    executable, first_on_path, *args = pod_log(cluster, pod).split()
    assert executable.endswith("/bin/python") and executable != sys.executable
    assert first_on_path == str(Path(executable).parent)
    assert args == ["a", "b", "c"]  # as the pod passed them: "a b" is one argument, printed with a space


def test_rendered_multi_gpu_launcher_runs_torch_distributed_and_keeps_the_workers_exit_code(
    cluster: Any,
) -> None:
    """The operator's launcher for gpus > 1 (kubetune.render.finetunejob), through the kubelet: the image's
    venv python starts two workers (gloo-free: they only report), whose bad-input exit 2 fails the Job."""
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.api.trainer_config import TRAINER_PYTHON
    from kubetune.render.finetunejob import EXIT_INVALID_INPUT, _train_command
    from tests.api.conftest import load_example

    spec = FineTuneJobSpec.model_validate(load_example("01-lora-basic/finetunejob.yaml")["spec"])
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus": 2})})
    launcher = _train_command(ResourceIdentity(name="x", namespace="default", uid="u"), spec)
    assert launcher[0] == TRAINER_PYTHON
    worker = (
        "import os, sys\n"
        "print('worker', os.environ['RANK'], sys.executable, flush=True)\n"
        f"sys.exit({EXIT_INVALID_INPUT})\n"
    )
    cluster.create(
        "v1/configmaps", {"metadata": {"name": "worker"}, "data": {"worker.py": worker}}, "default"
    )
    command = [*launcher[: launcher.index("-m", 3)], "/etc/worker/worker.py"]  # the launcher, our script
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In",
                                                              "values": [EXIT_INVALID_INPUT]}}]}  # fmt: skip
    body = sh_job(
        "launcher",
        "",
        backoffLimit=3,
        podFailurePolicy=policy,
        container={"image": VENV_IMAGE, "command": command, "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                   "volumeMounts": [{"name": "worker", "mountPath": "/etc/worker"}]},
        pod={"volumes": [{"name": "worker", "configMap": {"name": "worker"}}]},
    )  # fmt: skip
    cluster.create(JOBS, body, "default")
    failed = wait_for("Failed", lambda: job_condition(cluster, "launcher", "Failed"), timeout=120)
    (pod,) = job_pods(cluster, "launcher")
    assert failed["reason"] == "PodFailurePolicy", pod_log(cluster, pod)[-2000:]
    assert terminated(pod)["exitCode"] == EXIT_INVALID_INPUT
    log = pod_log(cluster, pod)
    workers = sorted(line.split()[1:] for line in log.splitlines() if line.startswith("worker "))
    assert [rank for rank, _ in workers] == ["0", "1"]
    assert all(
        executable.endswith("/bin/python") and executable != sys.executable for _, executable in workers
    )
