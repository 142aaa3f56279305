"""The Job and Deployment controllers a cluster would run, polling the emulator.

Each pass lists the objects and their pods, asks decisions.py what to do and applies it. Polling (every
quarter second) instead of watching keeps them simple and self-healing: a pass never depends on having seen
an event, and the sandbox holds a handful of objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

from kubetune_sandbox.cluster import decisions
from kubetune_sandbox.cluster.api import (
    DEPLOYMENTS,
    JOBS,
    PODS,
    Cluster,
    Obj,
    is_not_found,
    log,
    random_suffix,
    safe_status_patch,
)


class _Loop:
    def __init__(self, name: str, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("%s: sync failed", self._thread.name)
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        raise NotImplementedError


def _owned_pods(pods: list[Obj], uid: str) -> list[Obj]:
    return [p for p in pods if decisions.owned_by(p, uid)]


def _delete_pods(cluster: Cluster, namespace: str, names: list[str]) -> None:
    for name in names:
        try:
            cluster.delete(PODS, namespace, name)
        except Exception as error:
            if not is_not_found(error):
                raise


class JobController(_Loop):
    def __init__(
        self, cluster: Cluster, *, poll_seconds: float = 0.25, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__("sandbox-job-controller", poll_seconds)
        self.cluster = cluster
        self.clock = clock or (lambda: datetime.now(UTC))
        # Pod uids per Job uid: a pod that disappears before it finished counts as failed, unless this
        # controller deleted it (suspend, success, deadline), as the job-tracking finalizer does in a cluster.
        self._known: dict[str, dict[str, str]] = {}
        self._deleted_by_us: set[str] = set()
        self._vanished: dict[str, int] = {}

    def sync(self) -> None:
        pods = self.cluster.list(PODS)
        for job in self.cluster.list(JOBS):
            self.sync_job(job, _owned_pods(pods, job["metadata"]["uid"]))
        live = {j["metadata"]["uid"] for j in self.cluster.list(JOBS)}
        for uid in list(self._known):
            if uid not in live:
                self._known.pop(uid)
                self._vanished.pop(uid, None)

    def sync_job(self, job: Obj, pods: list[Obj]) -> None:
        meta = job["metadata"]
        uid, namespace = meta["uid"], meta.get("namespace", "default")
        known = self._known.setdefault(uid, {})
        present = {p["metadata"]["uid"] for p in pods}
        for pod_uid, phase in list(known.items()):
            if pod_uid not in present:
                known.pop(pod_uid)
                if pod_uid not in self._deleted_by_us and phase not in decisions.TERMINAL_PHASES:
                    self._vanished[uid] = self._vanished.get(uid, 0) + 1
                self._deleted_by_us.discard(pod_uid)
        for pod in pods:
            known[pod["metadata"]["uid"]] = decisions.pod_phase(pod)
        plan = decisions.plan_job(job, pods, vanished=self._vanished.get(uid, 0), now=self.clock())
        by_name = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        self._deleted_by_us.update(by_name[name] for name in plan.delete if name in by_name)
        _delete_pods(self.cluster, namespace, plan.delete)
        for index in plan.create:
            pod = self.cluster.create(PODS, decisions.job_pod(job, index, random_suffix()), namespace)
            known[pod["metadata"]["uid"]] = "Pending"
        if plan.status is not None:
            safe_status_patch(self.cluster, JOBS, job, plan.status)


class DeploymentController(_Loop):
    def __init__(
        self, cluster: Cluster, *, poll_seconds: float = 0.25, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__("sandbox-deployment-controller", poll_seconds)
        self.cluster = cluster
        self.clock = clock or (lambda: datetime.now(UTC))

    def sync(self) -> None:
        pods = self.cluster.list(PODS)
        for deployment in self.cluster.list(DEPLOYMENTS):
            self.sync_deployment(deployment, _owned_pods(pods, deployment["metadata"]["uid"]))

    def sync_deployment(self, deployment: Obj, pods: list[Obj]) -> None:
        namespace = deployment["metadata"].get("namespace", "default")
        plan = decisions.plan_deployment(deployment, pods, now=self.clock())
        _delete_pods(self.cluster, namespace, plan.delete)
        for _ in range(plan.create):
            self.cluster.create(PODS, decisions.deployment_pod(deployment, random_suffix()), namespace)
        if plan.status is not None:
            safe_status_patch(self.cluster, DEPLOYMENTS, deployment, plan.status)
