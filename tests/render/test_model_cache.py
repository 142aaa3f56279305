"""spec.cache in rendered pods: a user's claim (shared by every stage, retry, node and replica) or a volume per
pod, mounted where models and the libraries' caches live; without spec.cache nothing changes (golden files)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from kubetune.api.common import ModelCache, ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.render import finetunejob as render
from kubetune.render import modeldeployment as serving
from kubetune.render.pod import MODEL_CACHE_ENV, OperatorDefaults
from tests.api.conftest import load_example
from tests.pss import pod_spec_of, restricted_violations

OWNER = ResourceIdentity(name="support-bot", namespace="team-a", uid="0b7c5a4e-1111-2222-3333-444455556666")
DEFAULTS = OperatorDefaults()
PVC = {"pvc": "model-cache"}
EPHEMERAL = {"ephemeral": {"storageClassName": "fast-ssd", "size": "200Gi"}}
SERVING_SOURCE = serving.ResolvedSource(
    "s3://models/llama-3.1-8b/", (serving.Adapter("adapter", "s3://artifacts/team-a/support-bot/adapter/"),)
)


def _job_spec(
    cache: dict[str, Any] | None, example: str = "01-lora-basic/finetunejob.yaml"
) -> FineTuneJobSpec:
    spec = load_example(example)["spec"]
    return FineTuneJobSpec.model_validate({**spec, **({"cache": cache} if cache else {})})


def _stage_pods(spec: FineTuneJobSpec) -> dict[str, dict[str, Any]]:
    digest = "0123456789abcdef"
    jobs = {
        "validate": render.validation_job(OWNER, spec, DEFAULTS, digest),
        "train": render.training_job(OWNER, spec, DEFAULTS, digest),
        "finish": render.finishing_job(OWNER, spec, DEFAULTS, digest),
    }
    for job in jobs.values():
        kubernetes_validate.validate(job, "1.37.0", strict=True)
    pods = {stage: pod_spec_of(job) for stage, job in jobs.items()}
    return {stage: pod for stage, pod in pods.items() if pod is not None}


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod["volumes"] if v["name"] == name)


def _mount(container: dict[str, Any], path: str) -> dict[str, Any]:
    return next(m for m in container["volumeMounts"] if m["mountPath"] == path)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_a_claim_is_the_cache_of_every_stage_under_its_kubetune_folder() -> None:
    pods = _stage_pods(_job_spec(PVC))
    assert set(pods) == {"validate", "train", "finish"}
    for stage, pod in pods.items():
        assert _volume(pod, "cache") == {
            "name": "cache",
            "persistentVolumeClaim": {"claimName": "model-cache"},
        }
        container = pod["containers"][0]
        assert _mount(container, "/cache") == {"name": "cache", "mountPath": "/cache", "subPath": "kubetune"}
        env = _env(container)
        assert env[MODEL_CACHE_ENV] == "/cache/models", stage
        assert env["HF_HOME"] == "/cache/huggingface"
        # Work space and /tmp stay on the node, capped: only models are worth keeping.
        assert "emptyDir" in _volume(pod, "work") and "emptyDir" in _volume(pod, "tmp")
        assert restricted_violations(pod) == [], stage


def test_every_rank_of_a_multi_node_job_mounts_the_same_claim() -> None:
    spec = _job_spec(PVC, "03-full-multinode/finetunejob.yaml")
    assert spec.resources.nodes > 1
    pod = _stage_pods(spec)["train"]
    assert _volume(pod, "cache")["persistentVolumeClaim"] == {"claimName": "model-cache"}


def test_an_ephemeral_cache_is_a_claim_per_training_pod_and_validation_keeps_its_emptydir() -> None:
    pods = _stage_pods(_job_spec(EPHEMERAL))
    for stage in ("train", "finish"):
        pod = pods[stage]
        assert _volume(pod, "cache") == {
            "name": "cache",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": {"app.kubernetes.io/part-of": "kubetune"}},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "200Gi"}},
                        "storageClassName": "fast-ssd",
                    },
                }
            },
        }
        container = pod["containers"][0]
        assert "subPath" not in _mount(container, "/cache")  # the whole volume is ours
        assert _env(container)[MODEL_CACHE_ENV] == "/cache/models"
        assert restricted_violations(pod) == []
    # Validation reads only the model's config and tokenizer: a claim of its own would be thrown away.
    validation = pods["validate"]
    assert "emptyDir" in _volume(validation, "cache")
    assert MODEL_CACHE_ENV not in _env(validation["containers"][0])


def test_without_a_cache_pods_keep_node_disk_emptydirs_and_no_model_cache() -> None:
    for pod in _stage_pods(_job_spec(None)).values():
        assert set(_volume(pod, "cache")) == {"name", "emptyDir"}
        assert MODEL_CACHE_ENV not in _env(pod["containers"][0])


def test_the_cache_does_not_change_the_trainer_config() -> None:
    # spec.cache only places volumes: the running stages' config (and its hash) stays the same.
    with_cache = render.config_map(OWNER, _job_spec(PVC), DEFAULTS)
    without = render.config_map(OWNER, _job_spec(None), DEFAULTS)
    assert with_cache["data"] == without["data"]


@pytest.mark.parametrize("cache", [PVC, EPHEMERAL], ids=["pvc", "ephemeral"])
def test_serving_fetches_into_the_cache_and_the_runtime_reads_it_read_only(cache: dict[str, Any]) -> None:
    spec_data = load_example("05-serve-canary/modeldeployment.yaml")["spec"]
    spec = ModelDeploymentSpec.model_validate({**spec_data, "cache": cache})
    deployment = serving.revision_deployment(
        OWNER, spec, SERVING_SOURCE, revision=1, replicas=2, role="stable", defaults=serving.ServingDefaults()
    )
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    volume = _volume(pod, "model-cache")
    assert ("persistentVolumeClaim" in volume) == ("pvc" in cache)
    assert ("ephemeral" in volume) == ("ephemeral" in cache)
    fetch, runtime = pod["initContainers"][0], pod["containers"][0]
    fetch_mount, runtime_mount = _mount(fetch, "/model-cache"), _mount(runtime, "/model-cache")
    assert "readOnly" not in fetch_mount and runtime_mount["readOnly"] is True
    assert (
        fetch_mount.get("subPath") == runtime_mount.get("subPath") == ("kubetune" if "pvc" in cache else None)
    )
    assert _env(fetch)[MODEL_CACHE_ENV] == "/model-cache/models"
    # The runtime still reads /models (links into the cache) and keeps its own writable /cache.
    assert runtime["args"][runtime["args"].index("--model") + 1] == "/models/base"
    assert "emptyDir" in _volume(pod, "cache")


def test_serving_without_a_cache_has_no_cache_volume() -> None:
    spec = ModelDeploymentSpec.model_validate(load_example("05-serve-canary/modeldeployment.yaml")["spec"])
    pod = serving.revision_deployment(
        OWNER, spec, SERVING_SOURCE, revision=1, replicas=1, role="stable", defaults=serving.ServingDefaults()
    )["spec"]["template"]["spec"]
    assert "model-cache" not in {v["name"] for v in pod["volumes"]}
    assert MODEL_CACHE_ENV not in _env(pod["initContainers"][0])


@pytest.mark.parametrize(
    "data", [{}, {**PVC, **EPHEMERAL}, {"pvc": "Model_Cache"}, {"ephemeral": {"size": "lots"}}]
)
def test_the_typed_model_refuses_what_admission_refuses(data: dict[str, Any]) -> None:
    # tests/api/test_invalid_specs.py holds the same cases against the CRD's schema and CEL rule.
    with pytest.raises(ValidationError):
        ModelCache.model_validate(data)
