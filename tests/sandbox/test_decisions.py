"""The sandbox controllers' pure decisions: which pods a Job or Deployment should have, and what status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.timestamps import format_time
from kubetune_sandbox.cluster import decisions

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    template = {"metadata": {"labels": {"app": "x"}}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "trainer", "image": "img", "command": ["true"]}]}}  # fmt: skip
    return {
        "metadata": {"name": "train", "namespace": "default", "uid": "job-uid"},
        "spec": {"template": template, **spec},
        "status": status,
    }


def pod(name: str, phase: str, *, code: int | None = None, index: int | None = None, ready: bool = False,
        conditions: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None,
        created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "conditions": list(conditions or [])}
    if ready:
        status["conditions"].append({"type": "Ready", "status": "True"})
    if code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {"exitCode": code}}}]
    annotations = {decisions.COMPLETION_INDEX: str(index)} if index is not None else {}
    meta = {"name": name, "uid": f"uid-{name}", "annotations": annotations, "labels": labels or {},
            "creationTimestamp": created}  # fmt: skip
    return {"metadata": meta, "status": status}


def condition(plan: decisions.JobPlan, kind: str) -> dict[str, Any] | None:
    assert plan.status is not None
    return next((c for c in plan.status.get("conditions") or [] if c["type"] == kind), None)


def test_a_new_job_gets_one_pod_and_a_start_time() -> None:
    plan = decisions.plan_job(job(), [], vanished=0, now=NOW)
    assert plan.create == [None]
    assert plan.status is not None
    assert plan.status["active"] == 1
    assert plan.status["startTime"] == "2026-01-01T12:00:00Z"


def test_a_running_pod_is_enough() -> None:
    plan = decisions.plan_job(
        job(status={"startTime": "2026-01-01T12:00:00Z"}), [pod("a", "Running")], vanished=0, now=NOW
    )
    assert plan.create == [] and plan.delete == []


def test_success_completes_the_job() -> None:
    plan = decisions.plan_job(job(), [pod("a", "Succeeded", code=0)], vanished=0, now=NOW)
    assert plan.create == []
    complete = condition(plan, "Complete")
    assert complete and complete["status"] == "True"
    assert plan.status and plan.status["succeeded"] == 1 and plan.status["completionTime"]


def test_failures_are_retried_until_the_backoff_limit() -> None:
    retried = decisions.plan_job(job(backoffLimit=1), [pod("a", "Failed", code=1)], vanished=0, now=NOW)
    assert retried.create == [None]
    assert retried.status and retried.status["failed"] == 1
    failed = decisions.plan_job(
        job(backoffLimit=1), [pod("a", "Failed", code=1), pod("b", "Failed", code=1)], vanished=0, now=NOW
    )
    assert failed.create == []
    reason = condition(failed, "Failed")
    assert reason and reason["reason"] == "BackoffLimitExceeded"


def test_a_vanished_pod_counts_as_a_failure() -> None:
    plan = decisions.plan_job(job(backoffLimit=0), [], vanished=1, now=NOW)
    reason = condition(plan, "Failed")
    assert reason and reason["reason"] == "BackoffLimitExceeded"


POLICY = {
    "rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}


def test_pod_failure_policy_fails_the_job_on_exit_code() -> None:
    plan = decisions.plan_job(job(backoffLimit=5, podFailurePolicy=POLICY), [pod("a", "Failed", code=2)],
                              vanished=0, now=NOW)  # fmt: skip
    reason = condition(plan, "Failed")
    assert reason and reason["reason"] == "PodFailurePolicy"
    assert plan.create == []


def test_pod_failure_policy_ignores_disruptions() -> None:
    disrupted = pod("a", "Failed", code=137, conditions=[{"type": "DisruptionTarget", "status": "True"}])
    plan = decisions.plan_job(job(backoffLimit=0, podFailurePolicy=POLICY), [disrupted], vanished=0, now=NOW)
    assert condition(plan, "Failed") is None
    assert plan.create == [None]
    assert plan.status and plan.status["failed"] == 0


def test_suspend_deletes_pods_and_resume_recreates_them() -> None:
    suspended = decisions.plan_job(job(suspend=True), [pod("a", "Running")], vanished=0, now=NOW)
    assert suspended.delete == ["a"] and suspended.create == []
    marked = condition(suspended, "Suspended")
    assert marked and marked["status"] == "True"
    assert suspended.status and suspended.status["active"] == 0
    resumed = decisions.plan_job(job(status=suspended.status), [], vanished=0, now=NOW)
    assert resumed.create == [None]
    flag = condition(resumed, "Suspended")
    assert flag and flag["status"] == "False"


def test_active_deadline_fails_the_job() -> None:
    started = format_time(NOW - timedelta(seconds=120))
    plan = decisions.plan_job(job(activeDeadlineSeconds=60, status={"startTime": started}),
                              [pod("a", "Running")], vanished=0, now=NOW)  # fmt: skip
    reason = condition(plan, "Failed")
    assert reason and reason["reason"] == "DeadlineExceeded"
    assert plan.delete == ["a"]


def test_completions_and_parallelism() -> None:
    spec = {"completions": 3, "parallelism": 2}
    first = decisions.plan_job(job(**spec), [], vanished=0, now=NOW)
    assert first.create == [None, None]
    last = decisions.plan_job(
        job(**spec), [pod("a", "Succeeded"), pod("b", "Succeeded")], vanished=0, now=NOW
    )
    assert last.create == [None]


def test_indexed_jobs_run_each_missing_index_once() -> None:
    spec = {"completionMode": "Indexed", "completions": 3, "parallelism": 3}
    first = decisions.plan_job(job(**spec), [], vanished=0, now=NOW)
    assert first.create == [0, 1, 2]
    later = decisions.plan_job(
        job(**spec), [pod("a", "Succeeded", index=0), pod("b", "Running", index=1)], vanished=0, now=NOW
    )
    assert later.create == [2]
    assert later.status and later.status["completedIndexes"] == "0"
    done = decisions.plan_job(
        job(**spec), [pod(str(i), "Succeeded", index=i) for i in range(3)], vanished=0, now=NOW
    )
    assert condition(done, "Complete")
    assert done.status and done.status["completedIndexes"] == "0-2"


def test_finished_jobs_change_nothing_more() -> None:
    finished = job(status={"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1, "active": 0,
                           "failed": 0, "ready": 0})  # fmt: skip
    plan = decisions.plan_job(finished, [pod("a", "Succeeded")], vanished=0, now=NOW)
    assert plan.create == [] and plan.delete == [] and plan.status is None


def test_job_pods_are_labelled_owned_and_indexed() -> None:
    created = decisions.job_pod(job(completionMode="Indexed"), 1, "abcde")
    meta = created["metadata"]
    assert meta["name"] == "train-1-abcde"
    assert meta["labels"]["job-name"] == "train"
    assert meta["labels"]["batch.kubernetes.io/job-name"] == "train"
    assert meta["labels"]["controller-uid"] == "job-uid"
    assert meta["annotations"][decisions.COMPLETION_INDEX] == "1"
    assert meta["ownerReferences"][0]["uid"] == "job-uid"
    env = created["spec"]["containers"][0]["env"]
    assert env[-1]["name"] == "JOB_COMPLETION_INDEX"
    assert decisions.field_ref(created, env[-1]["valueFrom"]["fieldRef"]["fieldPath"]) == "1"


# ------------------------------------------------------------------------------------------ Deployments


def deployment(replicas: int = 2, image: str = "v1") -> dict[str, Any]:
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": image}]},
    }
    return {"metadata": {"name": "web", "namespace": "default", "uid": "dep-uid", "generation": 3},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": template}}  # fmt: skip


def deployment_pod(dep: dict[str, Any], name: str, *, ready: bool) -> dict[str, Any]:
    labels = {"app": "web", decisions.POD_TEMPLATE_HASH: decisions.template_hash(dep["spec"]["template"])}
    return pod(name, "Running", ready=ready, labels=labels)


def test_deployment_scales_up_and_reports_status() -> None:
    dep = deployment(2)
    plan = decisions.plan_deployment(dep, [deployment_pod(dep, "a", ready=True)], now=NOW)
    assert plan.create == 1 and plan.delete == []
    assert plan.status is not None
    assert plan.status["readyReplicas"] == 1 and plan.status["observedGeneration"] == 3
    assert plan.status["updatedReplicas"] == 2


def test_deployment_scales_down_not_ready_pods_first() -> None:
    dep = deployment(1)
    pods = [deployment_pod(dep, "ready", ready=True), deployment_pod(dep, "starting", ready=False)]
    plan = decisions.plan_deployment(dep, pods, now=NOW)
    assert plan.delete == ["starting"] and plan.create == 0


def test_template_change_replaces_pods_once_new_ones_are_ready() -> None:
    old = deployment(1, "v1")
    new = deployment(1, "v2")
    old_pod = deployment_pod(old, "old", ready=True)
    surge = decisions.plan_deployment(new, [old_pod], now=NOW)
    assert surge.create == 1 and surge.delete == []  # the old pod serves until the new one is ready
    swapped = decisions.plan_deployment(new, [old_pod, deployment_pod(new, "new", ready=True)], now=NOW)
    assert swapped.delete == ["old"] and swapped.create == 0
    assert swapped.status and swapped.status["updatedReplicas"] == 1


def test_failed_deployment_pods_are_replaced() -> None:
    dep = deployment(1)
    failed = deployment_pod(dep, "dead", ready=False)
    failed["status"]["phase"] = "Failed"
    plan = decisions.plan_deployment(dep, [failed], now=NOW)
    assert plan.delete == ["dead"] and plan.create == 1


def test_deployment_pods_carry_the_template_hash_and_owner() -> None:
    dep = deployment(1)
    created = decisions.deployment_pod(dep, "xyz12")
    assert created["metadata"]["labels"][decisions.POD_TEMPLATE_HASH] == decisions.template_hash(
        dep["spec"]["template"]
    )
    assert created["metadata"]["ownerReferences"][0]["kind"] == "Deployment"


# ---------------------------------------------------------------------------------------------- kubelet


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-$(B)"),
        ("$$(A)", "$(A)"),
        ("no refs", "no refs"),
    ],
)
def test_var_expansion_follows_kubernetes(text: str, expected: str) -> None:
    assert decisions.expand(text, {"A": "1"}) == expected


def test_paths_are_rewritten_once_and_only_where_a_path_starts() -> None:
    mounts = {
        "/tmp": "/tmp/pod/volumes/tmp",
        "/models": "/tmp/pod/volumes/models",
        "/etc/kubetune": "/x/config",
    }
    assert (
        decisions.rewrite_paths("/etc/kubetune/trainer-config.json", mounts)
        == "/x/config/trainer-config.json"
    )
    assert decisions.rewrite_paths("/tmp", mounts) == "/tmp/pod/volumes/tmp"
    assert (
        decisions.rewrite_paths("adapter=/models/adapters/a", mounts)
        == "adapter=/tmp/pod/volumes/models/adapters/a"
    )
    assert decisions.rewrite_paths("/modelsX/y", mounts) == "/modelsX/y"
    assert decisions.rewrite_paths("s3://b/tmp/x", mounts) == "s3://b/tmp/x"


def test_service_hosts_become_cluster_ips() -> None:
    ips = {("default", "bot-r1"): "127.2.0.3"}
    assert (
        decisions.rewrite_service_hosts("http://bot-r1.default.svc:8000/v1", ips)
        == "http://127.2.0.3:8000/v1"
    )
    assert (
        decisions.rewrite_service_hosts("http://bot-r1.default.svc.cluster.local:8000", ips)
        == "http://127.2.0.3:8000"
    )
    assert (
        decisions.rewrite_service_hosts("http://other.default.svc:8000", ips)
        == "http://other.default.svc:8000"
    )


def test_named_ports_resolve_through_the_containers() -> None:
    containers = [{"ports": [{"name": "http", "containerPort": 8000}]}]
    assert decisions.resolve_port("http", containers) == 8000
    assert decisions.resolve_port(9400, containers) == 9400
    assert decisions.resolve_port("metrics", containers) is None


def test_selectors() -> None:
    assert decisions.selector_matches({"app": "x"}, {"app": "x", "b": "c"})
    assert not decisions.selector_matches({}, {"app": "x"})
    expression = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}
    assert decisions.selector_matches(expression, {"tier": "b"})
    assert not decisions.selector_matches(expression, {"tier": "c"})


def test_loopback_addresses_are_distinct_and_valid() -> None:
    addresses = {decisions.loopback_address(1, n) for n in range(1, 1000)}
    assert len(addresses) == 999
    assert all(a.startswith("127.1.") and not a.endswith((".0", ".255")) for a in addresses)
