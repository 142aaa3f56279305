"""FineTuneJob children, rendered as plain dicts: the config, the validation Job, the training Job and the
finishing (evaluate + export) Job, plus a headless Service for multi-node rendezvous.

Three Jobs rather than one pod running every stage: each phase boundary is then visible as a Kubernetes
object (no scraping needed to know where a job stands), a failed evaluation never re-runs training, and
the CPU-only validation never holds a GPU.

A multi-node training Job is a gang: any pod's failure fails the whole Job (backoffLimit 0, a disruption
fails it too) and the operator recreates it under the next attempt's name, so every rank restarts together
from the newest complete checkpoint instead of one replaced index waiting for peers that hang in NCCL.

A `pvc://CLAIM/path` base model or dataset is mounted read-only at /mnt/pvc/CLAIM on each pod that reads it
(validation: dataset and model; training and finishing: the model), and the trainer reads it in place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from kubetune.api.common import ModelCache, ResourceIdentity
from kubetune.api.finetunejob import (
    CPU_PER_GPU,
    CPU_WITHOUT_GPU,
    MEMORY_GIB_PER_GPU,
    MEMORY_GIB_WITHOUT_GPU,
    FineTuneJobSpec,
)
from kubetune.api.trainer_config import CONFIG_FILE_NAME, TRAINER_PYTHON, TrainerConfig
from kubetune.render.pod import (
    CONFIG_MOUNT,
    GPU_PRODUCT_LABEL,
    MANAGED_BY,
    PART_OF,
    TERMINATION_LOG,
    Manifest,
    OperatorDefaults,
    cache_env,
    container_security_context,
    gpu_resources,
    merge_tolerations,
    owner_reference,
    pod_security_context,
    pvc_volumes,
    scratch_volumes,
    shared_cache,
    storage_env_from,
    workload_identity,
)

Stage = Literal["validate", "train", "finish"]
STAGES: tuple[Stage, ...] = ("validate", "train", "finish")

KIND = "FineTuneJob"
JOB_LABEL = "kubetune.dev/finetunejob"
STAGE_LABEL = "kubetune.dev/stage"
CONFIG_HASH_ANNOTATION = "kubetune.dev/config-hash"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
RENDEZVOUS_PORT = 29500
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# Exit code the trainer uses for bad input (dataset, config): retrying cannot help. Multi-process pods keep
# it: `kubetune_trainer launch` exits with the first failed worker's code, where torchrun would exit 1.
EXIT_INVALID_INPUT = 2
# A multi-node training Job's attempt (0 first, +1 per gang restart), and the gang restarts counted against
# spec.backoffLimit so far: the Job carries both, so a lost status write cannot undercount them.
GANG_ATTEMPT_ANNOTATION = "kubetune.dev/gang-attempt"
RESTARTS_ANNOTATION = "kubetune.dev/restarts"
# With JobSet installed a multi-node training step is a JobSet of one replicated Indexed Job, and JobSet's
# controller restarts all its ranks together (spec.failurePolicy). Upstream: kubernetes-sigs/jobset, v1alpha2.
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
JOBSET_REPLICATED_JOB = "node"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOBSET_RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
# Seconds of the grace period left to the launcher after torch.distributed stops waiting for its workers
# (it SIGKILLs them then), so the pod still exits with their code before the kubelet's SIGKILL.
LAUNCHER_SHUTDOWN_MARGIN_SECONDS = 15


def child_name(owner_name: str, stage: Stage | Literal["config"]) -> str:
    return f"{owner_name}-{stage}"


def training_job_name(owner_name: str, attempt: int = 0) -> str:
    """A fresh name per gang attempt: the new pods' hostnames (JOB-INDEX) never resolve to a terminating pod
    of the failed attempt, and its pods are never taken for the new Job's. Only the latest attempts' names
    must differ, so the suffix cycles retry1..retry9, short enough that NAME-retry9-63 (a 52-character name,
    64 nodes) fits a DNS label's 63 characters."""
    if attempt == 0:
        return child_name(owner_name, "train")
    return f"{owner_name}-retry{(attempt - 1) % 9 + 1}"


