"""Operator restarts: each test runs its own operator process and SIGKILLs it at several points, with no other
operator watching, so only a restarted operator can make progress."""

from __future__ import annotations

from pathlib import Path

from tests.integration.harness import Api, OperatorProcess
from tests.integration.test_finetunejob_operator import _job
from tests.integration.test_modeldeployment_operator import (
    HEALTHY,
    MD,
    _bench,
    _clean,
    _deployment,
    _finetunejob,
    _first_revision_ready,
    _pass,
    _ready,
)
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK


def test_operator_killed_at_every_point_converges_without_duplicates(
    api: Api, kubeconfig: Path, tmp_path: Path
) -> None:
    name = "crashy"
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    steps = [
        lambda: api.create(_job(name)),
        lambda: api.finish_job(f"{name}-validate", VALIDATION_OK),
        lambda: api.run_pod(f"{name}-train", "Running"),
        lambda: api.finish_job(f"{name}-train", TRAINING_OK, index=1),
        lambda: api.finish_job(f"{name}-finish", FINISH_OK),
    ]
    waits = [f"{name}-validate", f"{name}-train", None, f"{name}-finish", None]
    try:
        for step, child in zip(steps, waits, strict=True):
            step()  # the world changes while no operator runs
            operator.start()
            if child:
                api.wait_job(child)
            operator.kill()
        operator.start()
        api.wait_phase(name, "Succeeded")
    finally:
        operator.stop()
    api.assert_one_of_each_child(name)


def test_operator_restart_mid_rollout_is_safe(api: Api, kubeconfig: Path, tmp_path: Path) -> None:
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    operator.start()
    try:
        _finetunejob(api, "restart-job", passed=True)
        _pass(api, "restart-job", perplexity="3.0")
        api.create(_clean(_deployment("restarty", "restart-job")))
        _first_revision_ready(api, "restarty")
        api.patch(MD, "restarty", {"spec": {"maxModelLen": 8192}})
        # status.canaryWeight is the effective share: at the 10% step, 1 canary pod beside 2 stable is 33%.
        api.wait_for("canary at 10%", lambda: api.status("restarty", MD).get("canaryWeight") == 33)
        operator.kill()
        _ready(api, "restarty", 2)
        operator.start()
        _bench(api, "restarty-bench-r2-s0", HEALTHY)
        api.wait_for("canary at 50%", lambda: api.status("restarty", MD).get("canaryWeight") == 50)
        operator.kill()
        operator.start()
        _ready(api, "restarty", 2)
        _bench(api, "restarty-bench-r2-s1", HEALTHY)
        api.wait_for("canary at 100%", lambda: api.status("restarty", MD).get("canaryWeight") == 100)
        _ready(api, "restarty", 2)
        _bench(api, "restarty-bench-r2-s2", HEALTHY)
        api.wait_for("promoted", lambda: api.status("restarty", MD).get("stableRevision") == 2, timeout=60)
        api.wait_for("old revision removed", lambda: api.get("Deployment", "restarty-r1") is None)
    finally:
        operator.stop()
    deployments = api.list("Deployment", "kubetune.dev/modeldeployment=restarty")
    assert [d["metadata"]["name"] for d in deployments] == ["restarty-r2"]
    revisions = api.status("restarty", MD)["revisions"]
    assert [(r["revision"], r["state"]) for r in revisions] == [(1, "Superseded"), (2, "Stable")]
