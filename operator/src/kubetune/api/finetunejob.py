"""FineTuneJob: a dataset in S3 becomes a validated, trained, evaluated and exported model."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubetune.api.common import (
    ApiModel,
    Conditions,
    DataUri,
    Decimal,
    DnsName,
    LabelValue,
    ModelCache,
    ModelUri,
    NodeSelector,
    Quantity,
    SecretReference,
    Toleration,
    cel,
    rules,
    section,
)

DatasetFormat = Literal["auto", "openai", "sharegpt", "alpaca", "prompt-completion", "text", "preference"]
Method = Literal["lora", "qlora", "full", "dpo"]
Metric = Literal["perplexity", "rougeL", "bleu", "rewardAccuracy", "rewardMargin"]
DPO_METRICS = ("rewardAccuracy", "rewardMargin")  # measured on the held-out preference pairs; dpo only
# TRL's training chat templates (trl/chat_templates/NAME_training.jinja): each marks the assistant turns with
# {% generation %}, so the loss mask comes from the tokenizer; their special tokens are added when missing.
ChatTemplateName = Literal[
    "llama3", "qwen2_5", "qwen3", "phi3", "gemma", "gemma3", "deepseekv3", "cohere", "cohere2",
]  # fmt: skip
Optimizer = Literal[
    "adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd",
]  # fmt: skip
AttentionImplementation = Literal["auto", "sdpa", "flash_attention_2", "eager"]
CrossEntropy = Literal["standard", "chunked", "liger"]
Tracker = Literal["mlflow", "tensorboard", "wandb"]
Phase = Literal[
    "Pending", "Validating", "Queued", "Running", "Evaluating", "Succeeded", "Failed", "Suspended"
]
ColumnRole = Literal[
    "messages", "role", "content", "conversations", "from", "value", "system",
    "instruction", "input", "output", "prompt", "completion", "chosen", "rejected", "text",
]  # fmt: skip

IMMUTABLE = "self == oldSelf"
DEFAULT_WARMUP_RATIO = 0.03
DEFAULT_MIN_LR_RATIO = 0.1
DEFAULT_LOGGING_STEPS = 10
# Training pods' requests when spec.resources leaves them out: never BestEffort, never unbounded disk.
CPU_PER_GPU, CPU_WITHOUT_GPU = 4, 2
MEMORY_GIB_PER_GPU, MEMORY_GIB_WITHOUT_GPU = 32, 8
DEFAULT_EPHEMERAL_STORAGE = "100Gi"
DEFAULT_CHECKPOINT_GRACE_SECONDS = 600


def _absent(data: dict[str, Any], field: str) -> bool:
    """No value for `field` in raw input that may use the camelCase or the Python name."""
    return data.get(to_camel(field)) is None and data.get(field) is None


class BaseModelSource(ApiModel):
    uri: ModelUri = Field(description="s3://BUCKET/PREFIX/, hf://ORG/NAME[@REVISION] or pvc://CLAIM/PATH")

    model_config = ConfigDict(
        json_schema_extra=rules(cel(IMMUTABLE, "spec.baseModel is immutable; create a new FineTuneJob"))
    )


class Dataset(ApiModel):
    uri: DataUri = Field(description="JSONL, JSON, CSV or Parquet at s3://BUCKET/KEY or pvc://CLAIM/PATH")
    format: DatasetFormat = "auto"
    eval_split: (
        Annotated[float, Decimal(gt=0, le=0.5, description="Fraction of rows held out for evaluation")] | None
    ) = None
    eval_uri: DataUri | None = Field(
        default=None, description="A separate evaluation file; never overlaps training"
    )
    column_map: (
        Annotated[
            dict[ColumnRole, Annotated[str, Field(min_length=1, max_length=128)]],
            Field(
                max_length=16, description="Maps the format's standard field names to this dataset's columns"
            ),
        ]
        | None
    ) = None
    max_samples: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    chat_template: Annotated[str, Field(min_length=1, max_length=16_384)] | None = Field(
        default=None, description="A Jinja chat template overriding the tokenizer's; saved with the outputs"
    )
    chat_template_name: ChatTemplateName | None = Field(
        default=None,
        description=(
            "A named chat template (TRL's training variant, with assistant-turn markers) overriding the"
            " tokenizer's; special tokens it uses are added and the embeddings resized"
        ),
    )
    invalid_row_tolerance: Annotated[
        float, Decimal(ge=0, lt=1, description="Fraction of rows that may be invalid before validation fails")
    ] = 0.0

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(IMMUTABLE, "spec.dataset is immutable; create a new FineTuneJob"),
            cel(
                "has(self.evalSplit) != has(self.evalUri)",
                "exactly one of spec.dataset.evalSplit or spec.dataset.evalUri must be set",
            ),
            cel(
                "!(has(self.chatTemplate) && has(self.chatTemplateName))",
                "set at most one of spec.dataset.chatTemplate and spec.dataset.chatTemplateName",
            ),
            cel(
                "!has(self.columnMap) || self.columnMap.all(k, ["
                + ", ".join(f"'{role}'" for role in get_args(ColumnRole))
                + "].exists(r, r == k))",
                "spec.dataset.columnMap keys must be standard field names such as prompt, completion, messages",
            ),
        )
    )

    @model_validator(mode="after")
    def _one_evaluation_source(self) -> Dataset:
        # Mirrors the CEL rule, so a spec can never pass admission yet fail the operator (or the reverse).
        if (self.eval_split is None) == (self.eval_uri is None):
            raise ValueError("exactly one of spec.dataset.evalSplit or spec.dataset.evalUri must be set")
        return self


class Lora(ApiModel):
    r: Annotated[int, Field(ge=1, le=1024)] = 16
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    dropout: Annotated[float, Decimal(ge=0, lt=1)] = 0.05
    target_modules: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.*-]+$")]],
        Field(min_length=1, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = ["all-linear"]
    use_rslora: bool = Field(
        default=False, description="Rank-stabilised LoRA: scales adapters by alpha/sqrt(r)"
    )
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA)")
    modules_to_save: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]],
            Field(
                min_length=1,
                max_length=16,
                json_schema_extra={"x-kubernetes-list-type": "set"},
                description="Modules trained in full beside the adapters, such as embed_tokens and lm_head",
            ),
        ]
        | None
    ) = None

    model_config = ConfigDict(json_schema_extra=rules(cel(IMMUTABLE, "spec.lora is immutable")))


class Dpo(ApiModel):
    beta: Annotated[float, Decimal(gt=0, le=10)] = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"


class Hyperparameters(ApiModel):
    epochs: Annotated[int, Field(ge=1, le=100)] = 3
    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        default=None, description="Stops after this many optimizer steps; overrides epochs"
    )
    learning_rate: Annotated[float, Decimal(gt=0, le=1)] = 2e-4
    warmup_ratio: Annotated[float, Decimal(gt=0, le=0.5)] | None = Field(
        default=None,
        description=f"Warmup as a fraction of all steps; {DEFAULT_WARMUP_RATIO} when neither this nor warmupSteps is set",
    )
    warmup_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    scheduler: Literal["cosine", "linear", "constant_with_warmup", "cosine_with_min_lr"] = "cosine"
    min_learning_rate_ratio: Annotated[float, Decimal(ge=0, lt=1)] | None = Field(
        default=None,
        description=(
            f"cosine_with_min_lr decays to this fraction of learningRate; {DEFAULT_MIN_LR_RATIO} when unset"
        ),
    )
    optimizer: Optimizer = Field(
        default="adamw_torch_fused",
        description="The Trainer's optimizer; the 8-bit and paged ones need bitsandbytes on a GPU",
    )
    adam_beta1: Annotated[float, Decimal(gt=0, lt=1)] = 0.9
    adam_beta2: Annotated[float, Decimal(gt=0, lt=1)] = 0.999
    adam_epsilon: Annotated[float, Decimal(gt=0, le=0.001)] = 1e-8
    batch_size: Annotated[int, Field(ge=1, le=1024, description="Per device")] = 8
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_seq_length: Annotated[int, Field(ge=16, le=131_072)] = 2048
    packing: bool = False
    gradient_checkpointing: bool = True
    weight_decay: Annotated[float, Decimal(ge=0, lt=1)] = 0.0
    max_grad_norm: Annotated[float, Decimal(gt=0, le=1000)] = 1.0
    early_stopping_patience: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None,
        description=(
            "Evaluations without eval-loss improvement before training stops; the best checkpoint's"
            " weights are the outputs"
        ),
    )
    eval_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="Optimizer steps between evaluations of the eval loss; spec.checkpoint.everySteps when unset",
    )
    logging_steps: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="Optimizer steps between loss and learning-rate logs; 10 when unset"
    )
    train_on_inputs: bool = Field(
        default=False, description="Loss on every token (prompts too), not only the assistant turns"
    )
    train_on_last_turn_only: bool = Field(
        default=False, description="Loss on the last assistant turn only (earlier turns are context)"
    )
    neftune_noise_alpha: Annotated[float, Decimal(gt=0, le=100)] | None = Field(
        default=None, description="NEFTune: noise added to the input embeddings while training (5 is usual)"
    )
    attention_implementation: AttentionImplementation = Field(
        default="auto",
        description=(
            "auto picks flash_attention_2 on a GPU when the image has flash-attn, else sdpa; a named one that"
            " cannot run fails the job"
        ),
    )
    cross_entropy: CrossEntropy = Field(
        default="standard",
        description=(
            "chunked computes the loss over slices of the sequence, never holding all logits (a 128k"
            " vocabulary's logits are ~21 GB at 8 x 2048 tokens); liger uses Liger's fused kernel (GPU)"
        ),
    )
    seed: Annotated[int, Field(ge=0, le=2_147_483_647)] = 42

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(IMMUTABLE, "spec.hyperparameters is immutable; create a new FineTuneJob"),
            cel(
                "!(has(self.warmupRatio) && has(self.warmupSteps))",
                "set at most one of spec.hyperparameters.warmupRatio and spec.hyperparameters.warmupSteps",
            ),
            cel(
                "!has(self.minLearningRateRatio) || self.scheduler == 'cosine_with_min_lr'",
                "spec.hyperparameters.minLearningRateRatio needs scheduler: cosine_with_min_lr",
                fieldPath=".minLearningRateRatio",
            ),
            cel(
                "!(self.trainOnInputs && self.trainOnLastTurnOnly)",
                "set at most one of spec.hyperparameters.trainOnInputs and spec.hyperparameters.trainOnLastTurnOnly",
            ),
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _default_warmup(cls, data: Any) -> Any:
        # A default that depends on another field, which a CRD cannot declare: the model fills it.
        if isinstance(data, dict) and _absent(data, "warmup_ratio") and _absent(data, "warmup_steps"):
            return {**data, "warmupRatio": DEFAULT_WARMUP_RATIO}
        return data


class Threshold(ApiModel):
    min: Annotated[float, Decimal(ge=0)] | None = None
    max: Annotated[float, Decimal(ge=0)] | None = None

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("has(self.min) || has(self.max)", "a threshold needs min, max or both"),
            cel(
                "!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
                "min must be <= max",
            ),
        )
    )


Thresholds = Annotated[dict[Metric, Threshold], Field(max_length=5)]
METRIC_NAMES: tuple[str, ...] = get_args(Metric)
_METRIC_LIST = "[" + ", ".join(f"'{m}'" for m in METRIC_NAMES) + "]"
THRESHOLD_KEYS_RULE = cel(
    f"self.all(k, {_METRIC_LIST}.exists(m, m == k))", "keys must be one of " + ", ".join(METRIC_NAMES)
)


class Evaluation(ApiModel):
    metrics: Annotated[
        list[Metric], Field(min_length=1, max_length=5, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = ["perplexity"]
    thresholds: Annotated[Thresholds, Field(json_schema_extra=rules(THRESHOLD_KEYS_RULE))] | None = None
    max_samples: Annotated[int, Field(ge=1, le=10_000_000)] | None = Field(
        default=None,
        description="Evaluate a seeded sample of this many eval rows; the whole eval split when unset",
    )
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 128
    compare_baseline: bool = Field(default=True, description="Also evaluate the base model, for comparison")

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.thresholds) || self.thresholds.all(k, k in self.metrics)",
                "every metric in spec.evaluation.thresholds must be listed in spec.evaluation.metrics",
            ),
        )
    )


class Resources(ApiModel):
    gpus: Annotated[int, Field(ge=0, le=64, description="GPUs per node; 0 runs on CPU")] = 1
    gpu_product: LabelValue | None = Field(
        default=None, description="nvidia.com/gpu.product node label value"
    )
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    cpu: Quantity | None = Field(
        default=None,
        description=f"CPU request per training pod; {CPU_PER_GPU} per GPU ({CPU_WITHOUT_GPU} without a GPU) when unset",
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            f"Memory request and limit per training pod; when unset, {MEMORY_GIB_PER_GPU}Gi per GPU"
            f" ({MEMORY_GIB_WITHOUT_GPU}Gi without a GPU) is requested and no limit is set"
        ),
    )
    ephemeral_storage: Quantity = Field(
        default=DEFAULT_EPHEMERAL_STORAGE,
        description=(
            "Node disk per training pod for the model cache, checkpoints and outputs: the pod's"
            " ephemeral-storage request and the sizeLimit of each of its scratch volumes (cache, work, tmp)"
        ),
    )

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.gpus > 0 || !has(self.gpuProduct)",
                "spec.resources.gpuProduct needs spec.resources.gpus > 0",
            ),
            cel("self.gpus > 0 || self.nodes == 1", "spec.resources.nodes > 1 needs spec.resources.gpus > 0"),
        )
    )


class Scheduling(ApiModel):
    queue_name: LabelValue | None = Field(default=None, description="Kueue LocalQueue")
    priority_class_name: DnsName | None = None
    node_selector: NodeSelector | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None


class Checkpoint(ApiModel):
    every_steps: Annotated[int, Field(ge=1, le=1_000_000)] = 500
    keep_last: Annotated[int, Field(ge=1, le=100)] = 3
    grace_period_seconds: Annotated[int, Field(ge=30, le=24 * 3600)] = Field(
        default=DEFAULT_CHECKPOINT_GRACE_SECONDS,
        description=(
            "Seconds a training pod has after SIGTERM (Kueue preemption, suspend, node drain) to write and"
            " upload a last checkpoint before it is killed: the pod's terminationGracePeriodSeconds"
        ),
    )


# bnb-nf4: a bitsandbytes 4-bit model loadable with from_pretrained. GGUF formats need llama.cpp's converter,
# which the trainer image does not ship yet: the export then writes bnb-nf4 instead and says so in a warning.
Quantization = Literal["bnb-nf4", "gguf-q4_k_m", "gguf-q8_0", "gguf-f16"]


class Tracking(ApiModel):
    report_to: Annotated[
        list[Tracker], Field(min_length=1, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(description="Experiment trackers that receive the run's parameters and metrics")
    mlflow_tracking_uri: (
        Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^https?://")] | None
    ) = Field(default=None, description="MLflow server; mlflow without it fails admission")
    project: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description="MLflow experiment / W&B project; the FineTuneJob's namespace when unset"
    )
    secret_ref: SecretReference | None = Field(
        default=None,
        description=(
            "Secret whose keys become the trainer's environment: MLFLOW_TRACKING_TOKEN or"
            " MLFLOW_TRACKING_USERNAME/PASSWORD, WANDB_API_KEY (and WANDB_BASE_URL for a private server)"
        ),
    )

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!self.reportTo.exists(t, t == 'mlflow') || has(self.mlflowTrackingUri)",
                "spec.tracking.reportTo mlflow needs spec.tracking.mlflowTrackingUri",
                fieldPath=".mlflowTrackingUri",
            ),
            cel(
                "!self.reportTo.exists(t, t == 'wandb') || has(self.secretRef)",
                "spec.tracking.reportTo wandb needs spec.tracking.secretRef (a Secret with WANDB_API_KEY)",
                fieldPath=".secretRef",
            ),
        )
    )


class Output(ApiModel):
    uri: DataUri = Field(description="Prefix that receives the adapter, merged model, exports and manifest")
    merge: bool = False
    quantize: (
        Annotated[
            list[Quantization], Field(max_length=4, json_schema_extra={"x-kubernetes-list-type": "set"})
        ]
        | None
    ) = None

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("self.uri == oldSelf.uri", "spec.output.uri is immutable", fieldPath=".uri"),
            cel(
                "self.uri.endsWith('/')",
                "spec.output.uri must end with '/' (it is a prefix)",
                fieldPath=".uri",
            ),
        )
    )

    @model_validator(mode="after")
    def _uri_is_a_prefix(self) -> Output:
        if not self.uri.endswith("/"):
            raise ValueError("spec.output.uri must end with '/' (it is a prefix)")
        return self


class TrainerSpec(ApiModel):
    """The part of a FineTuneJob's spec the trainer image runs: what it reads from its TrainerConfig."""

    base_model: BaseModelSource
    dataset: Dataset
    method: Method = "lora"
    lora: Lora | None = Field(
        default=None, description="LoRA settings; every method but full trains with them"
    )
    dpo: Dpo | None = Field(default=None, description="DPO settings; only for method dpo")
    hyperparameters: Hyperparameters = section(Hyperparameters)
    evaluation: Evaluation = section(Evaluation)
    resources: Resources = section(Resources)
    checkpoint: Checkpoint = section(Checkpoint)
    output: Output
    tracking: Tracking | None = Field(
        default=None,
        description="Experiment tracking (MLflow, TensorBoard, Weights & Biases); TensorBoard logs go to OUTPUT/tensorboard/",
    )

    @model_validator(mode="before")
    @classmethod
    def _method_sections(cls, data: Any) -> Any:
        """lora (for every method but full) and dpo (for dpo) default to their sections' defaults.

        A CRD default cannot depend on spec.method, and admission refuses lora for full and dpo for the
        other methods, so these two are filled here, once, for the operator and the trainer alike.
        """
        if not isinstance(data, dict):
            return data
        method = data.get("method") or "lora"
        if method != "full" and _absent(data, "lora"):
            data = {**data, "lora": Lora()}
        if method == "dpo" and _absent(data, "dpo"):
            data = {**data, "dpo": Dpo()}
        return data


