"""Kopf glue for FineTuneJob: every trigger (create, resume, update, timer, child events) runs the same
level-based reconcile under a per-object lock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, cast

import kopf

from kubetune.adapters import metrics
from kubetune.adapters.kube import ApiError, KubeClient
from kubetune.adapters.scrape import scrape_trainer
from kubetune.api.common import GROUP, VERSION
from kubetune.api.timestamps import seconds_between, utc_now
from kubetune.handlers.runtime import RUNTIME
from kubetune.reconcile import conditions as c
from kubetune.reconcile.finetunejob import Create, Delete, Outcome, Patch, reconcile
from kubetune.reconcile.observed import Observed, job_view
from kubetune.reconcile.progress import progress_from_samples
from kubetune.render.finetunejob import JOB_LABEL, MANAGED_BY, child_name

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)


def now() -> str:
    return utc_now()


async def observe(client: KubeClient, body: dict[str, Any]) -> Observed:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = f"{MANAGED_BY}=kubetune,{JOB_LABEL}={name}"
    multinode = int(((body.get("spec") or {}).get("resources") or {}).get("nodes") or 1) > 1

    async def nothing() -> None:
        return None

    # Only what can matter is read: pods when Jobs exist, the rendezvous Service for multi-node jobs.
    jobs, config_map, service = await asyncio.gather(
        client.list("batch/v1", "Job", namespace, label_selector=selector),
        client.get("v1", "ConfigMap", namespace, child_name(name, "config")),
        client.get("v1", "Service", namespace, child_name(name, "train")) if multinode else nothing(),
    )
    pods = await client.list("v1", "Pod", namespace, label_selector=selector) if jobs else []
    uid = body["metadata"].get("uid")
    mine = [
        j for j in jobs if any(ref.get("uid") == uid for ref in j["metadata"].get("ownerReferences") or [])
    ]
    views = {
        view.stage: view
        for view in (job_view(job, pods) for job in mine if job["metadata"].get("deletionTimestamp") is None)
    }
    live = None
    train = views.get("train")
    if RUNTIME.config.scrape_progress and train is not None:
        running = train.newest_pod("Running")
        if running is not None and running.ip:
            samples = await scrape_trainer(running.ip, RUNTIME.config.defaults.trainer_metrics_port)
            live = progress_from_samples(samples) if samples else None
    return Observed(
        now=now(), config_map=config_map is not None, service=service is not None, jobs=views, live=live
    )


async def apply(client: KubeClient, namespace: str, outcome: Outcome) -> None:
    for action in outcome.actions:
        if isinstance(action, Create):
            await client.create(action.manifest)
        elif isinstance(action, Patch):
            await client.patch(
                action.api_version,
                action.kind,
                namespace,
                action.name,
                action.patch,
                json_patch=action.json_patch,
            )
        elif isinstance(action, Delete):
            await client.delete(action.api_version, action.kind, namespace, action.name)


def _elapsed(start: str | None, end: str | None) -> float | None:
    seconds = seconds_between(start, end)
    return None if seconds is None else max(0.0, seconds)


def _observe_durations(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Queue wait when training first starts; training time when it completes."""
    was = c.find(before.get("conditions") or [], c.RUNNING) or {}
    now_running = c.find(after.get("conditions") or [], c.RUNNING) or {}
    if now_running.get("status") == "True" and was.get("status") != "True" and not before.get("restarts"):
        validated = c.find(after.get("conditions") or [], c.DATASET_VALIDATED) or {}
        wait = _elapsed(validated.get("lastTransitionTime"), now_running.get("lastTransitionTime"))
        if wait is not None:
            metrics.QUEUE_WAIT_SECONDS.observe(wait)
    if was.get("status") == "True" and now_running.get("reason") == c.TRAINING_COMPLETE:
        duration = _elapsed(was.get("lastTransitionTime"), now_running.get("lastTransitionTime"))
        if duration is not None:
            metrics.TRAINING_SECONDS.observe(duration)