def selector_labels(owner: ResourceIdentity) -> dict[str, str]:
    return {MANAGED_BY: "kubetune", JOB_LABEL: owner.name}


def _metadata(owner: ResourceIdentity, name: str, labels: dict[str, str] | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**selector_labels(owner), PART_OF: "kubetune", **(labels or {})},
        "ownerReferences": [owner_reference(owner, KIND)],
    }


def trainer_config(
    owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults
) -> TrainerConfig:
    return TrainerConfig(job=owner, spec=spec.trainer_spec(), metrics_port=defaults.trainer_metrics_port)


def config_json(config: TrainerConfig) -> str:
    return json.dumps(
        config.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2, sort_keys=True
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_map(owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults) -> Manifest:
    text = config_json(trainer_config(owner, spec, defaults))
    metadata = _metadata(owner, child_name(owner.name, "config"))
    metadata["annotations"] = {CONFIG_HASH_ANNOTATION: config_hash(text)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {CONFIG_FILE_NAME: text}}


def _trainer_container(
    command: list[str],
    spec: FineTuneJobSpec,
    defaults: OperatorDefaults,
    *,
    resources: Manifest,
    mounts: list[Manifest],
    cache: ModelCache | None = None,
) -> Manifest:
    secret = spec.storage_secret_ref.name if spec.storage_secret_ref else None
    container: Manifest = {
        "name": "trainer",
        "image": defaults.trainer_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": command,
        "env": cache_env(cache),
        "resources": resources,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}, *mounts],
    }
    env_from = storage_env_from(secret)
    if env_from:
        container["envFrom"] = env_from
    return container


def _pod_spec(
    owner: ResourceIdentity, defaults: OperatorDefaults, containers: list[Manifest], volumes: list[Manifest]
) -> Manifest:
    """Every pod of a job: the ServiceAccount (cloud identity) and pull secrets too, validation included."""
    return {
        "restartPolicy": "Never",
        **workload_identity(defaults),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": containers,
        "volumes": [{"name": "config", "configMap": {"name": child_name(owner.name, "config")}}, *volumes],
    }


def _stage_command(stage: str) -> list[str]:
    return ["kubetune-trainer", stage, "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE_NAME}"]


