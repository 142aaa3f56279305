"""An in-memory world for the ModelDeployment state machine: Deployments become ready when the test says so."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from kubetune.reconcile.finetunejob import Create, Delete, Event, Outcome, Patch
from kubetune.reconcile.modeldeployment import ServingObserved, deployment_view, reconcile_deployment
from kubetune.reconcile.observed import job_view
from kubetune.render.modeldeployment import ServingDefaults


def _clock(minute: int) -> str:
    return f"2026-11-29T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"


@dataclass
class ServingWorld:
    resource: dict[str, Any]
    source_job: dict[str, Any] | None = None
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    minute: int = 0
    defaults: ServingDefaults = field(default_factory=ServingDefaults)

    def observed(self) -> ServingObserved:
        deployments = {}
        for (kind, _), obj in self.objects.items():
            if kind == "Deployment":
                view = deployment_view(obj)
                deployments[view.revision] = view
        jobs = {name: job_view(obj, self.pods) for (kind, name), obj in self.objects.items() if kind == "Job"}
        return ServingObserved(
            now=_clock(self.minute),
            source_job=copy.deepcopy(self.source_job),
            deployments=deployments,
            services=frozenset(name for kind, name in self.objects if kind == "Service"),
            has_pdb=any(kind == "PodDisruptionBudget" for kind, _ in self.objects),
            has_autoscaler=any(
                kind in ("HorizontalPodAutoscaler", "ScaledObject") for kind, _ in self.objects
            ),
            autoscaler_target=next(
                (
                    obj["spec"]["scaleTargetRef"]["name"]
                    for (kind, _), obj in self.objects.items()
                    if kind in ("HorizontalPodAutoscaler", "ScaledObject")
                ),
                None,
            ),
            bench_jobs=jobs,
        )

    def step(self, minutes: int = 1) -> Outcome:
        self.minute += minutes
        outcome = reconcile_deployment(copy.deepcopy(self.resource), self.observed(), self.defaults)
        for action in outcome.actions:
            if isinstance(action, Create):
                key = (action.manifest["kind"], action.manifest["metadata"]["name"])
                assert key not in self.objects, f"duplicate create of {key}"
                self.objects[key] = copy.deepcopy(action.manifest)
            elif isinstance(action, Patch):
                if action.json_patch:
                    continue  # HTTPRoutes are not modelled here: tests read the actions
                self.objects[(action.kind, action.name)]["spec"].update(action.patch["spec"])
            elif isinstance(action, Delete):
                self.objects.pop((action.kind, action.name))
        self.resource["status"] = outcome.status
        self.events.extend(outcome.events)
        return outcome

    @property
    def status(self) -> dict[str, Any]:
        return self.resource["status"]

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == kind)

    def deployment(self, revision: int) -> dict[str, Any]:
        return self.objects[("Deployment", f"{self.resource['metadata']['name']}-r{revision}")]

    def make_ready(self) -> None:
        """The Deployment controller and kubelet: every desired pod becomes ready."""
        for (kind, _), obj in self.objects.items():
            if kind == "Deployment":
                obj["status"] = {"readyReplicas": obj["spec"]["replicas"]}

    def finish_bench(self, name: str, benchmark: dict[str, Any], ok: bool = True) -> None:
        job = self.objects[("Job", name)]
        summary = {"stage": "bench", "ok": ok, "benchmark": benchmark}
        self.pods.append({
            "metadata": {"name": f"{name}-pod", "labels": {"job-name": name}, "creationTimestamp": str(self.minute)},
            "status": {"phase": "Succeeded" if ok else "Failed",
                       "containerStatuses": [{"name": "bench", "state": {"terminated": {"exitCode": 0 if ok else 1, "message": json.dumps(summary)}}}]},
        })  # fmt: skip
        condition = {"type": "Complete" if ok else "Failed", "status": "True"}
        if not ok:
            condition.update(reason="BackoffLimitExceeded", message="benchmark pod failed")
        job["status"] = {"conditions": [condition]}

    def bench_jobs(self) -> list[str]:
        return sorted(name for kind, name in self.objects if kind == "Job")


def passed_job(metrics: dict[str, str], passed: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": "support-bot", "namespace": "default", "uid": "job-uid"},
        "spec": {"baseModel": {"uri": "s3://models/llama-3.1-8b/"}, "method": "lora"},
        "status": {
            "phase": "Succeeded",
            "conditions": [
                {"type": "Complete", "status": "True", "reason": "Succeeded"},
                {
                    "type": "EvaluationPassed",
                    "status": "True" if passed else "False",
                    "reason": "x",
                    "message": "perplexity 9.5 > max 8.0" if not passed else "ok",
                },
            ],
            "evaluation": {"metrics": metrics},
            "dataset": {"sha256": "ab" * 32},
            "outputs": {"adapterUri": "s3://artifacts/default/support-bot/adapter/"},
            "checkpoints": [
                {"step": 100, "uri": "s3://a/c/step-100/", "evalLoss": "1.2"},
                {"step": 200, "uri": "s3://a/c/step-200/", "evalLoss": "1.4"},
            ],
        },
    }