# The trainer's part, then how the operator schedules and runs it (the trainer never reads these).
class FineTuneJobSpec(TrainerSpec):
    scheduling: Scheduling = section(Scheduling)
    storage_secret_ref: SecretReference | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, mounted into pods only",
    )
    cache: ModelCache | None = Field(
        default=None,
        description=(
            "Where the base model is kept between stages: a shared claim (pvc), downloaded once for validate,"
            " train, evaluate and export and every retry, or a volume per pod (ephemeral); node-disk emptyDirs"
            " when unset"
        ),
    )
    suspend: bool = False
    active_deadline_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = None
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3

    def trainer_spec(self) -> TrainerSpec:
        """Only what the trainer reads: how the job is scheduled does not change the trainer's config."""
        return TrainerSpec.model_validate({name: getattr(self, name) for name in TrainerSpec.model_fields})

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("self.method == oldSelf.method", "spec.method is immutable", fieldPath=".method"),
            cel(
                "self.method != 'dpo' || self.dataset.format == 'preference'",
                "spec.method dpo needs spec.dataset.format: preference",
                fieldPath=".dataset.format",
            ),
            cel(
                "self.dataset.format != 'preference' || self.method == 'dpo'",
                "spec.dataset.format preference trains only with spec.method: dpo",
                fieldPath=".method",
            ),
            cel(
                "self.method != 'full' || !has(self.lora)",
                "spec.lora must not be set when spec.method is full",
            ),
            cel("self.method == 'dpo' || !has(self.dpo)", "spec.dpo is only allowed when spec.method is dpo"),
            cel(
                "self.method != 'qlora' || !has(self.resources) || self.resources.gpus > 0",
                "spec.method qlora needs a GPU: set spec.resources.gpus >= 1",
                fieldPath=".resources.gpus",
            ),
            cel(
                "self.method == 'dpo' || !has(self.evaluation) || !has(self.evaluation.metrics)"
                " || !self.evaluation.metrics.exists(m, m == 'rewardAccuracy' || m == 'rewardMargin')",
                "spec.evaluation.metrics rewardAccuracy and rewardMargin need spec.method: dpo",
                fieldPath=".evaluation.metrics",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.resources)"
                " || (self.hyperparameters.crossEntropy != 'liger'"
                " && self.hyperparameters.attentionImplementation != 'flash_attention_2')"
                " || self.resources.gpus > 0",
                "spec.hyperparameters crossEntropy liger and attentionImplementation flash_attention_2 need a GPU:"
                " set spec.resources.gpus >= 1",
                fieldPath=".resources.gpus",
            ),
            cel(
                "!has(self.hyperparameters) || !has(self.hyperparameters.earlyStoppingPatience)"
                " || !has(self.hyperparameters.evalSteps) || !has(self.checkpoint)"
                " || self.checkpoint.everySteps % self.hyperparameters.evalSteps == 0",
                "with spec.hyperparameters.earlyStoppingPatience, spec.checkpoint.everySteps must be a multiple of"
                " spec.hyperparameters.evalSteps (the best model is restored from a checkpoint taken at an evaluation)",
                fieldPath=".hyperparameters.evalSteps",
            ),
            cel(
                "!has(self.output.quantize) || size(self.output.quantize) == 0"
                " || self.output.merge || self.method == 'full'",
                "spec.output.quantize needs spec.output.merge: true (quantized exports are built from the merged model)",
                fieldPath=".output.quantize",
            ),
        )
    )


