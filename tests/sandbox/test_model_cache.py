"""spec.cache in the sandbox, with the real operator and trainer: counting the S3 GETs of the base model's
objects per stage (the sandbox's S3 request log; the trainer names its stage in the User-Agent).

Without a cache each pod downloads the model (validation only its config and tokenizer); with
`spec.cache: {pvc: model-cache}` validation downloads it once into the claim and training, evaluation and
export send no GET for it, nor does a later job on the same claim. The numbers are printed (pytest -s)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune_sandbox.cluster import seed
from kubetune_sandbox.cluster.runtime import SECRET_NAME, Sandbox, SandboxOptions

FINETUNEJOBS = "kubetune.dev/v1alpha1/finetunejobs"
MODELDEPLOYMENTS = "kubetune.dev/v1alpha1/modeldeployments"
NAMESPACE = "default"
CLAIM = "model-cache"
SERVING_CLAIM = "serving-cache"
JOB_SECONDS = 900  # one tiny job: ~15 s on 2 idle cores, far more with other suites running
SERVING_SECONDS = 300  # two replicas of the stand-in runtime to Ready: ~10 s on 2 idle cores
SANDBOX_UP = 300  # the sandbox's start and stop, counted against the module's first and last test


def _job(name: str, cache: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": {"uri": seed.BASE_MODEL_URI},
        "dataset": {"uri": seed.DATASET_URI, "evalSplit": 0.1, "maxSamples": 120},
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "hyperparameters": {"epochs": 1, "maxSteps": 4, "batchSize": 4, "maxSeqLength": 64,
                            "gradientCheckpointing": False},
        "checkpoint": {"everySteps": 4, "keepLast": 1},
        "evaluation": {"metrics": ["perplexity"], "maxSamples": 4, "maxNewTokens": 4},
        "resources": {"gpus": 0},
        "output": {"uri": f"s3://{seed.BUCKET}/outputs/{NAMESPACE}/{name}/"},
        "storageSecretRef": {"name": SECRET_NAME},
        "backoffLimit": 1,
    }  # fmt: skip
    if cache:
        spec["cache"] = cache
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def _run(sandbox: Sandbox, job: dict[str, Any]) -> Counter[str]:
    """Run a job to Succeeded; the base model's object GETs per stage while it ran."""
    assert sandbox.s3 is not None
    mark = len(sandbox.s3.requests())
    sandbox.server.create(FINETUNEJOBS, job, NAMESPACE)
    name = job["metadata"]["name"]
    deadline = time.monotonic() + JOB_SECONDS
    phase = None
    while time.monotonic() < deadline:
        status = (sandbox.server.get(FINETUNEJOBS, NAMESPACE, name) or {}).get("status") or {}
        phase = status.get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(0.5)
    assert phase == "Succeeded", f"{name} ended {phase}: {status}; see {sandbox.dir / 'operator.log'}"
    requests = sandbox.s3.requests()[mark:]
    return Counter(r.stage or "other" for r in requests if r.is_object_get(seed.BASE_MODEL_URI))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(tmp_path_factory.mktemp("sandbox"), SandboxOptions(), say=lambda _: None) as running:
        yield running


def _model_objects(sandbox: Sandbox) -> int:
    """What a full download of the base model GETs: one per object under its prefix."""
    assert sandbox.s3 is not None
    listing = sandbox.s3.client().list_objects_v2(Bucket=seed.BUCKET, Prefix=seed.MODEL_PREFIX)
    return len(listing["Contents"])


def _cache_entries(sandbox: Sandbox, claim: str = CLAIM) -> list[Path]:
    assert sandbox.kubelet is not None
    models = sandbox.kubelet.claim_directory(NAMESPACE, claim) / "kubetune" / "models"
    return sorted(p for p in models.iterdir() if not p.name.endswith(".lock"))


