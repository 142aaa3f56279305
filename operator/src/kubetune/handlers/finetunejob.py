"""Kopf glue for FineTuneJob: every trigger (create, resume, update, timer, and child events through
handlers.children) runs the same level-based reconcile under a per-object lock (handlers.reconciler)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kubetune.adapters import metrics
from kubetune.adapters.kube import KubeClient
from kubetune.adapters.scrape import scrape_trainer
from kubetune.api.common import GROUP, VERSION
from kubetune.handlers.reconciler import Reconciler, now
from kubetune.handlers.runtime import RUNTIME
from kubetune.reconcile import accounting
from kubetune.reconcile.finetunejob import Outcome, reconcile
from kubetune.reconcile.observed import Observed, job_view, jobset_view
from kubetune.reconcile.ownership import owned
from kubetune.reconcile.progress import progress_from_samples
from kubetune.render.finetunejob import (
    JOB_LABEL,
    JOBSET_API_VERSION,
    child_name,
    needs_rendezvous_service,
)
from kubetune.render.pod import MANAGED_BY

KIND = "FineTuneJob"
PLURAL = "finetunejobs"


# Whether the cluster serves JobSets, asked once per process (installing JobSet later needs a restart).
_JOBSET_SERVED: dict[str, bool] = {}


async def jobsets_served(client: KubeClient) -> bool:
    """Multi-node training runs as a JobSet where the operator is set to (training_gang jobset) or, on auto,
    where the cluster has JobSet's API; else as the operator's own gang of an Indexed Job. A child already
    created keeps its kind."""
    if RUNTIME.config.training_gang != "auto":
        return RUNTIME.config.training_gang == "jobset"
    if "served" not in _JOBSET_SERVED:
        _JOBSET_SERVED["served"] = await client.serves(JOBSET_API_VERSION, "JobSet")
    return _JOBSET_SERVED["served"]


async def observe(client: KubeClient, body: dict[str, Any]) -> Observed:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = f"{MANAGED_BY}=kubetune,{JOB_LABEL}={name}"
    spec = accounting.job_spec(body)
    multinode = spec is not None and needs_rendezvous_service(spec)
    jobset = multinode and await jobsets_served(client)

    async def nothing() -> None:
        return None

    async def no_items() -> list[dict[str, Any]]:
        return []

    # Only what can matter is read: pods when Jobs exist, the rendezvous Service and JobSets for multi-node jobs.
    jobs, config_map, service, jobsets = await asyncio.gather(
        client.list("batch/v1", "Job", namespace, label_selector=selector),
        client.get("v1", "ConfigMap", namespace, child_name(name, "config")),
        client.get("v1", "Service", namespace, child_name(name, "train")) if multinode else nothing(),
        client.list(JOBSET_API_VERSION, "JobSet", namespace, label_selector=selector)
        if jobset
        else no_items(),
    )
    pods = await client.list("v1", "Pod", namespace, label_selector=selector) if jobs or jobsets else []

    def live(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [c for c in owned(children, body) if c["metadata"].get("deletionTimestamp") is None]

    parsed = [job_view(job, pods) for job in live(jobs)] + [jobset_view(js, pods) for js in live(jobsets)]
    views = {view.stage: view for view in parsed}
    progress = None
    train = views.get("train")
    if RUNTIME.config.scrape_progress and train is not None:
        # Only rank 0 serves metrics: on a multi-node job, completion index 0, not the newest pod.
        running = train.metrics_pod()
        if running is not None and running.ip:
            samples = await scrape_trainer(running.ip, RUNTIME.config.defaults.trainer_metrics_port)
            progress = progress_from_samples(samples) if samples else None
    return Observed(
        now=now(),
        config_map=config_map is not None,
        service=service is not None,
        jobs=views,
        live=progress,
        jobset=jobset,
    )


async def decide(client: KubeClient, body: dict[str, Any]) -> Outcome:
    return reconcile(body, await observe(client, body), RUNTIME.config.defaults)


def settled(body: dict[str, Any], outcome: Outcome) -> None:
    """The job's metrics: queue wait and training time when they end, GPUs held by its phase."""
    durations = accounting.durations(body.get("status") or {}, outcome.status)
    if durations.queue_wait_seconds is not None:
        metrics.QUEUE_WAIT_SECONDS.observe(durations.queue_wait_seconds)
    if durations.training_seconds is not None:
        metrics.TRAINING_SECONDS.observe(durations.training_seconds)
    gpus = accounting.gpus_requested(accounting.job_spec(body))
    RUNTIME.phases.update(body["metadata"]["uid"], outcome.status.get("phase"), gpus)


reconcile_job = Reconciler(KIND, decide, settled)


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
        reconcile_job.forget(body["metadata"]["namespace"], body["metadata"]["name"])
