"""The status of an object whose reconcile failed, and its clearing once one succeeds. Pure."""

from __future__ import annotations

from typing import Any

from kubetune.reconcile import conditions as c
from kubetune.render.pod import Manifest


def error_status(resource: Manifest, error: BaseException, *, now: str) -> dict[str, Any]:
    """The object's status with `Reconciled=False, ReconcileError` saying what failed and that it will be
    retried: never an object without a status, whatever broke."""
    status = dict(resource.get("status") or {})
    status.setdefault("phase", "Pending")
    generation = int(resource["metadata"].get("generation") or 1)
    status["observedGeneration"] = generation
    message = f"reconcile failed and will be retried: {type(error).__name__}: {error}"
    status["conditions"] = c.set_condition(
        list(status.get("conditions") or []),
        c.RECONCILED,
        "False",
        c.RECONCILE_ERROR,
        message,
        now=now,
        generation=generation,
    )
    return status


def without_error(status: dict[str, Any]) -> dict[str, Any]:
    """A status from a reconcile that succeeded: an earlier error condition no longer holds."""
    if "conditions" not in status:
        return status
    conditions = [cond for cond in status["conditions"] or [] if cond.get("type") != c.RECONCILED]
    return {**status, "conditions": conditions}
