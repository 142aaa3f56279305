"""Pure decisions of the sandbox's controllers and kubelet: no I/O, no clocks, no threads.

The controllers (controllers.py, kubelet.py) observe the API, call these functions and apply what they
return, so what a Job or Deployment controller *decides* is tested with plain dicts (tests/sandbox).
They follow the Kubernetes controllers' documented behaviour, restricted to what kubetune renders.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune.api.timestamps import format_time, parse_time

Obj = dict[str, Any]

JOB_NAME_LABEL = "job-name"
BATCH_JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "controller-uid"
BATCH_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
POD_TEMPLATE_HASH = "pod-template-hash"
TERMINAL_PHASES = ("Succeeded", "Failed")


def condition_true(obj: Mapping[str, Any], kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def pod_phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return pod_phase(pod) == "Running" and condition_true(pod, "Ready")


# ----------------------------------------------------------------------------------------------- Jobs


@dataclass(frozen=True)
class JobPlan:
    """What the Job controller does next: pods to create (by completion index, None if NonIndexed),
    pods to delete (by name), and the status to write (None: unchanged)."""

    create: list[int | None] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    status: Obj | None = None


def _exit_codes(pod: Mapping[str, Any], container: str | None) -> list[int]:
    codes = []
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if container and status.get("name") != container:
            continue
        terminated = (status.get("state") or {}).get("terminated")
        if terminated is not None:
            codes.append(int(terminated.get("exitCode", 0)))
    return codes


def _rule_matches(rule: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    on_codes = rule.get("onExitCodes")
    if on_codes:
        values = set(on_codes.get("values") or [])
        codes = _exit_codes(pod, on_codes.get("containerName"))
        if on_codes.get("operator", "In") == "In":
            return any(code in values for code in codes)
        return any(code not in values and code != 0 for code in codes)
    for wanted in rule.get("onPodConditions") or []:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == wanted.get("type") and condition.get("status") == wanted.get(
                "status", "True"
            ):
                return True
    return False


def failure_action(job: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    """The podFailurePolicy action for a failed pod: FailJob | Ignore | Count (the default)."""
    policy = (job.get("spec") or {}).get("podFailurePolicy") or {}
    for rule in policy.get("rules") or []:
        if _rule_matches(rule, pod):
            return str(rule.get("action", "Count"))
    return "Count"


def pod_index(pod: Mapping[str, Any]) -> int | None:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX)
    return int(raw) if raw is not None and str(raw).isdigit() else None


def _condition(kind: str, reason: str, message: str, now: str) -> Obj:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _with_condition(conditions: list[Obj], new: Obj) -> list[Obj]:
    """Replace the condition of that type, keeping its transition time if its status did not change."""
    kept = [c for c in conditions if c.get("type") != new["type"]]
    old = next((c for c in conditions if c.get("type") == new["type"]), None)
    if old and old.get("status") == new["status"] and old.get("reason") == new.get("reason"):
        return conditions
    return [*kept, new]


def _compress_indexes(indexes: list[int]) -> str:
    """ "0-2,5" as the Job status spells completedIndexes."""
    runs: list[list[int]] = []
    for index in sorted(set(indexes)):
        if runs and runs[-1][1] == index - 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def plan_job(job: Mapping[str, Any], pods: list[Obj], *, vanished: int, now: datetime) -> JobPlan:
    """The Job controller's next step for one Job.

    `pods` are the Job's pods that still exist; `vanished` counts its pods deleted before reaching a
    terminal phase (a cluster tracks them with a finalizer and counts them as failed).
    """
    spec = job.get("spec") or {}
    status: Obj = dict(job.get("status") or {})
    conditions: list[Obj] = list(status.get("conditions") or [])
    stamp = format_time(now)
    indexed = spec.get("completionMode") == "Indexed"
    completions = spec.get("completions")
    parallelism = spec.get("parallelism")
    if completions is None:
        completions = 1 if parallelism is None else None  # None: a work queue, done at the first success
    parallelism = 1 if parallelism is None else int(parallelism)

    active = [p for p in pods if pod_phase(p) not in TERMINAL_PHASES]
    succeeded_pods = [p for p in pods if pod_phase(p) == "Succeeded"]
    failed_pods = [p for p in pods if pod_phase(p) == "Failed"]
    actions = [failure_action(job, p) for p in failed_pods]
    failed = sum(1 for action in actions if action != "Ignore") + vanished
    succeeded = len(succeeded_pods)
    done_indexes = sorted({i for i in map(pod_index, succeeded_pods) if i is not None})

    def result(create: list[int | None], delete: list[str], new_conditions: list[Obj]) -> JobPlan:
        new = dict(status)
        remaining = [p for p in active if p["metadata"]["name"] not in delete]
        new.update(
            active=len(remaining) + len(create),
            succeeded=succeeded,
            failed=failed,
            ready=sum(1 for p in remaining if pod_ready(p)),
            conditions=new_conditions,
        )
        if indexed:
            new["completedIndexes"] = _compress_indexes(done_indexes)
        if not new_conditions:
            new.pop("conditions")
        return JobPlan(create, delete, None if new == (job.get("status") or {}) else new)

    finished = condition_true(job, "Complete") or condition_true(job, "Failed")
    if finished:  # terminal: only make sure nothing keeps running
        return result([], [p["metadata"]["name"] for p in active], conditions)

    everyone = [p["metadata"]["name"] for p in active]
    if "FailJob" in actions:
        culprit = failed_pods[actions.index("FailJob")]["metadata"]["name"]
        message = f"Pod {culprit} failed and matched a FailJob rule of the podFailurePolicy"
        failed_condition = _condition("Failed", "PodFailurePolicy", message, stamp)
        return result([], everyone, _with_condition(conditions, failed_condition))

    backoff_limit = int(spec.get("backoffLimit", 6))
    if failed > backoff_limit:
        message = "Job has reached the specified backoff limit"
        failed_condition = _condition("Failed", "BackoffLimitExceeded", message, stamp)
        return result([], everyone, _with_condition(conditions, failed_condition))

    if spec.get("suspend"):
        if not condition_true(job, "Suspended"):
            conditions = _with_condition(
                conditions, _condition("Suspended", "JobSuspended", "Job suspended", stamp)
            )
        status.pop("startTime", None)  # a cluster restarts the deadline clock on resume
        return result([], everyone, conditions)
    if condition_true(job, "Suspended"):
        resumed = {**_condition("Suspended", "JobResumed", "Job resumed", stamp), "status": "False"}
        conditions = [c for c in conditions if c.get("type") != "Suspended"] + [resumed]

    started = parse_time(status.get("startTime"))
    if started is None:
        status["startTime"] = stamp
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and started is not None and (now - started).total_seconds() >= int(deadline):
        message = "Job was active longer than specified deadline"
        failed_condition = _condition("Failed", "DeadlineExceeded", message, stamp)
        return result([], everyone, _with_condition(conditions, failed_condition))

    if indexed:
        total = int(completions or 1)
        complete = len(done_indexes) >= total
    elif completions is None:
        complete = succeeded >= 1 and not active
    else:
        complete = succeeded >= int(completions)
    if complete:
        status["completionTime"] = stamp
        # Complete and its precondition SuccessCriteriaMet, as Kubernetes >= 1.31 reports them.
        done = _condition(
            "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", stamp
        )
        conditions = _with_condition(conditions, done)
        conditions = _with_condition(conditions, {**done, "type": "Complete"})
        return result([], everyone, conditions)

    create: list[int | None] = []
    if indexed:
        running = {pod_index(p) for p in active}
        wanted = [i for i in range(int(completions or 1)) if i not in done_indexes and i not in running]
        create = list(wanted[: max(parallelism - len(active), 0)])
    else:
        remaining = parallelism if completions is None else min(parallelism, int(completions) - succeeded)
        create = [None] * max(remaining - len(active), 0)
    return result(create, [], conditions)


def job_pod(job: Mapping[str, Any], index: int | None, suffix: str) -> Obj:
    """A pod from the Job's template, labelled and owned as the Job controller does."""
    meta = job["metadata"]
    template = json.loads(json.dumps(job["spec"]["template"]))
    pod_meta = template.get("metadata") or {}
    name = meta["name"] if index is None else f"{meta['name']}-{index}"
    labels = {
        **(pod_meta.get("labels") or {}),
        JOB_NAME_LABEL: meta["name"],
        BATCH_JOB_NAME_LABEL: meta["name"],
        CONTROLLER_UID_LABEL: meta["uid"],
        BATCH_CONTROLLER_UID_LABEL: meta["uid"],
    }
    annotations = dict(pod_meta.get("annotations") or {})
    spec = template["spec"]
    if index is not None:
        labels[COMPLETION_INDEX] = str(index)
        annotations[COMPLETION_INDEX] = str(index)
        # As the Job controller does: every container learns its index from the annotation.
        env = {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        }
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            container["env"] = [*container.get("env", []), env]
    if index is not None and spec.get("subdomain"):
        spec["hostname"] = f"{meta['name']}-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{suffix}",
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