def _pod_failure_policy(*, gang: bool = False) -> Manifest:
    """Bad input fails the Job at once; a preempted or evicted pod does not count against backoffLimit. In a
    gang it fails the Job too (a replaced rank alone cannot rejoin its peers): the operator restarts all."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [EXIT_INVALID_INPUT]},
            },
            {
                "action": "FailJob" if gang else "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def _job(
    owner: ResourceIdentity, stage: Stage, pod_spec: Manifest, *, config_digest: str, backoff_limit: int
) -> Manifest:
    labels: dict[str, str] = {STAGE_LABEL: stage}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **_metadata(owner, child_name(owner.name, stage), labels),
            "annotations": {CONFIG_HASH_ANNOTATION: config_digest},
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {
                "metadata": {
                    "labels": {**selector_labels(owner), **labels},
                    "annotations": {CONFIG_HASH_ANNOTATION: config_digest},
                },
                "spec": pod_spec,
            },
        },
    }


def _input_uris(spec: FineTuneJobSpec, stage: Stage) -> list[str | None]:
    """What a stage's pod reads from storage: validation reads the dataset and the model's config and
    tokenizer; training and finishing read the base model (their data is validation's prepared copy)."""
    dataset = [spec.dataset.uri, spec.dataset.eval_uri] if stage == "validate" else []
    return [spec.base_model.uri, *dataset]


def _with_pvc_inputs(
    spec: FineTuneJobSpec, stage: Stage, volumes: list[Manifest], mounts: list[Manifest]
) -> tuple[list[Manifest], list[Manifest]]:
    """Each claim a stage's pvc:// inputs name, mounted read-only at /mnt/pvc/CLAIM: the trainer's storage
    maps pvc://CLAIM/path there and reads in place."""
    pvc, pvc_mounts = pvc_volumes(_input_uris(spec, stage))
    return [*volumes, *pvc], [*mounts, *pvc_mounts]


def validation_job(
    owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, config_digest: str
) -> Manifest:
    """CPU only: no GPU is asked for until the dataset has passed."""
    disk = defaults.validation_ephemeral_storage
    # A shared cache only: validation downloads the model into it for the stages after it (model_cache).
    cache = shared_cache(spec.cache)
    volumes, mounts = _with_pvc_inputs(
        spec, "validate", *scratch_volumes(shm_size=None, size_limit=disk, cache=cache)
    )
    resources = gpu_resources(0, defaults.validation_cpu, defaults.validation_memory, ephemeral_storage=disk)
    container = _trainer_container(
        _stage_command("validate"), spec, defaults, resources=resources, mounts=mounts, cache=cache
    )
    job = _job(
        owner,
        "validate",
        _pod_spec(owner, defaults, [container], volumes),
        config_digest=config_digest,
        backoff_limit=2,
    )
    job["spec"]["activeDeadlineSeconds"] = 3600
    return job


def _gpu_pod_spec(
    owner: ResourceIdentity,
    spec: FineTuneJobSpec,
    defaults: OperatorDefaults,
    stage: Stage,
    command: list[str],
) -> Manifest:
    resources_spec = spec.resources
    gpus = resources_spec.gpus
    disk = resources_spec.ephemeral_storage
    shm = defaults.shm_size if gpus else None
    volumes, mounts = _with_pvc_inputs(
        spec, stage, *scratch_volumes(shm_size=shm, size_limit=disk, cache=spec.cache)
    )
    cpu, memory = _cpu_and_memory(spec)
    resources = gpu_resources(
        gpus, cpu, memory, memory_limit=resources_spec.memory is not None, ephemeral_storage=disk
    )
    container = _trainer_container(
        command, spec, defaults, resources=resources, mounts=mounts, cache=spec.cache
    )
    tracking = spec.tracking
    if stage == "train" and tracking is not None and tracking.secret_ref is not None:
        # The tracker's token reaches only the pods that report to it. First, so that the storage Secret's
        # keys win should both hold one (the last envFrom source takes precedence).
        container["envFrom"] = [
            {"secretRef": {"name": tracking.secret_ref.name}},
            *container.get("envFrom", []),
        ]
    # The same port as the TrainerConfig's metrics_port (config_map), and where the operator scrapes.
    metrics = {"name": "metrics", "containerPort": defaults.trainer_metrics_port, "protocol": "TCP"}
    container["ports"] = [metrics]
    pod = _pod_spec(owner, defaults, [container], volumes)
    # Long enough for the trainer's SIGTERM checkpoint (preemption, suspend, drain), not Kubernetes' 30 s.
    pod["terminationGracePeriodSeconds"] = spec.checkpoint.grace_period_seconds
    scheduling = spec.scheduling
    node_selector = dict(scheduling.node_selector or {})
    if resources_spec.gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = resources_spec.gpu_product
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = merge_tolerations(defaults.gpu_tolerations if gpus else (), scheduling.tolerations)
    if tolerations:
        pod["tolerations"] = tolerations
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    return pod


def _cpu_and_memory(spec: FineTuneJobSpec) -> tuple[str, str]:
    """The declared requests, else ones derived from the GPU count: a GPU pod is never BestEffort."""
    resources = spec.resources
    gpus = resources.gpus
    cpu = resources.cpu or str(CPU_PER_GPU * gpus if gpus else CPU_WITHOUT_GPU)
    memory = resources.memory or f"{MEMORY_GIB_PER_GPU * gpus if gpus else MEMORY_GIB_WITHOUT_GPU}Gi"
    return cpu, memory


def _train_command(owner: ResourceIdentity, spec: FineTuneJobSpec, job_name: str | None = None) -> list[str]:
    resources = spec.resources
    if resources.gpus <= 1 and resources.nodes == 1:
        return _stage_command("train")
    # The image venv's interpreter runs torch.distributed.run in-process (kubetune_trainer launch): its
    # workers then import kubetune_trainer, keep the trainer's exit code (2 = bad input) and get the grace
    # period, less a margin, to finish their SIGTERM checkpoint (torchrun's default is 30 s).
    shutdown = max(spec.checkpoint.grace_period_seconds - LAUNCHER_SHUTDOWN_MARGIN_SECONDS, 1)
    launcher = [
        TRAINER_PYTHON,
        "-m",
        "kubetune_trainer",
        "launch",
        f"--nproc-per-node={max(resources.gpus, 1)}",
        f"--shutdown-timeout={shutdown}",
    ]
    if resources.nodes == 1:
        launcher.append("--standalone")
    else:
        # Static rendezvous on index 0 through the headless Service; each pod's index is its node rank.
        # Index 0's hostname is JOB-0 in the Service's subdomain (the Job's name changes per gang attempt).
        job_name = job_name or training_job_name(owner.name)
        rendezvous_host = f"{job_name}-0.{child_name(owner.name, 'train')}.{owner.namespace}.svc"
        launcher += [
            f"--nnodes={resources.nodes}",
            "--node-rank=$(NODE_RANK)",
            f"--master-addr={rendezvous_host}",
            f"--master-port={RENDEZVOUS_PORT}",
        ]
    return [*launcher, "-m", "kubetune_trainer", "train", "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE_NAME}"]


def _kueue_labels(spec: FineTuneJobSpec) -> dict[str, str]:
    scheduling = spec.scheduling
    labels: dict[str, str] = {}
    if scheduling.queue_name:
        labels[QUEUE_LABEL] = scheduling.queue_name
        if scheduling.priority_class_name:
            labels[KUEUE_PRIORITY_LABEL] = scheduling.priority_class_name
    return labels


def training_job(
    owner: ResourceIdentity,
    spec: FineTuneJobSpec,
    defaults: OperatorDefaults,
    config_digest: str,
    *,
    attempt: int = 0,
    restarts: int = 0,
) -> Manifest:
    """The training Job; `attempt` and `restarts` matter only to a multi-node (gang) Job."""
    resources = spec.resources
    name = training_job_name(owner.name, attempt if resources.nodes > 1 else 0)
    pod = _gpu_pod_spec(owner, spec, defaults, "train", _train_command(owner, spec, name))
    job = _job(owner, "train", pod, config_digest=config_digest, backoff_limit=spec.backoff_limit)
    job["metadata"]["name"] = name
    job["metadata"]["labels"].update(_kueue_labels(spec))
    if spec.active_deadline_seconds:
        job["spec"]["activeDeadlineSeconds"] = spec.active_deadline_seconds
    # Kueue admits a Job by unsuspending it, so a queued Job starts suspended; the user's suspend also holds it.
    if _kueue_labels(spec) or spec.suspend:
        job["spec"]["suspend"] = True
    if resources.nodes > 1:
        # The operator counts and performs retries (all ranks at once): the Job controller retries none.
        job["spec"].update(
            {
                "completionMode": "Indexed",
                "completions": resources.nodes,
                "parallelism": resources.nodes,
                "backoffLimit": 0,
                "podFailurePolicy": _pod_failure_policy(gang=True),
            }
        )
        job["metadata"]["annotations"].update(
            {GANG_ATTEMPT_ANNOTATION: str(attempt), RESTARTS_ANNOTATION: str(restarts)}
        )
        pod["subdomain"] = child_name(owner.name, "train")
        container = pod["containers"][0]
        container["ports"].append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
        container["env"].append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}}})
    return job


