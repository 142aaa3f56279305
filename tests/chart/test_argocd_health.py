"""The Argo CD health checks in docs/argocd/, run by a real Lua 5.1 interpreter (lupa; Argo CD's gopher-lua
implements Lua 5.1) against sample statuses built from the operator's own phase and condition names."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

from kubetune.api import finetunejob as ftj_api
from kubetune.api import modeldeployment as md_api
from kubetune.reconcile import conditions as c
from kubetune.reconcile import modeldeployment as md

REPO = Path(__file__).resolve().parents[2]
FINETUNEJOB = REPO / "docs" / "argocd" / "health-finetunejob.lua"
MODELDEPLOYMENT = REPO / "docs" / "argocd" / "health-modeldeployment.lua"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    """Run a health script as Argo CD does: `obj` is a global, the chunk returns {status, message}."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    sandbox = lua.globals()
    for unsafe in ("os", "io", "require", "dofile", "loadfile"):  # Argo CD's sandbox has none of these
        sandbox[unsafe] = None
    sandbox.obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script.read_text())
    out = {"status": result["status"], "message": result["message"]}
    assert out["status"] in ARGO_STATUSES, out
    assert isinstance(out["message"], str) and out["message"], out
    return out


def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def resource(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "support-bot", "namespace": "team-a", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = {"observedGeneration": generation, **status}
    return body


def test_the_scripts_know_every_phase_of_the_api() -> None:
    for script, phases in (
        (FINETUNEJOB, typing.get_args(ftj_api.Phase)),
        (MODELDEPLOYMENT, typing.get_args(md_api.Phase)),
    ):
        text = script.read_text()
        for phase in phases:
            assert re.search(rf"\b{phase}\b", text), f"{script.name} does not handle phase {phase}"


# -- FineTuneJob --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["Pending", "Validating", "Queued", "Running", "Evaluating"])
def test_finetunejob_in_flight_is_progressing(phase: str) -> None:
    status = {
        "phase": phase,
        "conditions": [cond(c.ADMITTED, "False", c.QUEUED_BY_KUEUE, "waiting in LocalQueue gpu-team-a")],
    }
    result = health(FINETUNEJOB, resource("FineTuneJob", status))
    assert result["status"] == "Progressing"
    assert result["message"].startswith(phase)


def test_finetunejob_running_reports_its_step() -> None:
    status = {"phase": "Running", "progress": {"step": 1200, "totalSteps": 3750},
              "conditions": [cond(c.RUNNING, "True", c.TRAINING, "training on 1 pod")]}  # fmt: skip
    result = health(FINETUNEJOB, resource("FineTuneJob", status))
    assert result == {"status": "Progressing", "message": "Running: step 1200/3750 (training on 1 pod)"}


def test_finetunejob_queued_shows_why() -> None:
    status = {
        "phase": "Queued",
        "conditions": [cond(c.ADMITTED, "False", c.QUEUED_BY_KUEUE, "waiting in LocalQueue gpu-team-a")],
    }
    assert (
        health(FINETUNEJOB, resource("FineTuneJob", status))["message"]
        == "Queued (waiting in LocalQueue gpu-team-a)"
    )


def test_finetunejob_without_status_waits_for_the_operator() -> None:
    assert health(FINETUNEJOB, resource("FineTuneJob", None))["status"] == "Progressing"


def test_finetunejob_succeeded_and_passed_is_healthy() -> None:
    status = {"phase": "Succeeded", "conditions": [
        cond(c.EVALUATION_PASSED, "True", c.THRESHOLDS_MET, "perplexity 3.81"),
        cond(c.COMPLETE, "True", c.SUCCEEDED, "outputs under s3://artifacts/team-a/support-bot/"),
    ]}  # fmt: skip
    result = health(FINETUNEJOB, resource("FineTuneJob", status))
    assert result == {
        "status": "Healthy",
        "message": "Succeeded: outputs under s3://artifacts/team-a/support-bot/",
    }


def test_finetunejob_succeeded_without_thresholds_is_healthy() -> None:
    status = {
        "phase": "Succeeded",
        "conditions": [cond(c.EVALUATION_PASSED, "True", c.NO_THRESHOLDS, "no thresholds")],
    }
    assert health(FINETUNEJOB, resource("FineTuneJob", status))["status"] == "Healthy"


def test_finetunejob_that_missed_its_thresholds_is_degraded() -> None:
    status = {"phase": "Succeeded", "conditions": [
        cond(c.EVALUATION_PASSED, "False", c.THRESHOLDS_NOT_MET, "perplexity 9.2 > max 8.0"),
        cond(c.COMPLETE, "True", c.SUCCEEDED, "outputs under s3://artifacts/"),
    ]}  # fmt: skip
    result = health(FINETUNEJOB, resource("FineTuneJob", status))
    assert result == {"status": "Degraded", "message": "ThresholdsNotMet: perplexity 9.2 > max 8.0"}


def test_finetunejob_failed_is_degraded_with_the_reason() -> None:
    status = {
        "phase": "Failed",
        "conditions": [cond(c.FAILED, "True", c.OUT_OF_MEMORY, "the GPU ran out of memory; lower batchSize")],
    }
    result = health(FINETUNEJOB, resource("FineTuneJob", status))
    assert result == {
        "status": "Degraded",
        "message": "OutOfMemory: the GPU ran out of memory; lower batchSize",
    }


def test_finetunejob_suspended_is_suspended() -> None:
    status = {
        "phase": "Suspended",
        "conditions": [cond(c.SUSPENDED, "True", c.USER_SUSPENDED, "spec.suspend is true")],
    }
    assert health(FINETUNEJOB, resource("FineTuneJob", status))["status"] == "Suspended"


def test_finetunejob_with_an_unobserved_generation_is_progressing() -> None:
    body = resource("FineTuneJob", {"phase": "Succeeded"}, generation=3)
    body["status"]["observedGeneration"] = 2
    assert health(FINETUNEJOB, body) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 3",
    }