# ------------------------------------------------------------------------------------------ Deployments


def template_hash(template: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


@dataclass(frozen=True)
class DeploymentPlan:
    create: int = 0
    delete: list[str] = field(default_factory=list)
    status: Obj | None = None


def plan_deployment(deployment: Mapping[str, Any], pods: list[Obj], *, now: datetime) -> DeploymentPlan:
    """Replicas of the current template; old-template pods go as new ones become ready (maxUnavailable 0)."""
    spec = deployment.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    current = template_hash(spec.get("template") or {})
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    failed = [p for p in live if pod_phase(p) in TERMINAL_PHASES]  # a Deployment's pods are always replaced
    live = [p for p in live if p not in failed]
    new = [p for p in live if (p["metadata"].get("labels") or {}).get(POD_TEMPLATE_HASH) == current]
    old = [p for p in live if p not in new]
    delete = [p["metadata"]["name"] for p in failed]

    # Scale the new set to `replicas`, dropping not-ready pods first.
    new_sorted = sorted(new, key=lambda p: (pod_ready(p), p["metadata"].get("creationTimestamp", "")))
    excess = max(len(new) - replicas, 0)
    delete += [p["metadata"]["name"] for p in new_sorted[:excess]]
    new = new_sorted[excess:]
    create = max(replicas - len(new), 0)
    ready_new = sum(1 for p in new if pod_ready(p))
    # Keep old pods only while the new ones cannot yet carry the load: old + ready new >= replicas.
    keep_old = max(min(replicas - ready_new, len(old)), 0)
    old_sorted = sorted(old, key=pod_ready, reverse=True)
    delete += [p["metadata"]["name"] for p in old_sorted[keep_old:]]
    remaining = new + old_sorted[:keep_old]

    ready = sum(1 for p in remaining if pod_ready(p))
    available = ready >= replicas
    stamp = format_time(now)
    old_status = dict(deployment.get("status") or {})
    status: Obj = {
        **old_status,
        "observedGeneration": (deployment.get("metadata") or {}).get("generation", 1),
        "replicas": len(remaining) + create,
        "updatedReplicas": len(new) + create,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(replicas - ready, 0),
    }
    conditions = list(old_status.get("conditions") or [])
    available_condition = {
        "type": "Available",
        "status": "True" if available else "False",
        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        "message": "Deployment has minimum availability."
        if available
        else "Deployment does not have minimum availability.",
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    }
    rolled = available and not old_sorted[:keep_old] and len(new) == replicas
    progressing_condition = {
        "type": "Progressing",
        "status": "True",
        "reason": "NewReplicaSetAvailable" if rolled else "ReplicaSetUpdated",
        "message": f'ReplicaSet "{deployment["metadata"]["name"]}-{current}" '
        + ("has successfully progressed." if rolled else "is progressing."),
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    }
    for condition in (available_condition, progressing_condition):
        conditions = _with_condition(conditions, condition)
    status["conditions"] = conditions
    if status == old_status:
        return DeploymentPlan(create, delete, None)
    return DeploymentPlan(create, delete, status)


def deployment_pod(deployment: Mapping[str, Any], suffix: str) -> Obj:
    meta = deployment["metadata"]
    template = json.loads(json.dumps(deployment["spec"]["template"]))
    digest = template_hash(deployment["spec"]["template"])
    labels = {**((template.get("metadata") or {}).get("labels") or {}), POD_TEMPLATE_HASH: digest}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{digest[:8]}-{suffix}",
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }


# ------------------------------------------------------------------------------------- label selectors


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """A LabelSelector (matchLabels/matchExpressions) or a Service's plain map; empty matches nothing."""
    if not selector:
        return False
    labels = labels or {}
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


# --------------------------------------------------------------------------------------------- kubelet

_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env: unknown references stay, $$ escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REFERENCE.sub(replace, text)


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API fieldRef."""
    meta = pod.get("metadata") or {}
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    return str(simple.get(path) or "")


def rewrite_paths(text: str, mounts: Mapping[str, str]) -> str:
    """Replace every mounted path prefix where it starts a path: at the start of the string or after '=',
    ',', ':' or whitespace (as in `--lora-modules name=/models/adapters/x`). One pass, longest mount first,
    so a replaced path is never rewritten again (a pod directory under /tmp must not match `/tmp`)."""
    if not mounts:
        return text
    ordered = sorted((m.rstrip("/") or "/" for m in mounts), key=len, reverse=True)
    targets = {m.rstrip("/") or "/": t.rstrip("/") for m, t in mounts.items()}
    alternatives = "|".join(re.escape(m) for m in ordered)
    pattern = re.compile(rf"(?:^|(?<=[=,:\s]))({alternatives})(?=/|$|[,:\s])")
    return pattern.sub(lambda match: targets[match.group(1)], text)


_SERVICE_HOST = re.compile(
    r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\b"
)


def rewrite_service_hosts(text: str, cluster_ips: Mapping[tuple[str, str], str]) -> str:
    """`NAME.NAMESPACE.svc[.cluster.local]` -> the Service's loopback clusterIP: the sandbox's cluster DNS."""

    def replace(match: re.Match[str]) -> str:
        return cluster_ips.get((match.group(3), match.group(1)), match.group(0))

    return _SERVICE_HOST.sub(replace, text)


def resolve_port(port: int | str, containers: list[Mapping[str, Any]]) -> int | None:
    """A numeric port, or a named containerPort looked up in the pod's containers."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in containers:
        for entry in container.get("ports") or []:
            if entry.get("name") == port:
                return int(entry["containerPort"])
    return None


def loopback_address(prefix: int, number: int) -> str:
    """The `number`th address in 127.PREFIX.0.0/16, skipping .0 and .255 host parts."""
    per_block = 254
    return f"127.{prefix}.{number // per_block % 256}.{number % per_block + 1}"
