"""ModelDeployment through the real operator: gate, first rollout, canary promotion and rollback, restarts.
The test plays the Deployment controller (readyReplicas) and the benchmark pods (termination messages)."""

from __future__ import annotations

from kubetune.reconcile.modeldeployment import GATE_PASSED, ROLLED_BACK
from tests.api.conftest import load_example, with_changes
from tests.integration.harness import Api
from tests.reconcile.world import FINISH_OK

HEALTHY = {
    "errorRate": "0",
    "p50LatencySeconds": "0.3",
    "p95LatencySeconds": "0.8",
    "outputTokensPerSecond": "150",
}
MD = "ModelDeployment"


def _finetunejob(api: Api, name: str, *, passed: bool) -> None:
    job = with_changes(
        load_example("01-lora-basic/finetunejob.yaml"), {"metadata.name": name, "spec.suspend": True}
    )
    api.create(job)
    api.wait_phase(name, "Suspended")


def _pass(api: Api, name: str, perplexity: str) -> None:
    """Pretend the job ran: what its finishing pod would have reported, written as the operator would."""
    conditions = [
        {"type": t, "status": s, "reason": "Test", "message": m, "lastTransitionTime": "2026-11-29T10:00:00Z"}
        for t, s, m in [
            ("Complete", "True", "done"),
            ("EvaluationPassed", "True", f"perplexity {perplexity}"),
        ]
    ]
    status = {
        "phase": "Succeeded",
        "conditions": conditions,
        "evaluation": {"metrics": {"perplexity": perplexity}},
        **FINISH_OK,
    }
    status.pop("stage"), status.pop("ok")
    status["evaluation"] = {"metrics": {"perplexity": perplexity}, "passed": True}
    api.patch("FineTuneJob", name, {"spec": {"suspend": True}})
    api.patch("FineTuneJob", name, {"status": status}, sub="status")


def _deployment(name: str, job: str, **changes) -> dict:
    base = load_example("05-serve-canary/modeldeployment.yaml")
    return with_changes(base, {"metadata.name": name, "spec.source.checkpoint": None, "spec.source.fineTuneJobRef.name": job,
                               "spec.rollout.analysis.intervalSeconds": 5, **changes})  # fmt: skip


def _clean(obj: dict) -> dict:
    obj["spec"]["source"] = {k: v for k, v in obj["spec"]["source"].items() if v is not None}
    return obj


def _ready(api: Api, name: str, revision: int) -> None:
    deployment = api.wait_for(
        f"Deployment {name}-r{revision}", lambda: api.get("Deployment", f"{name}-r{revision}")
    )
    api.patch(
        "Deployment",
        f"{name}-r{revision}",
        {"status": {"readyReplicas": deployment["spec"]["replicas"]}},
        sub="status",
    )


def _bench(api: Api, job: str, benchmark: dict) -> None:
    api.wait_job(job)
    api.finish_job(job, {"stage": "bench", "ok": True, "benchmark": benchmark})


def _first_revision_ready(api: Api, name: str) -> None:
    _ready(api, name, 1)
    _bench(api, f"{name}-bench-r1", HEALTHY)
    api.wait_for(
        "benchmark in status", lambda: api.status(name, MD).get("benchmark", {}).get("revision") == 1
    )
    api.wait_phase(name, "Ready", kind=MD)


def test_blocked_until_the_job_passes_then_ready_with_benchmark(api: Api, operator) -> None:
    _finetunejob(api, "gate-job", passed=False)
    api.create(_clean(_deployment("gated", "gate-job")))
    api.wait_phase("gated", "Blocked", kind=MD)
    assert api.condition("gated", GATE_PASSED, MD)["reason"] == "SourceNotReady"
    _pass(api, "gate-job", perplexity="9.1")  # above spec.gate.thresholds perplexity max 6.0
    api.wait_for(
        "thresholds reason",
        lambda: api.condition("gated", GATE_PASSED, MD).get("reason") == "ThresholdsNotMet",
    )
    assert "perplexity 9.1 > max 6" in api.condition("gated", GATE_PASSED, MD)["message"]
    assert api.get("Deployment", "gated-r1") is None
    _pass(api, "gate-job", perplexity="3.2")
    _first_revision_ready(api, "gated")
    status = api.status("gated", MD)
    assert status["benchmark"]["p95LatencySeconds"] == "0.8"
    assert status["endpoint"] == "http://gated.default.svc:8000/v1"


def test_canary_promotes_through_every_step_and_a_bad_one_rolls_back(api: Api, operator) -> None:
    _finetunejob(api, "canary-job", passed=True)
    _pass(api, "canary-job", perplexity="3.0")
    api.create(_clean(_deployment("canary", "canary-job", **{"spec.replicas": 4})))
    _first_revision_ready(api, "canary")

    api.patch(MD, "canary", {"spec": {"maxModelLen": 8192}})
    # status.canaryWeight is the effective share: at the 10% step, 1 canary pod beside 4 stable ones is 20%.
    for step, weight in enumerate([20, 50, 100]):
        api.wait_for(f"step {weight}%", lambda w=weight: api.status("canary", MD).get("canaryWeight") == w)
        _ready(api, "canary", 2)
        _bench(api, f"canary-bench-r2-s{step}", HEALTHY)
    api.wait_for("promoted", lambda: api.status("canary", MD).get("stableRevision") == 2, timeout=60)
    api.wait_for("old revision removed", lambda: api.get("Deployment", "canary-r1") is None)

    api.patch(MD, "canary", {"spec": {"maxModelLen": 4096}})
    api.wait_for("revision 3 at 10%", lambda: api.status("canary", MD).get("revision") == 3)
    _ready(api, "canary", 3)
    _bench(api, "canary-bench-r3-s0", {"errorRate": "0.3", "p95LatencySeconds": "0.5"})
    api.wait_phase("canary", "RolledBack", kind=MD)
    assert api.condition("canary", ROLLED_BACK, MD)["reason"] == "ErrorRateTooHigh"
    api.wait_for("canary removed", lambda: api.get("Deployment", "canary-r3") is None)
    assert api.get("Deployment", "canary-r2")["spec"]["replicas"] == 4
    assert "RolledBack" in api.events("canary")