@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_SECONDS + SANDBOX_UP)
def test_a_shared_cache_downloads_the_model_once_for_every_stage(sandbox: Sandbox) -> None:
    model_objects = _model_objects(sandbox)
    assert model_objects >= 4  # config, tokenizer files, weights

    uncached = _run(sandbox, _job("no-cache", None))
    cached = _run(sandbox, _job("with-cache", {"pvc": CLAIM}))
    again = _run(sandbox, _job("with-cache-again", {"pvc": CLAIM}))
    print(f"\nbase model: {model_objects} objects; GETs per stage without spec.cache: {dict(uncached)};"
          f" with spec.cache.pvc: {dict(cached)}; a second job on the claim: {dict(again)}")  # fmt: skip

    # Without a cache: validation reads the config and tokenizer, then each GPU-stage pod downloads it all
    # (export shares evaluation's pod and so its per-pod copy).
    assert 0 < uncached["validate"] < model_objects
    assert uncached["train"] == model_objects
    assert uncached["evaluate"] == model_objects
    assert uncached["export"] == 0
    # With the claim: validation downloads the model once; no later stage sends a GET for it.
    assert cached == Counter({"validate": model_objects})
    assert again == Counter()  # the next job on the same base model downloads none of it

    entries = _cache_entries(sandbox)
    assert len(entries) == 1 and not entries[0].name.startswith(".partial-")
    assert (entries[0] / ".kubetune-complete").is_file()


def _deployment(name: str, cache: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"modelUri": seed.BASE_MODEL_URI},
        "runtime": "vllm",
        "serve": "merged",
        "replicas": 2,
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        "maxModelLen": 256,
        "rollout": {"strategy": "replace"},
        "storageSecretRef": {"name": SECRET_NAME},
    }
    if cache:
        spec["cache"] = cache
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}  # fmt: skip


def _serve(sandbox: Sandbox, deployment: dict[str, Any]) -> int:
    """Roll out two replicas to Ready; the base model's object GETs their fetch steps sent."""
    assert sandbox.s3 is not None
    mark = len(sandbox.s3.requests())
    sandbox.server.create(MODELDEPLOYMENTS, deployment, NAMESPACE)
    name = deployment["metadata"]["name"]
    deadline = time.monotonic() + SERVING_SECONDS
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (sandbox.server.get(MODELDEPLOYMENTS, NAMESPACE, name) or {}).get("status") or {}
        pods = sandbox.server.get("apps/v1/deployments", NAMESPACE, f"{name}-r1") or {}
        if status.get("phase") == "Ready" and (pods.get("status") or {}).get("readyReplicas", 0) >= 2:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{name} not Ready with 2 replicas: {status}")
    requests = sandbox.s3.requests()[mark:]
    gets = [r for r in requests if r.is_object_get(seed.BASE_MODEL_URI)]
    assert {r.stage for r in gets} <= {"fetch"}
    return len(gets)


@pytest.mark.slow
@pytest.mark.timeout(2 * SERVING_SECONDS + SANDBOX_UP)
def test_serving_replicas_share_one_download_through_the_claim(sandbox: Sandbox) -> None:
    model_objects = _model_objects(sandbox)
    uncached = _serve(sandbox, _deployment("serve-no-cache", None))
    # A claim of its own, so the model is not there yet: the two replicas' fetch steps start together.
    cached = _serve(sandbox, _deployment("serve-with-cache", {"pvc": SERVING_CLAIM}))
    print(f"\nbase model: {model_objects} objects; fetch GETs for 2 replicas without spec.cache: {uncached};"
          f" with spec.cache.pvc: {cached}")  # fmt: skip
    assert uncached == 2 * model_objects  # each replica's init container downloads it
    # Both replicas fetch at once: one downloads, the other waits on the lock and finds it complete.
    assert cached == model_objects
    entries = _cache_entries(sandbox, SERVING_CLAIM)
    assert len(entries) == 1 and (entries[0] / ".kubetune-complete").is_file()
