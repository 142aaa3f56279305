"""Kopf glue for ModelDeployment: gate, rollout and benchmark all run in one level-based reconcile under a
per-object lock (handlers.reconciler); its Deployments' and benchmark Jobs' events arrive through
handlers.children."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from kubetune.adapters.kube import KubeClient
from kubetune.api.common import GROUP, VERSION
from kubetune.handlers.reconciler import API_VERSION, Reconciler, now
from kubetune.handlers.runtime import RUNTIME
from kubetune.reconcile.finetunejob import Outcome
from kubetune.reconcile.modeldeployment import ServingObserved, deployment_view, reconcile_deployment
from kubetune.reconcile.observed import job_view
from kubetune.reconcile.ownership import owned
from kubetune.render.modeldeployment import BENCHMARK_LABEL, DEPLOYMENT_LABEL, ServingDefaults
from kubetune.render.pod import MANAGED_BY

KIND = "ModelDeployment"
PLURAL = "modeldeployments"


def serving_defaults() -> ServingDefaults:
    config = RUNTIME.config
    return ServingDefaults(
        vllm_image=config.vllm_image,
        tgi_image=config.tgi_image,
        fetcher_image=config.defaults.trainer_image,
        image_pull_policy=config.defaults.image_pull_policy,
        gpu_tolerations=config.defaults.gpu_tolerations,
        service_account_name=config.defaults.service_account_name,
        image_pull_secrets=config.defaults.image_pull_secrets,
        prometheus_url=config.prometheus_url,
    )


async def observe(client: KubeClient, body: dict[str, Any]) -> ServingObserved:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    selector = f"{MANAGED_BY}=kubetune,{DEPLOYMENT_LABEL}={name}"
    job_ref = ((body.get("spec") or {}).get("source") or {}).get("fineTuneJobRef") or {}
    keda = ((body.get("spec") or {}).get("autoscaling") or {}).get("engine") == "keda"
    scaler = ("keda.sh/v1alpha1", "ScaledObject") if keda else ("autoscaling/v2", "HorizontalPodAutoscaler")

    async def source_job() -> dict[str, Any] | None:
        return (
            await client.get(API_VERSION, "FineTuneJob", namespace, job_ref["name"])
            if job_ref.get("name")
            else None
        )

    deployments, services, jobs, pods = await asyncio.gather(
        client.list("apps/v1", "Deployment", namespace, label_selector=selector),
        client.list("v1", "Service", namespace, label_selector=selector),
        client.list("batch/v1", "Job", namespace, label_selector=selector),
        client.list("v1", "Pod", namespace, label_selector=f"{MANAGED_BY}=kubetune,{BENCHMARK_LABEL}={name}"),
    )
    job, pdb, hpa = await asyncio.gather(
        source_job(),
        client.get("policy/v1", "PodDisruptionBudget", namespace, name),
        client.get(*scaler, namespace, name),
    )
    return ServingObserved(
        now=now(),
        source_job=job,
        deployments={view.revision: view for view in map(deployment_view, owned(deployments, body))},
        services=frozenset(s["metadata"]["name"] for s in owned(services, body)),
        has_pdb=pdb is not None,
        has_autoscaler=hpa is not None,
        autoscaler_target=((hpa or {}).get("spec") or {}).get("scaleTargetRef", {}).get("name"),
        bench_jobs={j["metadata"]["name"]: job_view(j, pods) for j in owned(jobs, body)},
    )


async def decide(client: KubeClient, body: dict[str, Any]) -> Outcome:
    return reconcile_deployment(body, await observe(client, body), serving_defaults())


reconcile_serving = Reconciler(KIND, decide)


@kopf.index(GROUP, VERSION, PLURAL)
def deployments_by_source(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str], str] | None:
    """(namespace, FineTuneJob name) -> the ModelDeployments serving it, so a job's change wakes them."""
    job = ((spec.get("source") or {}).get("fineTuneJobRef") or {}).get("name")
    return {(namespace or "", job): name} if job else None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def modeldeployment_changed(namespace: str | None, name: str, **_: Any) -> None:
    await reconcile_serving(namespace or "default", name)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RUNTIME.config.resync_seconds,
    initial_delay=RUNTIME.config.resync_seconds,  # create/resume already reconciled it: no double work
    sharp=False,
)
async def modeldeployment_resync(namespace: str | None, name: str, **_: Any) -> None:
    await reconcile_serving(namespace or "default", name)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def modeldeployment_event(type: str, body: kopf.Body, **_: Any) -> None:
    if type == "DELETED":
        reconcile_serving.forget(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, "finetunejobs")
async def source_job_changed(type: str | None, namespace: str | None, name: str, **kwargs: Any) -> None:
    if type is None or namespace is None:
        return
    index: kopf.Index[tuple[str, str], str] = kwargs["deployments_by_source"]
    for deployment in index.get((namespace, name), []):
        await reconcile_serving(namespace, deployment)
