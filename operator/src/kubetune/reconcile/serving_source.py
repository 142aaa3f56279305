"""What a ModelDeployment serves, and whether its gate lets it: the model URI as given, or the source
FineTuneJob's adapter, merged model or chosen checkpoint once the job succeeded and passed its evaluation and
the deployment's own thresholds (GateBlockedError says exactly why not yet). Pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kubetune.api.finetunejob import Lora
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.trainer_contract import failed_thresholds
from kubetune.reconcile import conditions as c
from kubetune.render import modeldeployment as render
from kubetune.render.pod import Manifest


class GateBlockedError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _adapter_name(uri: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", uri.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-") or "adapter"
    if base == "adapter":
        parts = [p for p in uri.rstrip("/").split("/") if p]
        base = re.sub(r"[^a-z0-9-]+", "-", parts[-2].lower()).strip("-") if len(parts) >= 2 else base
    name, index = base[:48], 2
    while name in taken:
        name, index = f"{base[:44]}-{index}", index + 1
    taken.add(name)
    return name


def _checkpoint_uri(job_status: dict[str, Any], selector: str) -> str:
    checkpoints = list(job_status.get("checkpoints") or [])
    if not checkpoints:
        raise GateBlockedError(c.CHECKPOINT_NOT_FOUND, "the FineTuneJob recorded no checkpoints")
    if selector == "latest":
        return str(max(checkpoints, key=lambda item: int(item["step"]))["uri"])
    if selector == "best":
        scored = [item for item in checkpoints if item.get("evalLoss") is not None]
        if not scored:
            raise GateBlockedError(
                c.CHECKPOINT_NOT_FOUND, "no checkpoint has an eval loss to pick the best by"
            )
        return str(min(scored, key=lambda item: float(item["evalLoss"]))["uri"])
    step = int(selector.removeprefix("step-"))
    for item in checkpoints:
        if int(item["step"]) == step:
            return str(item["uri"])
    steps = ", ".join(str(item["step"]) for item in checkpoints)
    raise GateBlockedError(c.CHECKPOINT_NOT_FOUND, f"no checkpoint at step {step}; the job has steps {steps}")


def resolve_source(namespace: str, spec: ModelDeploymentSpec, job: Manifest | None) -> render.ResolvedSource:
    """What to serve, or GateBlocked saying exactly why not yet."""
    source = spec.source
    if source.model_uri:
        taken: set[str] = set()
        adapters = tuple(render.Adapter(_adapter_name(uri, taken), uri) for uri in source.adapter_uris or [])
        lineage = {"base-model": source.model_uri}
        return render.ResolvedSource(
            model_uri=source.model_uri, adapters=adapters, lineage=lineage, max_lora_rank=source.max_lora_rank
        )
    assert source.fine_tune_job_ref is not None
    job_name = source.fine_tune_job_ref.name
    if job is None:
        raise GateBlockedError(
            c.SOURCE_NOT_FOUND, f"FineTuneJob {job_name} does not exist in namespace {namespace}"
        )
    status = job.get("status") or {}
    conditions = list(status.get("conditions") or [])
    if not c.is_true(conditions, c.COMPLETE):
        raise GateBlockedError(
            c.SOURCE_NOT_READY,
            f"FineTuneJob {job_name} is {status.get('phase') or 'Pending'}; waiting for it to succeed",
        )
    gate = spec.gate
    if gate is None or gate.require_evaluation_passed:
        passed = c.find(conditions, c.EVALUATION_PASSED) or {}
        if passed.get("status") != "True":
            raise GateBlockedError(
                c.EVALUATION_NOT_PASSED,
                f"FineTuneJob {job_name} did not pass evaluation: {passed.get('message', '')}",
            )
    if gate is not None and gate.thresholds:
        failures = failed_thresholds((status.get("evaluation") or {}).get("metrics") or {}, gate.thresholds)
        if failures:
            raise GateBlockedError(
                c.THRESHOLDS_NOT_MET,
                f"FineTuneJob {job_name}: " + "; ".join(failures) + " (spec.gate.thresholds)",
            )
    job_spec = job.get("spec") or {}
    outputs = status.get("outputs") or {}
    base = str((job_spec.get("baseModel") or {}).get("uri", ""))
    lineage = {
        "source-job": job_name,
        "source-job-uid": str(job["metadata"].get("uid", "")),
        "dataset-sha256": str((status.get("dataset") or {}).get("sha256", "")),
        "base-model": base,
    }
    # The pods read what the job's pods wrote, with the job's credentials unless the deployment names its own.
    secret = str((job_spec.get("storageSecretRef") or {}).get("name") or "") or None
    # vLLM must be told the adapter's rank (--max-lora-rank): the job's spec.lora.r is the adapter's r.
    rank = int((job_spec.get("lora") or {}).get("r") or Lora().r)
    if source.checkpoint:
        uri = _checkpoint_uri(status, source.checkpoint)
        lineage["adapter"] = uri
        return render.ResolvedSource(
            model_uri=base,
            adapters=(render.Adapter("adapter", uri),),
            lineage=lineage,
            max_lora_rank=rank,
            storage_secret=secret,
        )
    if spec.serve == "merged" or job_spec.get("method") == "full":
        merged = outputs.get("mergedUri")
        if not merged:
            raise GateBlockedError(
                c.MERGED_MODEL_MISSING,
                f"FineTuneJob {job_name} has no merged model: set spec.output.merge: true on it",
            )
        lineage["merged-model"] = merged
        return render.ResolvedSource(model_uri=str(merged), lineage=lineage, storage_secret=secret)
    adapter = outputs.get("adapterUri")
    if not adapter:
        raise GateBlockedError(c.ADAPTER_MISSING, f"FineTuneJob {job_name} recorded no adapter output")
    lineage["adapter"] = str(adapter)
    return render.ResolvedSource(
        model_uri=base,
        adapters=(render.Adapter("adapter", str(adapter)),),
        lineage=lineage,
        max_lora_rank=rank,
        storage_secret=secret,
    )


def fingerprint(spec: ModelDeploymentSpec, source: render.ResolvedSource) -> str:
    """Everything that changes the pods; replicas, rollout and autoscaling do not make a new revision."""
    pod_inputs = spec.model_dump(
        mode="json", by_alias=True, exclude={"replicas", "rollout", "autoscaling", "gate"}
    )
    text = json.dumps({"spec": pod_inputs, "source": source.fingerprint()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def missing_credentials(
    spec: ModelDeploymentSpec, source: render.ResolvedSource, defaults: render.ServingDefaults
) -> str | None:
    """Why the pods could not read their s3:// sources, or None: no spec.storageSecretRef, none on the source
    job and no ServiceAccount (KUBETUNE_TRAINER_SERVICE_ACCOUNT, e.g. with IRSA/Workload Identity) to carry
    credentials instead."""
    uris = [uri for uri in source.uris(spec.serve == "merged") if uri.startswith("s3://")]
    if not uris or render.storage_secret(spec, source) or defaults.service_account_name:
        return None
    where = (
        f"nor on FineTuneJob {spec.source.fine_tune_job_ref.name} (its spec.storageSecretRef)"
        if spec.source.fine_tune_job_ref
        else "and the source is a model URI"
    )
    return (
        f"no storage credentials for {uris[0]}: set spec.storageSecretRef (none is set on the deployment {where},"
        " and the operator names no ServiceAccount for serving pods)"
    )