def test_finetunejob_unknown_phase_is_unknown() -> None:
    assert health(FINETUNEJOB, resource("FineTuneJob", {"phase": "Exploded"}))["status"] == "Unknown"


# -- ModelDeployment -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Pending", "Progressing"),
        ("Blocked", "Progressing"),
        ("Deploying", "Progressing"),
        ("Progressing", "Progressing"),
        ("Ready", "Healthy"),
        ("RolledBack", "Degraded"),
        ("Failed", "Degraded"),
        ("Paused", "Suspended"),
        ("Sideways", "Unknown"),
    ],
)
def test_modeldeployment_phase_maps_to_health(phase: str, expected: str) -> None:
    assert health(MODELDEPLOYMENT, resource("ModelDeployment", {"phase": phase}))["status"] == expected


def test_modeldeployment_ready_names_its_endpoint() -> None:
    status = {"phase": "Ready", "endpoint": "http://support-bot.team-a.svc:8000/v1", "revision": 3}
    result = health(MODELDEPLOYMENT, resource("ModelDeployment", status))
    assert result == {
        "status": "Healthy",
        "message": "Serving at http://support-bot.team-a.svc:8000/v1 (revision 3)",
    }


def test_modeldeployment_canary_shows_its_weight_and_rollback_its_reason() -> None:
    status = {"phase": "Progressing", "canaryWeight": 10, "conditions": [
        cond(md.PROGRESSING, "True", "Canary", "revision 3 at 10% (1/1 canary pods ready)"),
        cond(md.ROLLED_BACK, "False", "Promoted", "revision 2 promoted"),
    ]}  # fmt: skip
    result = health(MODELDEPLOYMENT, resource("ModelDeployment", status))
    assert result["message"] == "Canary at 10%: Canary: revision 3 at 10% (1/1 canary pods ready)"
    status = {"phase": "RolledBack", "conditions": [
        cond(md.PROGRESSING, "False", "ErrorRateTooHigh", "canary error rate 0.08 > 0.01"),
        cond(md.ROLLED_BACK, "True", "ErrorRateTooHigh", "revision 3 rolled back to 2: canary error rate 0.08 > 0.01"),
    ]}  # fmt: skip
    result = health(MODELDEPLOYMENT, resource("ModelDeployment", status))
    assert result == {
        "status": "Degraded",
        "message": "ErrorRateTooHigh: revision 3 rolled back to 2: canary error rate 0.08 > 0.01",
    }


def test_modeldeployment_blocked_and_failed_say_why() -> None:
    status = {
        "phase": "Blocked",
        "conditions": [
            cond(md.GATE_PASSED, "False", "EvaluationNotPassed", "support-bot: perplexity 9.2 > 8.0")
        ],
    }
    result = health(MODELDEPLOYMENT, resource("ModelDeployment", status))
    assert result == {
        "status": "Progressing",
        "message": "EvaluationNotPassed: support-bot: perplexity 9.2 > 8.0",
    }
    status = {
        "phase": "Failed",
        "conditions": [cond(md.AVAILABLE, "False", "NotReady", "0/2 pods ready after 612s")],
    }
    result = health(MODELDEPLOYMENT, resource("ModelDeployment", status))
    assert result == {"status": "Degraded", "message": "NotReady: 0/2 pods ready after 612s"}


def test_modeldeployment_without_status_or_with_an_unobserved_generation_is_progressing() -> None:
    assert health(MODELDEPLOYMENT, resource("ModelDeployment", None))["status"] == "Progressing"
    body = resource("ModelDeployment", {"phase": "Ready"}, generation=5)
    body["status"]["observedGeneration"] = 4
    assert health(MODELDEPLOYMENT, body)["status"] == "Progressing"
