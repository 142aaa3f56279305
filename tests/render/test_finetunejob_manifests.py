"""FineTuneJob children: golden files, Kubernetes' own schemas, restricted Pod Security, and the details
that matter (GPU scheduling, Kueue labels, credentials by reference only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import (
    DEFAULT_CHECKPOINT_GRACE_SECONDS,
    DEFAULT_EPHEMERAL_STORAGE,
    FineTuneJobSpec,
)
from kubetune.api.trainer_config import TRAINER_PYTHON
from kubetune.render import finetunejob as render
from kubetune.render.pod import OperatorDefaults
from tests.api.conftest import load_example
from tests.pss import pod_spec_of, restricted_violations

GOLDEN = Path(__file__).parent / "golden"
OWNER = ResourceIdentity(
    name="support-bot", namespace="team-a", uid="0b7c5a4e-1111-2222-3333-444455556666", generation=1
)
DEFAULTS = OperatorDefaults(trainer_image="ghcr.io/kubetune/trainer:0.1.0")
EXAMPLES = {
    "lora-basic": "01-lora-basic/finetunejob.yaml",
    "qlora-kueue": "02-qlora-kueue/finetunejob.yaml",
    "full-multinode": "03-full-multinode/finetunejob.yaml",
    "dpo": "04-dpo/finetunejob.yaml",
}


def _spec(example: str) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(load_example(EXAMPLES[example])["spec"])


def _children(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    config = render.config_map(OWNER, spec, DEFAULTS)
    digest = config["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]
    children = [
        config,
        render.validation_job(OWNER, spec, DEFAULTS, digest),
        render.training_job(OWNER, spec, DEFAULTS, digest),
        render.finishing_job(OWNER, spec, DEFAULTS, digest),
    ]
    if render.needs_rendezvous_service(spec):
        children.append(render.rendezvous_service(OWNER))
    return children


@pytest.mark.parametrize("example", EXAMPLES)
def test_children_match_golden_files(example: str) -> None:
    text = yaml.safe_dump_all(_children(_spec(example)), sort_keys=False, width=120)
    path = GOLDEN / f"finetunejob-{example}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} changed: review the diff, then rerun with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("example", EXAMPLES)
def test_children_pass_kubernetes_validate_strict(example: str) -> None:
    for child in _children(_spec(example)):
        for version in ("1.30.0", "1.37.0"):
            kubernetes_validate.validate(child, version, strict=True)


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_pod_meets_restricted_pod_security(example: str) -> None:
    for child in _children(_spec(example)):
        pod = pod_spec_of(child)
        if pod is not None:
            assert restricted_violations(pod) == [], child["metadata"]["name"]
            assert pod["automountServiceAccountToken"] is False


def test_validation_job_never_requests_a_gpu() -> None:
    spec = _spec("qlora-kueue")
    job = _children(spec)[1]
    text = json.dumps(job)
    assert "nvidia.com/gpu" not in text
    assert render.QUEUE_LABEL not in job["metadata"]["labels"]


def test_training_job_schedules_on_the_requested_gpus() -> None:
    job = _children(_spec("qlora-kueue"))[2]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["priorityClassName"] == "training-low"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/dev/shm", "/cache", "/tmp", "/etc/kubetune"} <= mounts


def test_kueue_labels_present_only_with_a_queue() -> None:
    queued = _children(_spec("qlora-kueue"))[2]
    assert queued["metadata"]["labels"][render.QUEUE_LABEL] == "gpu-team-a"
    assert queued["metadata"]["labels"][render.KUEUE_PRIORITY_LABEL] == "training-low"
    assert queued["spec"]["suspend"] is True
    plain = _children(_spec("lora-basic"))[2]
    assert render.QUEUE_LABEL not in plain["metadata"]["labels"]
    assert render.KUEUE_PRIORITY_LABEL not in plain["metadata"]["labels"]
    assert "suspend" not in plain["spec"]


def test_credentials_come_only_from_the_secret_reference() -> None:
    for child in _children(_spec("lora-basic")):
        pod = pod_spec_of(child)
        if pod is None:
            continue
        container = pod["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        assert not any("SECRET" in e["name"] or "KEY" in e["name"] for e in container["env"])


def test_the_tracking_secret_reaches_only_the_training_pod_and_storage_credentials_win() -> None:
    raw = load_example(EXAMPLES["qlora-kueue"])["spec"]
    raw["tracking"] = {
        "reportTo": ["mlflow"],
        "mlflowTrackingUri": "https://mlflow.internal.example.com",
        "project": "support-bot",
        "secretRef": {"name": "mlflow-token"},
    }
    config, validation, training, finishing = _children(FineTuneJobSpec.model_validate(raw))
    env_from = _pod(training)["containers"][0]["envFrom"]
    # The last source wins a key both hold: the storage Secret comes last.
    assert env_from == [{"secretRef": {"name": "mlflow-token"}}, {"secretRef": {"name": "s3-credentials"}}]
    for other in (validation, finishing):
        assert _pod(other)["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    # The tracker's address and project travel in the config; no credential does.
    tracking = json.loads(config["data"][render.CONFIG_FILE_NAME])["spec"]["tracking"]
    assert tracking == {
        "reportTo": ["mlflow"],
        "mlflowTrackingUri": "https://mlflow.internal.example.com",
        "project": "support-bot",
        "secretRef": {"name": "mlflow-token"},
    }


def _with_resources(example: str, **resources: Any) -> FineTuneJobSpec:
    spec = _spec(example)
    return spec.model_copy(update={"resources": spec.resources.model_copy(update=resources)})


def _pod(child: dict[str, Any]) -> dict[str, Any]:
    pod = pod_spec_of(child)
    assert pod is not None
    return pod


def test_several_gpus_on_one_node_launch_torch_distributed_with_the_image_venvs_python() -> None:
    # Not the base image's `torchrun`: its Python cannot import kubetune_trainer from the image's venv.
    command = _pod(_children(_with_resources("lora-basic", gpus=4))[2])["containers"][0]["command"]
    assert command[:4] == [TRAINER_PYTHON, "-m", "kubetune_trainer", "launch"]
    assert command[0] == "/opt/kubetune/bin/python"
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert command[-5:] == [
        "-m",
        "kubetune_trainer",
        "train",
        "--config",
        "/etc/kubetune/trainer-config.json",
    ]


def test_one_gpu_runs_the_stage_without_a_launcher() -> None:
    command = _pod(_children(_spec("lora-basic"))[2])["containers"][0]["command"]
    assert command[:2] == ["kubetune-trainer", "train"]


def test_training_pods_get_the_checkpoint_grace_period_and_torch_waits_for_the_workers() -> None:
    spec = _with_resources("lora-basic", gpus=4)
    spec = spec.model_copy(
        update={"checkpoint": spec.checkpoint.model_copy(update={"grace_period_seconds": 900})}
    )
    train = _pod(_children(spec)[2])
    assert train["terminationGracePeriodSeconds"] == 900
    # torch.distributed SIGKILLs its workers after --shutdown-timeout (30 s by default): a margin less.
    assert (
        f"--shutdown-timeout={900 - render.LAUNCHER_SHUTDOWN_MARGIN_SECONDS}"
        in train["containers"][0]["command"]
    )
    default = _pod(_children(_spec("lora-basic"))[2])
    assert default["terminationGracePeriodSeconds"] == DEFAULT_CHECKPOINT_GRACE_SECONDS > 30


@pytest.mark.parametrize("example", EXAMPLES)
def test_no_pod_is_best_effort_or_unbounded_on_disk(example: str) -> None:
    for child in _children(_spec(example)):
        pod = pod_spec_of(child)
        if pod is None:
            continue
        requests = pod["containers"][0]["resources"]["requests"]
        assert {"cpu", "memory", "ephemeral-storage"} <= set(requests), child["metadata"]["name"]
        for volume in pod["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), (child["metadata"]["name"], volume["name"])


def test_training_requests_derive_from_gpus_unless_declared() -> None:
    derived = _pod(_children(_with_resources("lora-basic", gpus=2))[2])["containers"][0]["resources"]
    assert derived["requests"]["cpu"] == "8" and derived["requests"]["memory"] == "64Gi"
    assert "memory" not in derived["limits"]  # a derived request is no cap
    assert derived["requests"]["ephemeral-storage"] == DEFAULT_EPHEMERAL_STORAGE
    declared = _with_resources("lora-basic", cpu="3", memory="40Gi", ephemeral_storage="500Gi")
    pod = _pod(_children(declared)[2])
    resources = pod["containers"][0]["resources"]
    assert resources["requests"] == {
        "cpu": "3", "memory": "40Gi", "ephemeral-storage": "500Gi", "nvidia.com/gpu": "1"
    }  # fmt: skip
    assert resources["limits"]["memory"] == "40Gi"
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"] == {"sizeLimit": "500Gi"}


def test_every_pod_gets_the_service_account_and_pull_secrets() -> None:
    defaults = OperatorDefaults(service_account_name="trainer", image_pull_secrets=("registry", "mirror"))
    spec = _spec("lora-basic")
    pods = [
        _pod(render.validation_job(OWNER, spec, defaults, "d")),
        _pod(render.training_job(OWNER, spec, defaults, "d")),
        _pod(render.finishing_job(OWNER, spec, defaults, "d")),
    ]
    for pod in pods:
        assert pod["serviceAccountName"] == "trainer"
        assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]
    assert "imagePullSecrets" not in _pod(_children(spec)[1])


def test_pvc_model_and_dataset_are_mounted_read_only_on_the_pods_that_read_them() -> None:
    example = load_example(EXAMPLES["lora-basic"])["spec"]
    spec = FineTuneJobSpec.model_validate(
        {
            **example,
            "baseModel": {"uri": "pvc://model-store/llama-3.1-8b"},
            "dataset": {
                **{k: v for k, v in example["dataset"].items() if k != "evalSplit"},
                "uri": "pvc://datasets/support/train.jsonl",
                "evalUri": "pvc://eval-sets/support/eval.jsonl",
            },
        }
    )
    jobs = {
        "validate": render.validation_job(OWNER, spec, DEFAULTS, "d"),
        "train": render.training_job(OWNER, spec, DEFAULTS, "d"),
        "finish": render.finishing_job(OWNER, spec, DEFAULTS, "d"),
    }
    # Validation reads the dataset and the model's config; training and finishing the base model only.
    expected = {
        "validate": ["datasets", "eval-sets", "model-store"],
        "train": ["model-store"],
        "finish": ["model-store"],
    }
    for stage, job in jobs.items():
        kubernetes_validate.validate(job, "1.37.0", strict=True)
        pod = _pod(job)
        claims = {
            v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        assert [c["claimName"] for c in claims.values()] == expected[stage], stage
        assert all(c["readOnly"] for c in claims.values()), stage
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"] if m["name"] in claims}
        assert sorted(m["mountPath"] for m in mounts.values()) == [
            f"/mnt/pvc/{claim}" for claim in expected[stage]
        ], stage
        assert all(m["readOnly"] for m in mounts.values()), stage
        assert restricted_violations(pod) == [], stage
    # The trainer gets the URIs as written: its storage maps pvc://CLAIM/path to /mnt/pvc/CLAIM/path.
    config = json.loads(render.config_map(OWNER, spec, DEFAULTS)["data"]["trainer-config.json"])
    assert config["spec"]["baseModel"]["uri"] == "pvc://model-store/llama-3.1-8b"
    assert "persistentVolumeClaim" not in str(
        _pod(render.validation_job(OWNER, _spec("lora-basic"), DEFAULTS, "d"))
    )


def test_multinode_is_an_indexed_job_with_rendezvous_service() -> None:
    children = _children(_spec("full-multinode"))
    job, service = children[2], children[4]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "support-bot-train"
    command = pod["containers"][0]["command"]
    assert "--nnodes=2" in command and "--nproc-per-node=8" in command
    assert "--master-addr=support-bot-train-0.support-bot-train.team-a.svc" in command
    assert service["spec"]["clusterIP"] == "None"


def test_multinode_job_is_a_gang_that_the_job_controller_never_retries_by_index() -> None:
    spec = _spec("full-multinode")
    job = render.training_job(OWNER, spec, DEFAULTS, "d")
    # Any pod failure, a disruption included, fails the whole Job: the operator restarts every rank together.
    assert job["spec"]["backoffLimit"] == 0
    rules = {
        json.dumps(rule.get("onExitCodes") or rule.get("onPodConditions")): rule["action"]
        for rule in job["spec"]["podFailurePolicy"]["rules"]
    }
    assert set(rules.values()) == {"FailJob"}, rules
    assert job["metadata"]["annotations"][render.GANG_ATTEMPT_ANNOTATION] == "0"
    # A single-node Job keeps the Job controller's retries, and disruptions stay free.
    single = render.training_job(OWNER, _spec("lora-basic"), DEFAULTS, "d")
    assert single["spec"]["backoffLimit"] == 3
    assert [r["action"] for r in single["spec"]["podFailurePolicy"]["rules"]] == ["FailJob", "Ignore"]
    assert render.GANG_ATTEMPT_ANNOTATION not in single["metadata"]["annotations"]
    assert render.training_job(OWNER, _spec("lora-basic"), DEFAULTS, "d", attempt=3)["metadata"]["name"] == (
        "support-bot-train"
    )


def test_a_restarted_gang_gets_a_fresh_name_and_rendezvous_on_its_own_rank_0() -> None:
    job = render.training_job(OWNER, _spec("full-multinode"), DEFAULTS, "d", attempt=2, restarts=1)
    assert job["metadata"]["name"] == "support-bot-retry2"
    assert job["metadata"]["annotations"][render.GANG_ATTEMPT_ANNOTATION] == "2"
    assert job["metadata"]["annotations"][render.RESTARTS_ANNOTATION] == "1"
    pod = job["spec"]["template"]["spec"]
    # The Service (subdomain) stays; index 0's hostname is the new Job's, never a terminating old pod's.
    assert pod["subdomain"] == render.rendezvous_service(OWNER)["metadata"]["name"] == "support-bot-train"
    command = pod["containers"][0]["command"]
    assert "--master-addr=support-bot-retry2-0.support-bot-train.team-a.svc" in command
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    for version in ("1.30.0", "1.37.0"):
        kubernetes_validate.validate(job, version, strict=True)


# The JobSet fields kubetune writes, as kubernetes-sigs/jobset's v1alpha2 CRD defines them
# (config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml, JobSet v0.8; not vendored): unknown fields,
# a wrong type or a rule without its required name fail here. The Job template is checked by
# kubernetes-validate as a batch/v1 Job.
_JOBSET_RULE = {
    "type": "object",
    "required": ["action", "name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
        "action": {"enum": ["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"]},
        "onJobFailureReasons": {"type": "array", "items": {"type": "string"}},
        "targetReplicatedJobs": {"type": "array", "items": {"type": "string"}},
    },
}
_JOBSET_SPEC = {
    "type": "object",
    "required": ["replicatedJobs"],
    "additionalProperties": False,
    "properties": {
        "suspend": {"type": "boolean"},
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enableDNSHostnames": {"type": "boolean"},
                "publishNotReadyAddresses": {"type": "boolean"},
                "subdomain": {"type": "string"},
            },
        },
        "failurePolicy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maxRestarts": {"type": "integer", "minimum": 0},
                "restartStrategy": {"enum": ["Recreate", "BlockingRecreate"]},
                "rules": {"type": "array", "items": _JOBSET_RULE},
            },
        },
        "replicatedJobs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "template"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "replicas": {"type": "integer"},
                    "template": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["spec"],
                        "properties": {"metadata": {"type": "object"}, "spec": {"type": "object"}},
                    },
                },
            },
        },
    },
}


def test_multinode_jobset_matches_its_golden_file_and_jobsets_schema() -> None:
    spec = _spec("full-multinode")
    digest = render.config_map(OWNER, spec, DEFAULTS)["metadata"]["annotations"][
        render.CONFIG_HASH_ANNOTATION
    ]
    jobset = render.training_jobset(OWNER, spec, DEFAULTS, digest)
    text = yaml.safe_dump(jobset, sort_keys=False, width=120)
    path = GOLDEN / "finetunejob-full-multinode-jobset.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{path.name} changed: review the diff, then rerun with UPDATE_GOLDEN=1"

    jsonschema.validate(jobset["spec"], _JOBSET_SPEC)
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
    (replicated,) = jobset["spec"]["replicatedJobs"]
    child = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "support-bot-node-0"},
             "spec": replicated["template"]["spec"]}  # fmt: skip
    for version in ("1.30.0", "1.37.0"):
        kubernetes_validate.validate(child, version, strict=True)
    assert restricted_violations(child["spec"]["template"]["spec"]) == []


def test_the_jobset_restarts_every_rank_and_fails_on_bad_input() -> None:
    spec = _spec("full-multinode")
    jobset = render.training_jobset(OWNER, spec, DEFAULTS, "d")
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == spec.backoff_limit == 3
    fail_on = {
        reason
        for rule in policy["rules"]
        if rule["action"] == "FailJobSet"
        for reason in rule["onJobFailureReasons"]
    }
    assert fail_on == {"PodFailurePolicy", "DeadlineExceeded"}
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert replicated["replicas"] == 1
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    assert job["backoffLimit"] == 0
    # Only exit 2 fails the child Job through the pod failure policy (reason PodFailurePolicy: FailJobSet);
    # a disruption counts as a plain failure (BackoffLimitExceeded), which JobSet answers with a restart.
    actions = [rule["action"] for rule in job["podFailurePolicy"]["rules"]]
    assert actions == ["FailJob", "Count"]
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [render.EXIT_INVALID_INPUT]
    assert jobset["spec"]["network"] == {
        "enableDNSHostnames": True, "subdomain": "support-bot-train", "publishNotReadyAddresses": True,
    }  # fmt: skip
    command = job["template"]["spec"]["containers"][0]["command"]
    # JobSet's pod hostname: JOBSET-REPLICATEDJOB-JOBINDEX-PODINDEX in the subdomain.
    assert "--master-addr=support-bot-node-0-0.support-bot-train.team-a.svc" in command
    assert "subdomain" not in job["template"]["spec"]
    # Kueue admits the JobSet as one workload: it carries the queue label and starts suspended, its Jobs not.
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-research"
    assert jobset["spec"]["suspend"] is True and "suspend" not in job
    assert jobset["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    with pytest.raises(ValueError, match="nodes > 1"):
        render.training_jobset(OWNER, _spec("lora-basic"), DEFAULTS, "d")


def test_every_gang_hostname_fits_a_dns_label_for_the_longest_name_and_most_nodes() -> None:
    owner = ResourceIdentity(name="n" * 52, namespace="team-a", uid="u")  # the CRD's longest name
    multinode = _spec("full-multinode")
    spec = multinode.model_copy(update={"resources": multinode.resources.model_copy(update={"nodes": 64})})
    names = [
        render.training_job(owner, spec, DEFAULTS, "d", attempt=a)["metadata"]["name"] for a in range(20)
    ]
    assert len(set(names[:10])) == 10  # ten attempts in a row never share a name
    jobset = render.training_jobset(owner, spec, DEFAULTS, "d")
    child = f"{jobset['metadata']['name']}-{jobset['spec']['replicatedJobs'][0]['name']}-0"
    for name in [*names, child]:
        assert len(f"{name}-63") <= 63, name  # an Indexed Job pod's hostname is JOB-INDEX


def test_config_map_carries_resolved_trainer_config() -> None:
    config = _children(_spec("lora-basic"))[0]
    data = json.loads(config["data"]["trainer-config.json"])
    assert data["spec"]["hyperparameters"]["warmupRatio"] == 0.03
    assert data["job"] == {"name": "support-bot", "namespace": "team-a", "uid": OWNER.uid, "generation": 1}
    # Only what the trainer reads: no scheduling, and no Secret (pods get it by envFrom, never its content).
    assert set(data["spec"]) == {
        "baseModel", "dataset", "method", "lora", "hyperparameters", "evaluation", "resources", "checkpoint", "output",
    }  # fmt: skip
    assert "s3-credentials" not in json.dumps(data)


def test_every_child_is_owned_by_the_job() -> None:
    for child in _children(_spec("full-multinode")):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == OWNER.uid and owner["controller"] is True
        assert child["metadata"]["labels"][render.JOB_LABEL] == "support-bot"


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_container_names_its_user_for_a_uid_without_a_passwd_entry(example: str) -> None:
    for child in _children(_spec(example)):
        pod = pod_spec_of(child)
        for container in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get("USER") and env.get("LOGNAME") == env["USER"], container["name"]
