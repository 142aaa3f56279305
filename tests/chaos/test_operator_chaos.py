"""The operator under chaos: SIGKILLed at seeded lifecycle steps across 52 concurrent FineTuneJob lifecycles,
then behind a proxy that answers 500s and 409s and drops watch streams. Each time: every job reaches its
scenario's terminal state, and no child Job is ever created twice."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp.web
import pytest
import yaml

from kubetune_sandbox.emulator.server import EmulatorServer
from tests.chaos.lifecycles import Fleet
from tests.chaos.proxy import CUT_STREAM, PASS, Decision, FaultProxy, Respond
from tests.integration.harness import Api, OperatorProcess

SEED = 8
BATCHES, BATCH_SIZE = 2, 26  # 52 lifecycles, each batch in flight at once
KILL_GAP = (6, 18)  # lifecycle steps from one SIGKILL to the next
DOWN_STEPS = (0, 4)  # steps the world moves on with no operator (fewer when the pass ends first)
DRIVE_SECONDS = 90  # per batch; each test's waits stay inside pytest's 300 s
HEAVY = os.environ.get("KUBETUNE_CHAOS_HEAVY") == "1"


def _drive(
    fleet: Fleet,
    timeout: float,
    after_step: Callable[[], None] = lambda: None,
    on_tick: Callable[[], None] = lambda: None,
) -> None:
    """Play the cluster until every job is terminal; fail naming the stuck ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.play(after_step)
        on_tick()
        if fleet.settled():
            return
        time.sleep(0.2)
    stuck = [n for n in fleet.scenarios if fleet.outcome(n)[0] not in ("Succeeded", "Failed")]
    details = {n: {"status": fleet.api.status(n), "scenario": fleet.scenarios[n],
                   "children": [j["metadata"]["name"] for j in fleet.api.list("Job", f"kubetune.dev/finetunejob={n}")],
                   "annotations": (fleet.api.get("FineTuneJob", n) or {}).get("metadata", {}).get("annotations")}
               for n in stuck}  # fmt: skip
    raise AssertionError(
        f"{len(stuck)} jobs not Succeeded or Failed after {timeout}s: {json.dumps(details, indent=1)}"
    )


def kill_plan(rng: random.Random, total_steps: int) -> dict[int, int]:
    """The step after which the operator is SIGKILLed -> the step after which it is started again. Steps are
    the child Jobs the test finishes, so the same seed kills at the same points of the lifecycles on any
    machine, however slow; the clock plays no part."""
    assert DOWN_STEPS[1] < KILL_GAP[0]  # restarted before the next kill is due
    plan: dict[int, int] = {}
    step = rng.randint(*KILL_GAP)
    while step <= total_steps:
        plan[step] = step + rng.randint(*DOWN_STEPS)
        step += rng.randint(*KILL_GAP)
    return plan


@dataclass
class ChaosMonkey:
    operator: OperatorProcess
    plan: dict[int, int]
    steps: int = 0
    kills: int = 0
    restart_after: int | None = None

    def after_step(self) -> None:
        self.steps += 1
        if self.steps in self.plan:
            process = self.operator.process
            assert process is not None and process.poll() is None, (
                f"the operator was not running at step {self.steps}: see {self.operator.log}"
            )
            self.operator.kill()  # SIGKILL: no cleanup, no last status write, writes may be half done
            self.kills += 1
            self.restart_after = self.plan[self.steps]
        if self.restart_after is not None and self.steps >= self.restart_after:
            self.restart()

    def restart(self) -> None:
        """After its down steps, or at the end of a pass (with no operator, no further step can come)."""
        if self.restart_after is not None:
            self.operator.start()
            self.restart_after = None


def test_sigkill_at_seeded_lifecycle_steps_across_52_lifecycles(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    api = Api(emulator.url)
    fleets = [Fleet.create(api, f"chaos{batch}", BATCH_SIZE, rng) for batch in range(BATCHES)]
    total_steps = sum(fleet.steps() for fleet in fleets)
    plan = kill_plan(rng, total_steps)
    assert len(plan) >= 6, f"the seed plans only {len(plan)} kills in {total_steps} steps"
    operator = OperatorProcess(emulator.kubeconfig(tmp_path / "kubeconfig"), tmp_path / "operator.log")
    monkey = ChaosMonkey(operator, plan)
    operator.start()
    try:
        for fleet in fleets:
            fleet.submit(list(fleet.scenarios))
            _drive(fleet, DRIVE_SECONDS, after_step=monkey.after_step, on_tick=monkey.restart)
            fleet.check()
    finally:
        operator.stop()
    assert monkey.steps == total_steps, "a child Job was finished more or fewer times than its lifecycle has"
    assert monkey.kills == len(plan), f"{monkey.kills} of the {len(plan)} planned kills happened"


def _status(code: int, reason: str) -> Respond:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": f"injected by the chaos proxy: {reason}"}  # fmt: skip
    return Respond(code, json.dumps(body).encode())


def _api_faults(rng: random.Random, *, conflict: float, error: float, cut: float):
    """Watches, writes and reads each draw from their own seeded stream: the n-th watch (write, read) meets the
    same fate on any machine, however the operator's requests interleave or the test's own draws fall. Each
    resource's first watch is cut, so every watcher has to resume at least once (a watch lives until it is
    cut, so there may be only a few)."""
    watches, writes, reads = (random.Random(rng.getrandbits(64)) for _ in range(3))
    watched: set[str] = set()

    def decide(request: aiohttp.web.BaseRequest, body: bytes) -> Decision:
        if not request.path.startswith(("/api/v1/namespaces", "/apis/batch", "/apis/kubetune.dev")):
            return PASS  # discovery and cluster-scoped listings: Kopf's start-up is not under test here
        if request.query.get("watch") in ("true", "1"):
            if request.path not in watched:
                watched.add(request.path)
                return CUT_STREAM
            return CUT_STREAM if watches.random() < cut else PASS
        if request.method in ("PATCH", "PUT", "POST"):
            roll = writes.random()
            if roll < conflict:
                return _status(409, "Conflict")
        else:
            roll = reads.random()
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
            _drive(fleet, DRIVE_SECONDS)
        finally:
            operator.stop()
        fleet.check()
        faults = proxy.faults()
    kinds = {decision for _, _, decision in faults}
    assert {"409", "500", CUT_STREAM} <= kinds, f"not every fault was injected: {kinds}"


def test_api_faults_409s_500s_and_dropped_watches_converge(emulator: EmulatorServer, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    _run_behind_proxy(emulator, tmp_path, rng, _api_faults(rng, conflict=0.1, error=0.03, cut=0.5), jobs=12)


@pytest.mark.skipif(not HEAVY, reason="heavy API faults take about 90 s: set KUBETUNE_CHAOS_HEAVY=1 to run")
@pytest.mark.xfail(
    strict=False, reason="some jobs stay unhandled under heavy API faults: see docs/reliability.md"
)
def test_heavy_api_faults_converge(emulator: EmulatorServer, tmp_path: Path) -> None:
    """12% 500s on every call, 15% 409s on writes, 70% of watch streams dropped: a job is sometimes stuck >90 s
    (never finalized, or its create handler parked behind Kopf's retry delay)."""
    rng = random.Random(SEED + 2)
    _run_behind_proxy(emulator, tmp_path, rng, _api_faults(rng, conflict=0.15, error=0.12, cut=0.7), jobs=12)
