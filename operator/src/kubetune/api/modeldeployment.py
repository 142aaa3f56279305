"""ModelDeployment: serves a FineTuneJob's output, only once its evaluation passed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from kubetune.api.common import (
    ApiModel,
    Conditions,
    Decimal,
    DnsLabel,
    LabelValue,
    LocalObjectReference,
    ModelCache,
    ModelUri,
    NodeSelector,
    Quantity,
    SecretReference,
    Toleration,
    cel,
    rules,
)
from kubetune.api.finetunejob import THRESHOLD_KEYS_RULE, Thresholds

Phase = Literal["Pending", "Blocked", "Deploying", "Progressing", "Ready", "RolledBack", "Failed", "Paused"]
CHECKPOINT_PATTERN = r"^(best|latest|step-[1-9][0-9]{0,8})$"


class Source(ApiModel):
    fine_tune_job_ref: LocalObjectReference | None = Field(
        default=None, description="A FineTuneJob in the same namespace"
    )
    checkpoint: Annotated[str, Field(max_length=16, pattern=CHECKPOINT_PATTERN)] | None = Field(
        default=None, description="best | latest | step-N; the job's final output when unset"
    )
    model_uri: ModelUri | None = None
    adapter_uris: (
        Annotated[list[ModelUri], Field(max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"})]
        | None
    ) = None
    max_lora_rank: Annotated[int, Field(ge=1, le=512)] | None = Field(
        default=None,
        description="The largest LoRA rank r among spec.source.adapterUris (vLLM's --max-lora-rank; 64 when"
        " unset). With fineTuneJobRef the operator takes r from the job's spec.lora",
    )

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.fineTuneJobRef) != has(self.modelUri)",
                "exactly one of spec.source.fineTuneJobRef or spec.source.modelUri must be set",
            ),
            cel(
                "!has(self.checkpoint) || has(self.fineTuneJobRef)",
                "spec.source.checkpoint needs spec.source.fineTuneJobRef",
                fieldPath=".checkpoint",
            ),
            cel(
                "!has(self.adapterUris) || has(self.modelUri)",
                "spec.source.adapterUris needs spec.source.modelUri",
                fieldPath=".adapterUris",
            ),
            cel(
                "!has(self.maxLoraRank) || has(self.adapterUris)",
                "spec.source.maxLoraRank needs spec.source.adapterUris",
                fieldPath=".maxLoraRank",
            ),
        )
    )

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        # The CEL rules again, so the typed model refuses exactly what the API server refuses.
        if (self.fine_tune_job_ref is None) == (self.model_uri is None):
            raise ValueError("exactly one of spec.source.fineTuneJobRef or spec.source.modelUri must be set")
        if self.checkpoint is not None and self.fine_tune_job_ref is None:
            raise ValueError("spec.source.checkpoint needs spec.source.fineTuneJobRef")
        if self.adapter_uris is not None and self.model_uri is None:
            raise ValueError("spec.source.adapterUris needs spec.source.modelUri")
        if self.max_lora_rank is not None and self.adapter_uris is None:
            raise ValueError("spec.source.maxLoraRank needs spec.source.adapterUris")
        return self


class Gate(ApiModel):
    require_evaluation_passed: bool = True
    thresholds: Annotated[Thresholds, Field(json_schema_extra=rules(THRESHOLD_KEYS_RULE))] | None = Field(
        default=None, description="Extra thresholds on the source job's evaluation metrics"
    )


class ServingResources(ApiModel):
    gpus: Annotated[int, Field(ge=0, le=8, description="GPUs per replica; tensor-parallel size")] = 1
    gpu_product: LabelValue | None = None
    cpu: Quantity | None = None
    memory: Quantity | None = None

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.gpus > 0 || !has(self.gpuProduct)",
                "spec.resources.gpuProduct needs spec.resources.gpus > 0",
            )
        )
    )


class Analysis(ApiModel):
    max_error_rate: Annotated[float, Decimal(ge=0, le=1)] = 0.01
    max_p95_latency_seconds: Annotated[float, Decimal(gt=0, le=3600)] = 2.0
    interval_seconds: Annotated[int, Field(ge=5, le=3600, description="How long each step is observed")] = 60


class Rollout(ApiModel):
    strategy: Literal["canary", "replace"] = "canary"
    steps: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]],
        Field(
            min_length=1, max_length=10, description="Canary traffic percentages, increasing, ending at 100"
        ),
    ] = [10, 50, 100]
    analysis: Analysis | None = None
    http_route_ref: LocalObjectReference | None = Field(
        default=None, description="Gateway API HTTPRoute whose backend weights carry the canary split"
    )
    progress_deadline_seconds: Annotated[int, Field(ge=60, le=86400)] = Field(
        default=1800,
        description="How long a new revision's pods may take to become ready (model download and loading"
        " included) before it is rolled back",
    )
    paused: bool = False
    abort: bool = Field(default=False, description="Roll back to the stable revision and stop")

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                # CEL has no index range: the indices are spelled out up to maxItems.
                "[1, 2, 3, 4, 5, 6, 7, 8, 9].all(i, i >= size(self.steps) || self.steps[i - 1] < self.steps[i])",
                "spec.rollout.steps must be strictly increasing",
                fieldPath=".steps",
            ),
            cel(
                "self.steps[size(self.steps) - 1] == 100",
                "spec.rollout.steps must end at 100",
                fieldPath=".steps",
            ),
            cel(
                "!(self.paused && self.abort)",
                "spec.rollout.paused and spec.rollout.abort cannot both be true",
            ),
        )
    )


class Autoscaling(ApiModel):
    min_replicas: Annotated[int, Field(ge=1, le=256)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 4
    metric: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")] = (
        "vllm:num_requests_waiting"
    )
    target: Annotated[float, Decimal(gt=0, le=1_000_000)] = 5.0
    engine: Literal["hpa", "keda"] = "hpa"

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
            )
        )
    )


class Scheduling(ApiModel):
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    node_selector: NodeSelector | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None


class ModelDeploymentSpec(ApiModel):
    source: Source
    runtime: Literal["vllm", "tgi"] = "vllm"
    serve: Literal["adapter", "merged"] = "adapter"
    gate: Gate | None = None
    replicas: Annotated[int, Field(ge=0, le=256)] = 1
    resources: ServingResources | None = None
    served_model_name: DnsLabel | None = Field(default=None, description="Defaults to the resource's name")
    max_model_len: Annotated[int, Field(ge=16, le=1_048_576)] | None = None
    rollout: Rollout | None = None
    autoscaling: Autoscaling | None = None
    scheduling: Scheduling | None = None
    storage_secret_ref: SecretReference | None = None
    cache: ModelCache | None = Field(
        default=None,
        description=(
            "Where replicas keep the models they serve: a shared claim (pvc), downloaded once for every replica"
            " and revision, or a volume per pod (ephemeral); emptyDirs on the node's disk when unset"
        ),
    )

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.serve != 'adapter' || !has(self.source.modelUri) || has(self.source.adapterUris)",
                "spec.serve adapter with spec.source.modelUri needs spec.source.adapterUris",
                fieldPath=".serve",
            ),
            cel(
                "!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas"
                " && self.replicas <= self.autoscaling.maxReplicas)",
                "spec.replicas must lie within spec.autoscaling.minReplicas..maxReplicas",
                fieldPath=".replicas",
            ),
            cel(
                "self.runtime != 'tgi' || self.serve == 'merged' || !has(self.source.adapterUris)"
                " || size(self.source.adapterUris) <= 8",
                "spec.runtime tgi serves at most 8 adapters",
                fieldPath=".source.adapterUris",
            ),
        )
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelDeploymentSpec:
        if self.serve == "adapter" and self.source.model_uri is not None and self.source.adapter_uris is None:
            raise ValueError("spec.serve adapter with spec.source.modelUri needs spec.source.adapterUris")
        scaling = self.autoscaling
        if scaling is not None and not scaling.min_replicas <= self.replicas <= scaling.max_replicas:
            raise ValueError("spec.replicas must lie within spec.autoscaling.minReplicas..maxReplicas")
        return self


class Benchmark(ApiModel):
    requests: int | None = None
    concurrency: int | None = None
    ttft_seconds: Annotated[str, Field(max_length=32)] | None = None
    p50_latency_seconds: Annotated[str, Field(max_length=32)] | None = None
    p95_latency_seconds: Annotated[str, Field(max_length=32)] | None = None
    output_tokens_per_second: Annotated[str, Field(max_length=32)] | None = None
    error_rate: Annotated[str, Field(max_length=32)] | None = None
    revision: int | None = None
    time: Annotated[str, Field(max_length=64)] | None = None
    trigger: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="The kubetune.dev/benchmark annotation value that asked for this run"
    )


class RevisionStatus(ApiModel):
    revision: int
    state: Literal["Pending", "Progressing", "Stable", "RolledBack", "Superseded"]
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    ready_replicas: int | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None
    fingerprint: Annotated[str, Field(max_length=64)] | None = None
    step: Annotated[int, Field(ge=0, le=10)] | None = Field(
        default=None, description="Index into spec.rollout.steps"
    )
    step_started_at: Annotated[str, Field(max_length=64)] | None = None


class ModelDeploymentStatus(ApiModel):
    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    endpoint: Annotated[str, Field(max_length=512)] | None = None
    served_model_name: Annotated[str, Field(max_length=128)] | None = None
    revision: int | None = None
    stable_revision: int | None = None
    canary_weight: Annotated[int, Field(ge=0, le=100)] | None = Field(
        default=None,
        description="The canary's effective share of traffic in percent: the step's weight through"
        " spec.rollout.httpRouteRef, else its share of the serving replicas (at least one pod)",
    )
    revisions: Annotated[list[RevisionStatus], Field(max_length=20)] | None = None
    benchmark: Benchmark | None = None
    source_job_uid: Annotated[str, Field(max_length=64)] | None = None
