"""The operator under chaos: SIGKILLed at seeded random moments across 52 concurrent FineTuneJob lifecycles,
then behind a proxy that answers 500s and 409s and drops watch streams. Each time: every job reaches its
scenario's terminal state, and no child Job is ever created twice."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp.web
import pytest
import yaml

from kubetune.emulator.server import EmulatorServer
from tests.chaos.lifecycles import Fleet
from tests.chaos.proxy import CUT_STREAM, PASS, Decision, FaultProxy, Respond
from tests.integration.harness import Api, OperatorProcess

SEED = 8
BATCHES, BATCH_SIZE = 2, 26  # 52 lifecycles, each batch in flight at once


def _drive(fleet: Fleet, timeout: float, on_tick: Callable[[], None] = lambda: None) -> None:
    """Play the cluster until every job is terminal; fail naming the stuck ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.play()
        on_tick()
        if fleet.settled():
            return
        time.sleep(0.2)
    stuck = [n for n in fleet.scenarios if fleet.outcome(n)[0] not in ("Succeeded", "Failed")]
    details = {n: {"status": fleet.api.status(n), "scenario": fleet.scenarios[n],
                   "children": [j["metadata"]["name"] for j in fleet.api.list("Job", f"kubetune.dev/finetunejob={n}")],
                   "annotations": (fleet.api.get("FineTuneJob", n) or {}).get("metadata", {}).get("annotations")}
               for n in stuck}  # fmt: skip
    raise AssertionError(f"{len(stuck)} jobs stuck: {json.dumps(details, indent=1)}")


def test_sigkill_at_random_points_across_52_lifecycles(emulator: EmulatorServer, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    api = Api(emulator.url)
    operator = OperatorProcess(emulator.kubeconfig(tmp_path / "kubeconfig"), tmp_path / "operator.log")
    kills = 0
    next_kill = time.monotonic() + rng.uniform(0.3, 1.0)

    def chaos_monkey() -> None:
        nonlocal kills, next_kill
        if time.monotonic() >= next_kill:
            operator.kill()  # SIGKILL: no cleanup, no last status write, writes may be half done
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))  # sometimes the world moves on while nobody watches
            operator.start()
            next_kill = time.monotonic() + rng.uniform(0.3, 1.2)

    operator.start()
    try:
        for batch in range(BATCHES):
            fleet = Fleet.create(api, f"chaos{batch}", BATCH_SIZE, rng)
            fleet.submit(list(fleet.scenarios))
            _drive(fleet, timeout=90, on_tick=chaos_monkey)
            fleet.check()
    finally:
        operator.stop()
    assert kills >= 6, f"only {kills} kills: the test did not exercise restarts"


def _status(code: int, reason: str) -> Respond:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": f"injected by the chaos proxy: {reason}"}  # fmt: skip
    return Respond(code, json.dumps(body).encode())


def _api_faults(rng: random.Random, *, conflict: float, error: float, cut: float):
    def decide(request: aiohttp.web.BaseRequest, body: bytes) -> Decision:
        if not request.path.startswith(("/api/v1/namespaces", "/apis/batch", "/apis/kubetune.dev")):
            return PASS  # discovery and cluster-scoped listings: Kopf's start-up is not under test here
        if request.query.get("watch") in ("true", "1"):
            return CUT_STREAM if rng.random() < cut else PASS
        roll = rng.random()
        if request.method in ("PATCH", "PUT", "POST") and roll < conflict:
            return _status(409, "Conflict")
        if roll > 1 - error:
            return _status(500, "InternalError")
        return PASS

    return decide


def _run_behind_proxy(
    emulator: EmulatorServer, tmp_path: Path, rng: random.Random, decide, jobs: int
) -> None:
    api = Api(emulator.url)
    with FaultProxy(emulator.url, decide, cut_after_seconds=1.5) as proxy:
        kubeconfig = tmp_path / "kubeconfig"
        config = yaml.safe_load(emulator.kubeconfig(kubeconfig).read_text())
        config["clusters"][0]["cluster"]["server"] = proxy.url
        kubeconfig.write_text(yaml.safe_dump(config))
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log")
        operator.start()
        try:
            fleet = Fleet.create(api, f"faulty{rng.randrange(10**6)}", jobs, rng)
            fleet.submit(list(fleet.scenarios))
            _drive(fleet, timeout=90)
        finally:
            operator.stop()
        fleet.check()
        faults = proxy.faults()
    kinds = {decision for _, _, decision in faults}
    assert {"409", "500", CUT_STREAM} <= kinds, f"not every fault was injected: {kinds}"


def test_api_faults_409s_500s_and_dropped_watches_converge(emulator: EmulatorServer, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    _run_behind_proxy(emulator, tmp_path, rng, _api_faults(rng, conflict=0.1, error=0.03, cut=0.5), jobs=12)


@pytest.mark.xfail(
    strict=False, reason="some jobs stay unhandled under heavy API faults: see docs/reliability.md"
)
def test_heavy_api_faults_converge(emulator: EmulatorServer, tmp_path: Path) -> None:
    """12% 500s on every call, 15% 409s on writes, 70% of watch streams dropped: a job is sometimes stuck >90 s
    (never finalized, or its create handler parked behind Kopf's retry delay)."""
    rng = random.Random(SEED + 2)
    _run_behind_proxy(emulator, tmp_path, rng, _api_faults(rng, conflict=0.15, error=0.12, cut=0.7), jobs=12)
