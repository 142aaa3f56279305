"""Two real operator replicas compete for one Lease in the emulator: only the holder reconciles; a SIGKILLed
leader is replaced once its lease runs out, a SIGTERMed one hands over at once, and the job finishes with
one of each child."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.chart.chartkit import NAMESPACE
from tests.integration.harness import Api, OperatorProcess
from tests.integration.test_finetunejob_operator import _job
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK

LEASE = "kubetune-operator"  # the one Lease the chart's Role lets the operator touch
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE}"
LEASE_SECONDS = 4
# A replica that stops leading may go unnoticed for a lease; each candidate retries every second (+20%).
TAKEOVER_LIMIT = LEASE_SECONDS + 4.0  # measured: 4.4-5.4 s


@pytest.fixture(autouse=True)
def no_lease(api: Api) -> None:
    """Each test starts with no Lease (as after a fresh install); an earlier test's may still be held."""
    api.http.delete(api.url + LEASE_PATH, timeout=10)


def _replicas(kubeconfig: Path, tmp_path: Path, lease_seconds: int = LEASE_SECONDS):
    """Two replicas as the chart runs them: in the release namespace, under the chart's RBAC."""
    timing = {
        "KUBETUNE_LEADER_ELECTION": "true",
        "POD_NAMESPACE": NAMESPACE,
        "KUBETUNE_LEASE_DURATION_SECONDS": str(lease_seconds),
        "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS": str(lease_seconds - 1),
        "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS": "1",
    }
    return {
        name: OperatorProcess(kubeconfig, tmp_path / f"{name}.log", {**timing, "POD_NAME": name})
        for name in ("replica-a", "replica-b")
    }


def _lease(api: Api) -> dict[str, Any]:
    response = api.http.get(api.url + LEASE_PATH, timeout=10)
    return response.json().get("spec") or {} if response.status_code == 200 else {}


def _holder(api: Api, among: set[str]) -> str:
    return api.wait_for(
        f"one of {sorted(among)} to hold the lease",
        lambda: _lease(api).get("holderIdentity") in among and _lease(api)["holderIdentity"],
        timeout=30,
    )


def _reconciled(log: Path, name: str) -> bool:
    return name in log.read_text(errors="replace")