class TokenStats(ApiModel):
    p50: int | None = None
    p95: int | None = None
    max: int | None = None
    truncated: int | None = None


class DatasetStatus(ApiModel):
    rows: int | None = None
    eval_rows: int | None = None
    invalid_rows: int | None = None
    duplicates_dropped: int | None = None
    leakage_rows: int | None = None
    sha256: Annotated[str, Field(max_length=64)] | None = None
    format: Annotated[str, Field(max_length=32)] | None = None
    tokens: TokenStats | None = None


class Estimate(ApiModel):
    gpu_memory_bytes: int | None = None
    gpu_memory_bytes_per_gpu: int | None = None
    fits_on_requested_gpus: bool | None = None


class Progress(ApiModel):
    step: int | None = None
    total_steps: int | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    epoch: Annotated[str, Field(max_length=32)] | None = None
    train_loss: Annotated[str, Field(max_length=32)] | None = None
    eval_loss: Annotated[str, Field(max_length=32)] | None = None
    tokens_per_second: int | None = None
    eta_seconds: int | None = None
    updated_at: Annotated[str, Field(max_length=64)] | None = None


class CheckpointStatus(ApiModel):
    step: int
    uri: Annotated[str, Field(max_length=1024)]
    eval_loss: Annotated[str, Field(max_length=32)] | None = None
    time: Annotated[str, Field(max_length=64)] | None = None


MetricValues = Annotated[dict[str, Annotated[str, Field(max_length=32)]], Field(max_length=16)]


class EvaluationStatus(ApiModel):
    metrics: MetricValues | None = None
    baseline: MetricValues | None = None
    passed: bool | None = None
    failed_thresholds: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=16)] | None = (
        None
    )


class Outputs(ApiModel):
    adapter_uri: Annotated[str, Field(max_length=1024)] | None = None
    merged_uri: Annotated[str, Field(max_length=1024)] | None = None
    manifest_uri: Annotated[str, Field(max_length=1024)] | None = None
    quantized_uris: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=8)] | None = None


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = None
    observed_generation: int | None = None
    conditions: Conditions | None = None
    dataset: DatasetStatus | None = None
    estimate: Estimate | None = None
    progress: Progress | None = None
    restarts: int | None = None
    resumed_from_step: int | None = None
    checkpoints: Annotated[list[CheckpointStatus], Field(max_length=100)] | None = None
    evaluation: EvaluationStatus | None = None
    outputs: Outputs | None = None
    start_time: Annotated[str, Field(max_length=64)] | None = None
    completion_time: Annotated[str, Field(max_length=64)] | None = None
