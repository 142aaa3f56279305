"""Drives the real operator (a `kubetune operator` subprocess) against the API emulator; the test plays the
job controller and kubelet by creating pods and patching child status, as a cluster would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

API = "/apis/kubetune.dev/v1alpha1"


class Api:
    """Plain HTTP against the emulator: what a cluster component would send."""

    def __init__(self, url: str, namespace: str = "default") -> None:
        self.url = url
        self.namespace = namespace
        self.http = requests.Session()

    def path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        base = {
            "FineTuneJob": f"{API}/namespaces/{self.namespace}/finetunejobs",
            "ModelDeployment": f"{API}/namespaces/{self.namespace}/modeldeployments",
            "Deployment": f"/apis/apps/v1/namespaces/{self.namespace}/deployments",
            "Job": f"/apis/batch/v1/namespaces/{self.namespace}/jobs",
            "Pod": f"/api/v1/namespaces/{self.namespace}/pods",
            "ConfigMap": f"/api/v1/namespaces/{self.namespace}/configmaps",
            "Service": f"/api/v1/namespaces/{self.namespace}/services",
            "Event": f"/api/v1/namespaces/{self.namespace}/events",
        }[kind]
        return base + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        response = self.http.get(self.url + self.path(kind, name), timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def list(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        response = self.http.get(self.url + self.path(kind), params=params, timeout=10)
        response.raise_for_status()
        return response.json()["items"]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(self.url + self.path(body["kind"]), json=body, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def patch(self, kind: str, name: str, patch: dict[str, Any], sub: str | None = None) -> dict[str, Any]:
        response = self.http.patch(
            self.url + self.path(kind, name, sub),
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def delete(self, kind: str, name: str) -> None:
        self.http.delete(self.url + self.path(kind, name), timeout=10)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    # -- FineTuneJob helpers -----------------------------------------------------------------------

    def status(self, name: str, kind: str = "FineTuneJob") -> dict[str, Any]:
        return (self.get(kind, name) or {}).get("status") or {}

    def condition(self, name: str, condition: str, kind: str = "FineTuneJob") -> dict[str, Any]:
        return next(
            (c for c in self.status(name, kind).get("conditions") or [] if c["type"] == condition), {}
        )

    def wait_phase(
        self, name: str, phase: str, timeout: float = 30.0, kind: str = "FineTuneJob"
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name, kind)
            return status if status.get("phase") == phase else None

        return self.wait_for(
            f"{kind} {name} in phase {phase} (now {self.status(name, kind).get('phase')})", reached, timeout
        )

    def wait_job(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_for(f"Job {name}", lambda: self.get("Job", name), timeout)

    # -- playing the job controller and kubelet ------------------------------------------------------

    def run_pod(self, job_name: str, phase: str, *, state: dict[str, Any] | None = None, index: int = 0,
                conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        job = self.get("Job", job_name)
        assert job is not None
        labels = {
            **job["spec"]["template"]["metadata"]["labels"],
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
        }
        existing = self.get("Pod", f"{job_name}-{index}")
        pod = existing or self.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job_name}-{index}", "labels": labels,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                              "uid": job["metadata"]["uid"], "controller": True}]},
            "spec": job["spec"]["template"]["spec"],
        })  # fmt: skip
        status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.1"}
        if state:
            status["containerStatuses"] = [{"name": "trainer", "state": state, "ready": False, "restartCount": 0,
                                            "image": "trainer", "imageID": ""}]  # fmt: skip
        if conditions:
            status["conditions"] = conditions
        return self.patch("Pod", pod["metadata"]["name"], {"status": status}, sub="status")

    def finish_job(self, job_name: str, summary: dict[str, Any] | None, *, ok: bool = True, index: int = 0,
                   reason: str = "BackoffLimitExceeded", pod_reason: str | None = None) -> None:  # fmt: skip
        terminated: dict[str, Any] = {
            "exitCode": 0 if ok else 1,
            "reason": pod_reason or ("Completed" if ok else "Error"),
        }
        if summary is not None:
            terminated["message"] = json.dumps(summary)
        self.run_pod(job_name, "Succeeded" if ok else "Failed", state={"terminated": terminated}, index=index)
        # As Kubernetes >= 1.31 writes them: the outcome (SuccessCriteriaMet, FailureTarget) before the
        # condition that says the pods are gone (Complete, Failed), with the same reason.
        final, target, why = ("Complete", "SuccessCriteriaMet", "CompletionsReached") if ok else (
            "Failed", "FailureTarget", reason)  # fmt: skip
        conditions = [{"type": kind, "status": "True", "reason": why} for kind in (target, final)]
        counts = {"succeeded": 1} if ok else {"failed": index + 1}
        self.patch(
            "Job", job_name, {"status": {"conditions": conditions, "active": 0, **counts}}, sub="status"
        )

    def events(self, name: str) -> list[str]:
        return [e["reason"] for e in self.list("Event") if e.get("involvedObject", {}).get("name") == name]

    def assert_one_of_each_child(self, name: str) -> None:
        """A FineTuneJob that succeeded once has one Job per stage and one ConfigMap: nothing duplicated."""
        jobs = self.list("Job", f"kubetune.dev/finetunejob={name}")
        assert sorted(j["metadata"]["name"] for j in jobs) == [
            f"{name}-finish",
            f"{name}-train",
            f"{name}-validate",
        ]
        assert len(self.list("ConfigMap", f"kubetune.dev/finetunejob={name}")) == 1


class OperatorProcess:
    """`kubetune operator` as a real subprocess, so it can be SIGKILLed like a crashing pod."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_RESYNC_SECONDS": "2",
            "KUBETUNE_SCRAPE_PROGRESS": "false",
            **self.extra_env,
        }
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli.main", "operator", "--health-port", "0", "--no-json-logs", "--verbose"],
            env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
