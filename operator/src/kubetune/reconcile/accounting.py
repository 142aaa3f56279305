"""What the operator's own metrics learn from a FineTuneJob: the GPUs it holds, how long it waited in the
queue and how long it trained. Pure: the handlers feed the numbers to Prometheus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.timestamps import seconds_between
from kubetune.reconcile import conditions as c
from kubetune.render.pod import Manifest


@dataclass(frozen=True)
class Durations:
    """Seconds to observe now; None when this reconcile saw no such moment."""

    queue_wait_seconds: float | None = None
    training_seconds: float | None = None


def job_spec(resource: Manifest) -> FineTuneJobSpec | None:
    """The typed spec, or None when it is invalid (reconcile reports that as InvalidSpec)."""
    try:
        return FineTuneJobSpec.model_validate(resource.get("spec") or {})
    except ValidationError:
        return None


def gpus_requested(spec: FineTuneJobSpec | None) -> int:
    """GPUs per node times nodes; none for a spec that cannot run."""
    if spec is None:
        return 0
    resources = spec.resources
    return resources.gpus * resources.nodes


def _elapsed(start: str | None, end: str | None) -> float | None:
    seconds = seconds_between(start, end)
    return None if seconds is None else max(0.0, seconds)


def durations(before: dict[str, Any], after: dict[str, Any]) -> Durations:
    """From the status before and after one reconcile: the queue wait (dataset passed -> first training
    pod running) when training first starts, not on a retried pod; the training time (running -> complete)
    when training completes."""
    was = c.find(before.get("conditions") or [], c.RUNNING) or {}
    running = c.find(after.get("conditions") or [], c.RUNNING) or {}
    wait = None
    if running.get("status") == "True" and was.get("status") != "True" and not before.get("restarts"):
        validated = c.find(after.get("conditions") or [], c.DATASET_VALIDATED) or {}
        wait = _elapsed(validated.get("lastTransitionTime"), running.get("lastTransitionTime"))
    training = None
    if was.get("status") == "True" and running.get("reason") == c.TRAINING_COMPLETE:
        training = _elapsed(was.get("lastTransitionTime"), running.get("lastTransitionTime"))
    return Durations(queue_wait_seconds=wait, training_seconds=training)