def test_only_the_leader_reconciles_and_a_killed_leader_is_replaced_without_duplicates(
    api: Api, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    name = "ha-kill"
    replicas = _replicas(operator_kubeconfig, tmp_path)
    for replica in replicas.values():
        replica.start()
    try:
        leader = _holder(api, set(replicas))
        standby = next(n for n in replicas if n != leader)
        api.create(_job(name))
        api.wait_job(f"{name}-validate")
        time.sleep(2 * LEASE_SECONDS)  # long enough for a second reconciler to act, were there one
        assert _lease(api)["holderIdentity"] == leader  # renewed, never lost
        assert _reconciled(replicas[leader].log, name)
        assert not _reconciled(replicas[standby].log, name), "the standby reconciled"
        # It may still be starting on a loaded machine: what matters is that it waits, not when it said so.
        api.wait_for(f"{standby} to stand by", lambda: "standing by" in replicas[standby].log.read_text())

        replicas[leader].kill()  # no release: the standby must wait the lease out
        killed = time.monotonic()
        api.finish_job(f"{name}-validate", VALIDATION_OK)  # the world moves on while nobody leads
        assert _holder(api, {standby}) == standby
        took_over = time.monotonic() - killed
        assert took_over <= TAKEOVER_LIMIT, f"the standby took {took_over:.1f}s to take over"
        spec = _lease(api)
        assert spec["leaseTransitions"] >= 1 and spec["leaseDurationSeconds"] == LEASE_SECONDS

        api.wait_job(f"{name}-train")
        assert _reconciled(replicas[standby].log, name)
        api.run_pod(f"{name}-train", "Running")
        api.finish_job(f"{name}-train", TRAINING_OK, index=1)
        api.wait_job(f"{name}-finish")
        api.finish_job(f"{name}-finish", FINISH_OK)
        api.wait_phase(name, "Succeeded")
    finally:
        for replica in replicas.values():
            replica.stop()
    api.assert_one_of_each_child(name)


def test_a_leader_stopped_cleanly_hands_over_before_its_lease_would_expire(
    api: Api, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    lease_seconds = 20  # a hand-over by expiry would take this long; a release takes a retry period or two
    replicas = _replicas(operator_kubeconfig, tmp_path, lease_seconds)
    for replica in replicas.values():
        replica.start()
    try:
        leader = _holder(api, set(replicas))
        standby = next(n for n in replicas if n != leader)
        api.wait_for(f"{standby} to stand by", lambda: "standing by" in replicas[standby].log.read_text())
        stopping = time.monotonic()
        replicas[leader].stop()  # SIGTERM, as the kubelet sends on a rollout or drain
        assert replicas[leader].process is not None and replicas[leader].process.returncode == 0
        assert _holder(api, {standby}) == standby
        handed_over = time.monotonic() - stopping
        # Measured ~1.1 s; up to ~5.6 s when a handler was running at the SIGTERM (Kopf gives running handlers
        # 5 s to finish, and the Lease is released only after they have).
        assert handed_over < lease_seconds / 2, f"the hand-over took {handed_over:.1f}s"
        assert "released the lease" in replicas[leader].log.read_text()
    finally:
        for replica in replicas.values():
            replica.stop()


class ServedReplica(OperatorProcess):
    """A replica with its real health and metrics ports, as the chart runs it."""

    def __init__(self, kubeconfig: Path, log: Path, env: dict[str, str], health_port: int) -> None:
        super().__init__(kubeconfig, log, env)
        self.health_port = health_port

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBETUNE_SCRAPE_PROGRESS": "false",
            **self.extra_env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetune.cli.main", "operator", f"--health-port={self.health_port}", "--no-json-logs"],
            env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None


def test_both_replicas_are_healthy_and_the_metric_says_which_leads(
    api: Api, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    replicas = {}
    for name, env in _replicas(operator_kubeconfig, tmp_path).items():
        metrics = _free_port()
        replica = ServedReplica(
            operator_kubeconfig,
            tmp_path / f"{name}.log",
            {**env.extra_env, "KUBETUNE_METRICS_PORT": str(metrics)},
            _free_port(),
        )
        replicas[name] = (replica, metrics)
        replica.start()
    try:
        leader = _holder(api, set(replicas))
        for name, (replica, metrics) in replicas.items():
            health = api.wait_for(
                f"{name}'s /healthz", lambda r=replica: _get(f"http://127.0.0.1:{r.health_port}/healthz")
            )
            assert health.status_code == 200, health.text
            if name != leader:
                assert health.json() == {"leader": False, "status": "standing by"}
            expected = "kubetune_leader 1.0" if name == leader else "kubetune_leader 0.0"
            api.wait_for(
                f"{name} to report {expected}",
                lambda m=metrics, e=expected: (
                    (r := _get(f"http://127.0.0.1:{m}/metrics")) is not None and e in r.text.splitlines()
                ),
            )
    finally:
        for replica, _ in replicas.values():
            replica.stop()


def test_a_leader_whose_lease_is_taken_stops_reconciling_and_exits_to_restart_as_a_standby(
    api: Api, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    replica = _replicas(operator_kubeconfig, tmp_path)["replica-a"]
    replica.start()
    try:
        assert _holder(api, {"replica-a"}) == "replica-a"
        response = api.http.patch(
            api.url + LEASE_PATH,
            json={"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3600}},
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert replica.process is not None
        # It notices at its next renewal (1 s), then gives Kopf at most duration - deadline (1 s) to stop.
        assert replica.process.wait(timeout=15) == 3
        log = replica.log.read_text()
        assert "is now held by intruder: stopping the operator" in log
        assert _lease(api)["holderIdentity"] == "intruder"  # never released: not its own
    finally:
        replica.stop()