def training_jobset(
    owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, config_digest: str
) -> Manifest:
    """A multi-node training step for JobSet's controller: any rank's failure restarts every rank (all child
    Jobs recreated) up to spec.backoffLimit times; bad input (exit 2) and the deadline fail it at once. JobSet
    also makes the headless Service (network.subdomain) the rendezvous host resolves in."""
    if spec.resources.nodes == 1:
        raise ValueError("a JobSet is rendered only for spec.resources.nodes > 1")
    # Named as the FineTuneJob (another kind): its pods' hostnames NAME-node-0-INDEX then fit a DNS label for
    # any allowed name, where NAME-train-node-0-0 would not. The subdomain keeps the train stage's name.
    name = owner.name
    subdomain = child_name(owner.name, "train")
    job = training_job(owner, spec, defaults, config_digest)
    job_spec = job["spec"]
    job_spec.pop("suspend", None)  # the JobSet's own suspend (Kueue, spec.suspend) holds its Jobs
    # A disruption is a plain failure here, so JobSet restarts the gang; FailJob stays for exit 2 alone,
    # which the JobSet's rule matches by the Job's failure reason (PodFailurePolicy).
    job_spec["podFailurePolicy"]["rules"][1]["action"] = "Count"
    pod = job_spec["template"]["spec"]
    pod.pop("subdomain")  # JobSet sets the subdomain and hostname of its pods
    child_job = f"{name}-{JOBSET_REPLICATED_JOB}-0"  # JOBSET-REPLICATEDJOB-JOBINDEX; pods add -PODINDEX
    pod["containers"][0]["command"] = _train_command(owner, spec, child_job)
    for key in (GANG_ATTEMPT_ANNOTATION, RESTARTS_ANNOTATION):
        job["metadata"]["annotations"].pop(key)
    metadata = {**job["metadata"], "name": name}
    spec_out: Manifest = {
        "network": {"enableDNSHostnames": True, "subdomain": subdomain, "publishNotReadyAddresses": True},
        "failurePolicy": {
            "maxRestarts": spec.backoff_limit,
            "rules": [
                {"name": "InvalidInput", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
                {
                    "name": "DeadlineExceeded",
                    "action": "FailJobSet",
                    "onJobFailureReasons": ["DeadlineExceeded"],
                },
            ],
        },
        "replicatedJobs": [
            {
                "name": JOBSET_REPLICATED_JOB,
                "replicas": 1,
                "template": {
                    "metadata": {"labels": dict(job_spec["template"]["metadata"]["labels"])},
                    "spec": job_spec,
                },
            }
        ],
    }
    if _kueue_labels(spec) or spec.suspend:
        spec_out["suspend"] = True
    return {"apiVersion": JOBSET_API_VERSION, "kind": "JobSet", "metadata": metadata, "spec": spec_out}


def finishing_job(
    owner: ResourceIdentity, spec: FineTuneJobSpec, defaults: OperatorDefaults, config_digest: str
) -> Manifest:
    """Evaluate against the base model, then export: one GPU is enough, whatever training used."""
    resources = spec.resources
    single = spec.model_copy(
        update={"resources": resources.model_copy(update={"gpus": min(resources.gpus, 1), "nodes": 1})}
    )
    pod = _gpu_pod_spec(owner, single, defaults, "finish", _stage_command("evaluate,export"))
    # Nothing to checkpoint: a stopped evaluation restarts from the start.
    pod.pop("terminationGracePeriodSeconds")
    job = _job(owner, "finish", pod, config_digest=config_digest, backoff_limit=min(spec.backoff_limit, 2))
    job["metadata"]["labels"].update(_kueue_labels(spec))
    if _kueue_labels(spec):
        job["spec"]["suspend"] = True
    return job


def rendezvous_service(owner: ResourceIdentity) -> Manifest:
    """Headless Service that gives Indexed Job pods stable DNS names for torchrun's rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, child_name(owner.name, "train")),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**selector_labels(owner), STAGE_LABEL: "train"},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def needs_rendezvous_service(spec: FineTuneJobSpec) -> bool:
    return spec.resources.nodes > 1
