"""A reconcile that fails (here: the API refuses to create Jobs) still leaves a status saying why, and retries."""

from __future__ import annotations

from tests.integration.harness import Api
from tests.integration.test_finetunejob_operator import _job


def test_api_failure_leaves_a_status_naming_the_error(api: Api, emulator, operator) -> None:
    emulator.emulator["post /apis/batch/v1/namespaces/default/jobs"] << 500
    api.create(_job("unlucky"))
    reconciled = api.wait_for(
        "an error condition", lambda: api.condition("unlucky", "Reconciled") or None, timeout=30
    )
    assert reconciled["status"] == "False" and reconciled["reason"] == "ReconcileError"
    assert "will be retried" in reconciled["message"]
    assert api.status("unlucky")["phase"] == "Pending"
    assert api.get("Job", "unlucky-validate") is None