async def reconcile_job(namespace: str, name: str) -> Outcome | None:
    """Fetch, decide, act, then write the whole status once. Safe to call at any time, any number of times."""
    client = RUNTIME.client()
    async with _locks[f"{namespace}/{name}"]:
        started = time.perf_counter()
        body = await client.get(API_VERSION, KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            observed = await observe(client, body)
            outcome = reconcile(body, observed, RUNTIME.config.defaults)
            await apply(client, namespace, outcome)
        except Exception as error:
            metrics.RECONCILES.labels(KIND, "error").inc()
            await record_error(client, KIND, body, error)
            raise kopf.TemporaryError(f"reconcile failed: {error}", delay=15) from error
        before = body.get("status") or {}
        await write_outcome(client, KIND, body, outcome)
        _observe_durations(before, outcome.status)
        gpus = int(((body.get("spec") or {}).get("resources") or {}).get("gpus", 1)) * int(
            ((body.get("spec") or {}).get("resources") or {}).get("nodes", 1)
        )
        RUNTIME.phases.update(body["metadata"]["uid"], outcome.status.get("phase"), gpus)
        metrics.RECONCILES.labels(KIND, "ok").inc()
        metrics.RECONCILE_SECONDS.labels(KIND).observe(time.perf_counter() - started)
        return outcome


async def write_outcome(client: KubeClient, kind: str, body: dict[str, Any], outcome: Outcome) -> None:
    """The whole status in one write (only when it changed), then the events, one line each."""
    meta = body["metadata"]
    # A reconcile that got here succeeded: an earlier error condition no longer holds.
    conditions = [cond for cond in outcome.status.get("conditions") or [] if cond.get("type") != "Reconciled"]
    if conditions:
        outcome.status["conditions"] = conditions
    if outcome.status != (body.get("status") or {}):
        await client.patch(
            API_VERSION,
            kind,
            meta["namespace"],
            meta["name"],
            {"status": outcome.status},
            subresource="status",
        )
    for event in outcome.events:
        kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message)
        metrics.EVENTS.labels(kind, event.reason).inc()


async def record_error(client: KubeClient, kind: str, body: dict[str, Any], error: Exception) -> None:
    """Never leave an object without a status: say what went wrong and that it will be retried."""
    status = dict(body.get("status") or {})
    status.setdefault("phase", "Pending")
    generation = int(body["metadata"].get("generation") or 1)
    status["observedGeneration"] = generation
    message = f"reconcile failed and will be retried: {type(error).__name__}: {error}"
    status["conditions"] = c.set_condition(
        list(status.get("conditions") or []), "Reconciled", "False", "ReconcileError", message,
        now=now(), generation=generation,
    )  # fmt: skip
    meta = body["metadata"]
    with contextlib.suppress(ApiError):  # the retry will try again
        await client.patch(
            API_VERSION, kind, meta["namespace"], meta["name"], {"status": status}, subresource="status"
        )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def finetunejob_changed(namespace: str | None, name: str, **_: Any) -> None:
    await reconcile_job(namespace or "default", name)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RUNTIME.config.resync_seconds,
    initial_delay=RUNTIME.config.resync_seconds,  # create/resume already reconciled it: no double work
    sharp=False,
)
async def finetunejob_resync(namespace: str | None, name: str, **_: Any) -> None:
    """Level-based on top of Kopf's edge triggers: a missed event is corrected within one interval."""
    await reconcile_job(namespace or "default", name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def finetunejob_event(type: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        RUNTIME.phases.update(body["metadata"]["uid"], None, 0)
        _locks.pop(f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: "kubetune", JOB_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={MANAGED_BY: "kubetune", JOB_LABEL: kopf.PRESENT})
async def child_changed(type: str | None, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A child Job or Pod changed: reconcile its FineTuneJob now rather than at the next timer tick."""
    if type is None or namespace is None:
        return  # the initial listing: resume handlers already cover it
    await reconcile_job(namespace, labels[JOB_LABEL])
