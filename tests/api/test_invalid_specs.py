"""A table of specs a user can get wrong: each is refused at admission with a message naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import DELETE, load_crd, load_example, with_changes

JOB = load_example("01-lora-basic/finetunejob.yaml")
DEPLOYMENT = load_example("05-serve-canary/modeldeployment.yaml")
LONG_NAME = "a" * 53

# (case id, changes to the valid example, the field the error must name, a fragment of its message)
INVALID_JOBS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown-method", {"spec.method": "sft"}, "spec.method", "Unsupported value"),
    ("http-model-uri", {"spec.baseModel.uri": "http://models/x/"}, "spec.baseModel.uri", "should match"),
    ("model-uri-traversal", {"spec.baseModel.uri": "s3://models/a/../../etc/"}, "spec.baseModel.uri", "'..'"),
    ("hf-uri-without-name", {"spec.baseModel.uri": "hf://meta-llama"}, "spec.baseModel.uri", "should match"),
    ("missing-base-model", {"spec.baseModel": DELETE}, "spec.baseModel", "Required value"),
    ("uppercase-bucket", {"spec.dataset.uri": "s3://Data/rows.jsonl"}, "spec.dataset.uri", "should match"),
    ("unknown-format", {"spec.dataset.format": "csv"}, "spec.dataset.format", "Unsupported value"),
    (
        "split-and-eval-uri",
        {"spec.dataset.evalUri": "s3://data/eval.jsonl"},
        "spec.dataset",
        "exactly one of",
    ),
    ("no-eval-split", {"spec.dataset.evalSplit": DELETE}, "spec.dataset", "exactly one of"),
    ("eval-split-not-a-number", {"spec.dataset.evalSplit": "ten"}, "spec.dataset.evalSplit", "type number"),
    ("eval-split-quoted", {"spec.dataset.evalSplit": "0.05"}, "spec.dataset.evalSplit", "type number"),
    ("column-map-bad-key", {"spec.dataset.columnMap": {"question": "q"}}, "spec.dataset", "columnMap keys"),
    (
        "max-samples-zero",
        {"spec.dataset.maxSamples": 0},
        "spec.dataset.maxSamples",
        "greater than or equal to 1",
    ),
    ("lora-rank-zero", {"spec.lora.r": 0}, "spec.lora.r", "greater than or equal to 1"),
    ("lora-alpha-huge", {"spec.lora.alpha": 5000}, "spec.lora.alpha", "less than or equal to 4096"),
    ("no-target-modules", {"spec.lora.targetModules": []}, "spec.lora.targetModules", "at least 1"),
    (
        "duplicate-modules",
        {"spec.lora.targetModules": ["q_proj", "q_proj"]},
        "spec.lora.targetModules[1]",
        "Duplicate",
    ),
    (
        "module-with-space",
        {"spec.lora.targetModules": ["q proj"]},
        "spec.lora.targetModules[0]",
        "should match",
    ),
    (
        "zero-epochs",
        {"spec.hyperparameters.epochs": 0},
        "spec.hyperparameters.epochs",
        "greater than or equal",
    ),
    (
        "quoted-learning-rate",
        {"spec.hyperparameters.learningRate": "2e-4"},
        "spec.hyperparameters.learningRate",
        "must be of type number",
    ),
    (
        "two-warmups",
        {"spec.hyperparameters.warmupRatio": 0.1, "spec.hyperparameters.warmupSteps": 10},
        "spec.hyperparameters",
        "at most one",
    ),
    (
        "zero-warmup-steps",
        {"spec.hyperparameters.warmupSteps": 0},
        "spec.hyperparameters.warmupSteps",
        "greater than",
    ),
    (
        "constant-schedule",
        {"spec.hyperparameters.scheduler": "constant"},
        "spec.hyperparameters.scheduler",
        "Unsupported",
    ),
    ("zero-batch", {"spec.hyperparameters.batchSize": 0}, "spec.hyperparameters.batchSize", "greater than"),
    (
        "tiny-seq-length",
        {"spec.hyperparameters.maxSeqLength": 8},
        "spec.hyperparameters.maxSeqLength",
        "greater than",
    ),
    ("negative-seed", {"spec.hyperparameters.seed": -1}, "spec.hyperparameters.seed", "greater than"),
    (
        "misspelt-field",
        {"spec.hyperparameters.learningrate": 1e-4},
        "spec.hyperparameters.learningrate",
        "unknown field",
    ),
    (
        "unknown-metric",
        {"spec.evaluation.metrics": ["accuracy"]},
        "spec.evaluation.metrics[0]",
        "Unsupported value",
    ),
    (
        "threshold-on-unlisted-metric",
        {"spec.evaluation.thresholds": {"rougeL": {"min": 0.3}}},
        "spec.evaluation",
        "must be listed in spec.evaluation.metrics",
    ),
    (
        "empty-threshold",
        {"spec.evaluation.thresholds": {"perplexity": {}}},
        "spec.evaluation.thresholds[perplexity]",
        "min, max",
    ),
    (
        "threshold-min-above-max",
        {"spec.evaluation.thresholds": {"perplexity": {"min": 9, "max": 8.5}}},
        "spec.evaluation.thresholds[perplexity]",
        "min must be <= max",
    ),
    ("negative-gpus", {"spec.resources.gpus": -1}, "spec.resources.gpus", "greater than or equal to 0"),
    (
        "gpu-product-without-gpus",
        {"spec.resources": {"gpus": 0, "gpuProduct": "NVIDIA-H100-80GB-HBM3"}},
        "spec.resources",
        "gpuProduct needs",
    ),
    ("multinode-cpu", {"spec.resources": {"gpus": 0, "nodes": 2}}, "spec.resources", "nodes > 1 needs"),
    ("memory-not-quantity", {"spec.resources.memory": "lots"}, "spec.resources.memory", "should match"),
    (
        "qlora-on-cpu",
        {"spec.method": "qlora", "spec.resources": {"gpus": 0}},
        "spec.resources.gpus",
        "qlora needs a GPU",
    ),
    ("dpo-without-preference", {"spec.method": "dpo"}, "spec.dataset.format", "dpo needs"),
    ("preference-with-lora", {"spec.dataset.format": "preference"}, "spec.method", "trains only with"),
    (
        "full-with-lora-section",
        {"spec.method": "full", "spec.lora": {"r": 8}},
        "spec",
        "spec.lora must not be set",
    ),
    ("dpo-section-for-lora", {"spec.dpo": {"beta": 0.1}}, "spec", "spec.dpo is only allowed"),
    ("output-not-prefix", {"spec.output.uri": "s3://artifacts/run"}, "spec.output.uri", "must end with '/'"),
    (
        "quantize-without-merge",
        {"spec.output.quantize": ["gguf-q4_k_m"]},
        "spec.output.quantize",
        "merge: true",
    ),
    (
        "unknown-quantization",
        {"spec.output.quantize": ["awq"], "spec.output.merge": True},
        "spec.output.quantize[0]",
        "Unsupported",
    ),
    (
        "secret-name-invalid",
        {"spec.storageSecretRef.name": "S3_Creds"},
        "spec.storageSecretRef.name",
        "should match",
    ),
    (
        "queue-name-with-space",
        {"spec.scheduling.queueName": "gpu queue"},
        "spec.scheduling.queueName",
        "should match",
    ),
    (
        "exists-toleration-with-value",
        {"spec.scheduling.tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "spec.scheduling.tolerations[0]",
        "value must be empty",
    ),
    (
        "toleration-seconds-on-noschedule",
        {
            "spec.scheduling.tolerations": [
                {"key": "g", "value": "v", "effect": "NoSchedule", "tolerationSeconds": 5}
            ]
        },
        "spec.scheduling.tolerations[0].tolerationSeconds",
        "NoExecute",
    ),
    (
        "bad-node-selector-key",
        {"spec.scheduling.nodeSelector": {"bad key!": "v"}},
        "spec.scheduling.nodeSelector",
        "label keys",
    ),
    (
        "deadline-too-short",
        {"spec.activeDeadlineSeconds": 10},
        "spec.activeDeadlineSeconds",
        "greater than or equal to 60",
    ),
    ("backoff-huge", {"spec.backoffLimit": 1000}, "spec.backoffLimit", "less than or equal to 100"),
    (
        "checkpoint-every-zero",
        {"spec.checkpoint.everySteps": 0},
        "spec.checkpoint.everySteps",
        "greater than",
    ),
    ("missing-output", {"spec.output": DELETE}, "spec.output", "Required value"),
    (
        "cache-pvc-and-ephemeral",
        {"spec.cache": {"pvc": "model-cache", "ephemeral": {"size": "50Gi"}}},
        "spec.cache",
        "exactly one of spec.cache.pvc or spec.cache.ephemeral",
    ),
    ("cache-empty", {"spec.cache": {}}, "spec.cache", "exactly one of spec.cache.pvc"),
    ("cache-pvc-not-a-name", {"spec.cache": {"pvc": "Model_Cache"}}, "spec.cache.pvc", "should match"),
    (
        "cache-size-not-quantity",
        {"spec.cache": {"ephemeral": {"size": "lots"}}},
        "spec.cache.ephemeral.size",
        "should match",
    ),
    ("cache-ephemeral-no-size", {"spec.cache": {"ephemeral": {}}}, "spec.cache.ephemeral.size", "Required"),
    ("name-too-long", {"metadata.name": LONG_NAME}, "metadata.name", "may not be more than 52"),
    (
        "template-and-template-name",
        {"spec.dataset.chatTemplate": "{{ messages }}", "spec.dataset.chatTemplateName": "llama3"},
        "spec.dataset",
        "at most one of spec.dataset.chatTemplate",
    ),
    (
        "unknown-template-name",
        {"spec.dataset.chatTemplateName": "llama9"},
        "spec.dataset.chatTemplateName",
        "Unsupported value",
    ),
    (
        "unknown-optimizer",
        {"spec.hyperparameters.optimizer": "adam"},
        "spec.hyperparameters.optimizer",
        "Unsupported",
    ),
    (
        "min-lr-without-its-scheduler",
        {"spec.hyperparameters.minLearningRateRatio": 0.1},
        "spec.hyperparameters.minLearningRateRatio",
        "needs scheduler: cosine_with_min_lr",
    ),
    (
        "inputs-and-last-turn",
        {"spec.hyperparameters.trainOnInputs": True, "spec.hyperparameters.trainOnLastTurnOnly": True},
        "spec.hyperparameters",
        "at most one of spec.hyperparameters.trainOnInputs",
    ),
    (
        "liger-on-cpu",
        {"spec.hyperparameters.crossEntropy": "liger", "spec.resources.gpus": 0},
        "spec.resources.gpus",
        "need a GPU",
    ),
    (
        "flash-attention-on-cpu",
        {"spec.hyperparameters.attentionImplementation": "flash_attention_2", "spec.resources.gpus": 0},
        "spec.resources.gpus",
        "need a GPU",
    ),
    (
        "early-stopping-eval-steps-not-dividing",
        {
            "spec.hyperparameters.earlyStoppingPatience": 2,
            "spec.hyperparameters.evalSteps": 30,
            "spec.checkpoint.everySteps": 100,
        },
        "spec.hyperparameters.evalSteps",
        "must be a multiple of",
    ),
    (
        "eval-steps-zero",
        {"spec.hyperparameters.evalSteps": 0},
        "spec.hyperparameters.evalSteps",
        "greater than",
    ),
    (
        "reward-metric-without-dpo",
        {"spec.evaluation.metrics": ["perplexity", "rewardAccuracy"]},
        "spec.evaluation.metrics",
        "need spec.method: dpo",
    ),
    (
        "mlflow-without-uri",
        {"spec.tracking": {"reportTo": ["mlflow"]}},
        "spec.tracking.mlflowTrackingUri",
        "needs spec.tracking.mlflowTrackingUri",
    ),
    (
        "wandb-without-secret",
        {"spec.tracking": {"reportTo": ["wandb"]}},
        "spec.tracking.secretRef",
        "WANDB_API_KEY",
    ),
    ("tracking-empty", {"spec.tracking": {"reportTo": []}}, "spec.tracking.reportTo", "at least 1"),
    (
        "unknown-tracker",
        {"spec.tracking": {"reportTo": ["comet"]}},
        "spec.tracking.reportTo[0]",
        "Unsupported value",
    ),
    (
        "modules-to-save-bad-name",
        {"spec.lora.modulesToSave": ["lm head"]},
        "spec.lora.modulesToSave[0]",
        "should match",
    ),
]

INVALID_DEPLOYMENTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("two-sources", {"spec.source.modelUri": "s3://models/x/"}, "spec.source", "exactly one of"),
    ("no-source", {"spec.source": {}}, "spec.source", "exactly one of"),
    ("checkpoint-step-zero", {"spec.source.checkpoint": "step-0"}, "spec.source.checkpoint", "should match"),
    ("checkpoint-newest", {"spec.source.checkpoint": "newest"}, "spec.source.checkpoint", "should match"),
    (
        "checkpoint-with-model-uri",
        {"spec.source": {"modelUri": "s3://m/x/", "adapterUris": ["s3://m/a/"], "checkpoint": "best"}},
        "spec.source.checkpoint",
        "needs spec.source.fineTuneJobRef",
    ),
    (
        "adapters-with-job",
        {"spec.source.adapterUris": ["s3://m/a/"]},
        "spec.source.adapterUris",
        "needs spec.source.modelUri",
    ),
    ("unknown-runtime", {"spec.runtime": "triton"}, "spec.runtime", "Unsupported value"),
    (
        "adapter-mode-without-adapters",
        {"spec.source": {"modelUri": "s3://m/x/"}},
        "spec.serve",
        "needs spec.source.adapterUris",
    ),
    ("negative-replicas", {"spec.replicas": -1}, "spec.replicas", "greater than or equal to 0"),
    ("steps-decreasing", {"spec.rollout.steps": [50, 10, 100]}, "spec.rollout.steps", "strictly increasing"),
    ("steps-not-ending-at-100", {"spec.rollout.steps": [10, 50]}, "spec.rollout.steps", "end at 100"),
    (
        "step-over-100",
        {"spec.rollout.steps": [10, 150]},
        "spec.rollout.steps[1]",
        "less than or equal to 100",
    ),
    (
        "unknown-strategy",
        {"spec.rollout.strategy": "bluegreen"},
        "spec.rollout.strategy",
        "Unsupported value",
    ),
    (
        "pause-and-abort",
        {"spec.rollout.paused": True, "spec.rollout.abort": True},
        "spec.rollout",
        "cannot both",
    ),
    (
        "autoscaling-min-above-max",
        {"spec.autoscaling.minReplicas": 9},
        "spec.autoscaling",
        "minReplicas must be <=",
    ),
    ("replicas-outside-autoscaling", {"spec.replicas": 20}, "spec.replicas", "within spec.autoscaling"),
    (
        "metric-with-space",
        {"spec.autoscaling.metric": "queue depth"},
        "spec.autoscaling.metric",
        "should match",
    ),
    (
        "gate-unknown-metric",
        {"spec.gate.thresholds": {"accuracy": {"min": 0.9}}},
        "spec.gate.thresholds",
        "keys must be",
    ),
    ("serving-gpus-too-many", {"spec.resources.gpus": 16}, "spec.resources.gpus", "less than or equal to 8"),
    ("served-name-invalid", {"spec.servedModelName": "Support_Bot"}, "spec.servedModelName", "should match"),
    (
        "serving-cache-pvc-and-ephemeral",
        {"spec.cache": {"pvc": "model-cache", "ephemeral": {"size": "50Gi"}}},
        "spec.cache",
        "exactly one of spec.cache.pvc or spec.cache.ephemeral",
    ),
    ("serving-cache-pvc-not-a-name", {"spec.cache": {"pvc": "-cache"}}, "spec.cache.pvc", "should match"),
]

# Changes an update may not make: training inputs are fixed once the job exists.
IMMUTABLE_JOB_CHANGES: list[tuple[str, dict[str, Any], str]] = [
    ("base-model", {"spec.baseModel.uri": "s3://models/other/"}, "spec.baseModel"),
    ("dataset", {"spec.dataset.uri": "s3://data/other.jsonl"}, "spec.dataset"),
    ("method", {"spec.method": "qlora"}, "spec.method"),
    ("output-uri", {"spec.output.uri": "s3://artifacts/elsewhere/"}, "spec.output.uri"),
    ("hyperparameters", {"spec.hyperparameters": {"epochs": 9}}, "spec.hyperparameters"),
]


def _refusal(admission, kind: str, obj: dict[str, Any], old: dict[str, Any] | None = None):
    from kubetune_sandbox.emulator.admission import AdmissionError

    with pytest.raises(AdmissionError) as refused:
        admission[kind].admit(obj, old, version="v1alpha1")
    return refused.value


def _assert_names_field(error, field: str, fragment: str) -> None:
    status = error.to_status(kind="X", group="kubetune.dev", name="x")
    # kube-apiserver answers unknown fields with 400 (strict decoding), everything else with 422.
    assert status["code"] == (400 if fragment == "unknown field" else 422)
    causes: dict[str, list[str]] = {}
    for cause in error.causes:
        causes.setdefault(cause.field, []).append(cause.message)
    assert field in causes, f"expected a cause on {field}, got {causes}"
    assert any(fragment in message for message in causes[field]), causes[field]
    assert field in status["message"]


def test_the_table_is_big_enough() -> None:
    assert len(INVALID_JOBS) + len(INVALID_DEPLOYMENTS) >= 40
    assert len({case[0] for case in INVALID_JOBS + INVALID_DEPLOYMENTS}) == len(
        INVALID_JOBS + INVALID_DEPLOYMENTS
    )


def test_the_base_examples_are_valid(admission) -> None:
    admission["FineTuneJob"].admit(JOB, version="v1alpha1")
    admission["ModelDeployment"].admit(DEPLOYMENT, version="v1alpha1")


@pytest.mark.parametrize(
    ("case", "changes", "field", "fragment"), INVALID_JOBS, ids=[c[0] for c in INVALID_JOBS]
)
def test_invalid_finetunejob_is_refused_naming_the_field(admission, case, changes, field, fragment) -> None:
    error = _refusal(admission, "FineTuneJob", with_changes(JOB, changes))
    _assert_names_field(error, field, fragment)


@pytest.mark.parametrize(
    ("case", "changes", "field", "fragment"), INVALID_DEPLOYMENTS, ids=[c[0] for c in INVALID_DEPLOYMENTS]
)
def test_invalid_modeldeployment_is_refused_naming_the_field(
    admission, case, changes, field, fragment
) -> None:
    error = _refusal(admission, "ModelDeployment", with_changes(DEPLOYMENT, changes))
    _assert_names_field(error, field, fragment)


@pytest.mark.parametrize(
    ("case", "changes", "field"), IMMUTABLE_JOB_CHANGES, ids=[c[0] for c in IMMUTABLE_JOB_CHANGES]
)
def test_training_inputs_are_immutable(admission, case, changes, field) -> None:
    # Transition rules compare with the old value, so the old object must have one: start from a full spec.
    full = with_changes(JOB, {"spec.hyperparameters": {"epochs": 3}})
    old = admission["FineTuneJob"].admit(full, version="v1alpha1")
    error = _refusal(admission, "FineTuneJob", with_changes(old, changes), old)
    _assert_names_field(error, field, "immutable")


def test_mutable_fields_may_change(admission) -> None:
    old = admission["FineTuneJob"].admit(JOB, version="v1alpha1")
    changed = with_changes(
        old, {"spec.suspend": True, "spec.scheduling.queueName": "gpu-b", "spec.backoffLimit": 5}
    )
    admission["FineTuneJob"].admit(changed, old, version="v1alpha1")


def test_all_problems_are_reported_at_once(admission) -> None:
    obj = with_changes(JOB, {"spec.method": "sft", "spec.lora.r": 0, "spec.hyperparameters.epochs": 0})
    fields = {cause.field for cause in _refusal(admission, "FineTuneJob", obj).causes}
    assert {"spec.method", "spec.lora.r", "spec.hyperparameters.epochs"} <= fields


# Every decimal field of both kinds: (kind, path, changes that give the field a context, a number admitted
# and kept exactly, a number out of range, a fragment of the API server's message for it).
_DPO = {"spec.method": "dpo", "spec.dataset.format": "preference"}
DECIMAL_FIELDS: list[tuple[str, str, dict[str, Any], float, float, str]] = [
    ("FineTuneJob", "spec.dataset.evalSplit", {}, 0.1, 0.9, "less than or equal to 0.5"),
    ("FineTuneJob", "spec.dataset.invalidRowTolerance", {}, 0.05, 1, "less than 1"),
    ("FineTuneJob", "spec.lora.dropout", {}, 0.05, 1.0, "less than 1"),
    ("FineTuneJob", "spec.dpo.beta", _DPO, 0.1, 11, "less than or equal to 10"),
    ("FineTuneJob", "spec.hyperparameters.learningRate", {}, 2e-4, 0, "greater than 0"),
    ("FineTuneJob", "spec.hyperparameters.warmupRatio", {}, 0.03, 0.6, "less than or equal to 0.5"),
    ("FineTuneJob", "spec.hyperparameters.weightDecay", {}, 0.01, 1, "less than 1"),
    ("FineTuneJob", "spec.hyperparameters.maxGradNorm", {}, 0.3, 0, "greater than 0"),
    ("FineTuneJob", "spec.hyperparameters.adamBeta1", {}, 0.9, 1, "less than 1"),
    ("FineTuneJob", "spec.hyperparameters.adamBeta2", {}, 0.95, 0, "greater than 0"),
    ("FineTuneJob", "spec.hyperparameters.adamEpsilon", {}, 1e-8, 0.01, "less than or equal to 0.001"),
    (
        "FineTuneJob",
        "spec.hyperparameters.minLearningRateRatio",
        {"spec.hyperparameters.scheduler": "cosine_with_min_lr"},
        0.1,
        1,
        "less than 1",
    ),
    ("FineTuneJob", "spec.hyperparameters.neftuneNoiseAlpha", {}, 5, 101, "less than or equal to 100"),
    ("FineTuneJob", "spec.evaluation.thresholds.perplexity.min", {}, 1.5, -1, "greater than or equal to 0"),
    ("FineTuneJob", "spec.evaluation.thresholds.perplexity.max", {}, 20, -0.5, "greater than or equal to 0"),
    ("ModelDeployment", "spec.gate.thresholds.rougeL.min", {}, 0.35, -0.1, "greater than or equal to 0"),
    ("ModelDeployment", "spec.gate.thresholds.rougeL.max", {}, 0.9, -2, "greater than or equal to 0"),
    ("ModelDeployment", "spec.rollout.analysis.maxErrorRate", {}, 0.001, 2, "less than or equal to 1"),
    ("ModelDeployment", "spec.rollout.analysis.maxP95LatencySeconds", {}, 0.25, 0, "greater than 0"),
    ("ModelDeployment", "spec.autoscaling.target", {}, 2.5, 0, "greater than 0"),
]


def _number_fields(node: dict[str, Any], path: str) -> set[str]:
    """Paths of every `type: number` field under a CRD schema node (map values as [KEY])."""
    if node.get("type") == "number":
        return {path}
    found: set[str] = set()
    for name, child in node.get("properties", {}).items():
        found |= _number_fields(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found |= _number_fields(node["additionalProperties"], f"{path}[KEY]")
    if "items" in node:
        found |= _number_fields(node["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("plural", ["finetunejobs", "modeldeployments"])
def test_every_decimal_field_is_in_the_table(plural: str) -> None:

    schema = load_crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    kind = {"finetunejobs": "FineTuneJob", "modeldeployments": "ModelDeployment"}[plural]
    tabled = {
        path.replace(".perplexity.", "[KEY].").replace(".rougeL.", "[KEY].")
        for k, path, *_ in DECIMAL_FIELDS
        if k == kind
    }
    assert _number_fields(schema, "spec") == tabled


def _example(kind: str) -> dict[str, Any]:
    return JOB if kind == "FineTuneJob" else DEPLOYMENT


@pytest.mark.parametrize("case", DECIMAL_FIELDS, ids=[f"{c[0]}:{c[1]}" for c in DECIMAL_FIELDS])
def test_decimal_field_takes_a_number_and_refuses_one_out_of_range(admission, case) -> None:
    kind, path, context, accepted, refused, fragment = case
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.api.modeldeployment import ModelDeploymentSpec

    admitted = admission[kind].admit(
        with_changes(_example(kind), {**context, path: accepted}), version="v1alpha1"
    )
    node: Any = admitted
    for part in path.split("."):
        node = node[part]
    assert node == accepted and not isinstance(node, str), "admitted and kept as the same number"
    model = FineTuneJobSpec if kind == "FineTuneJob" else ModelDeploymentSpec
    model.model_validate(admitted["spec"])  # the operator reads what the API server stored

    error = _refusal(admission, kind, with_changes(_example(kind), {**context, path: refused}))
    _assert_names_field(error, path, fragment)


def test_a_quoted_decimal_is_refused_by_the_models_saying_use_a_number() -> None:
    from pydantic import ValidationError

    from kubetune.api.finetunejob import FineTuneJobSpec

    spec = with_changes(JOB, {"spec.hyperparameters.learningRate": "2e-4"})["spec"]
    with pytest.raises(ValidationError, match=r"hyperparameters\.learningRate\n.*use a number"):
        FineTuneJobSpec.model_validate(spec)
