"""A tiny in-memory world for the pure state machine: it applies reconcile's actions and lets a test play
the job controller and kubelet. No API server involved: these tests check decisions, not I/O."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from kubetune.reconcile.finetunejob import Create, Delete, Event, Outcome, Patch, reconcile
from kubetune.reconcile.observed import Observed, job_view, jobset_view
from kubetune.render.finetunejob import STAGE_LABEL
from kubetune.render.pod import OperatorDefaults

NOW = "2026-11-29T10:00:00Z"


@dataclass
class World:
    resource: dict[str, Any]
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    creates: list[str] = field(default_factory=list)
    live: dict[str, Any] | None = None
    clock: int = 0
    jobset: bool = False  # the operator trains multi-node jobs as JobSets

    def observed(self) -> Observed:
        jobs = {}
        for (kind, _), obj in self.objects.items():
            if kind == "Job":
                view = job_view(obj, self.pods)
                jobs[obj["metadata"]["labels"][STAGE_LABEL]] = view
            elif kind == "JobSet":
                jobs[obj["metadata"]["labels"][STAGE_LABEL]] = jobset_view(obj, self.pods)
        return Observed(
            now=f"2026-11-29T10:{self.clock:02d}:00Z",
            config_map=any(kind == "ConfigMap" for kind, _ in self.objects),
            service=any(kind == "Service" for kind, _ in self.objects),
            jobs=jobs,
            live=self.live,
            jobset=self.jobset,
        )

    def step(self, defaults: OperatorDefaults | None = None) -> Outcome:
        self.clock += 1
        outcome = reconcile(copy.deepcopy(self.resource), self.observed(), defaults or OperatorDefaults())
        for action in outcome.actions:
            if isinstance(action, Create):
                key = (action.manifest["kind"], action.manifest["metadata"]["name"])
                assert key not in self.objects, f"duplicate create of {key}"
                self.objects[key] = copy.deepcopy(action.manifest)
                self.creates.append(f"{key[0]}/{key[1]}")
            elif isinstance(action, Patch):
                target = self.objects[(action.kind, action.name)]
                for section, values in action.patch.items():
                    target.setdefault(section, {}).update(values)
            elif isinstance(action, Delete):
                self.objects.pop((action.kind, action.name))
                self.pods = [p for p in self.pods if p["metadata"]["labels"].get("job-name") != action.name]
        self.resource["status"] = outcome.status
        self.events.extend(outcome.events)
        return outcome

    @property
    def phase(self) -> str:
        return self.resource["status"]["phase"]

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.resource["status"]["conditions"] if c["type"] == kind)

    def job(self, stage: str) -> dict[str, Any]:
        return self.objects[("Job", f"{self.resource['metadata']['name']}-{stage}")]

    # -- playing the job controller and kubelet --------------------------------------------------------

    def add_pod(self, stage: str, phase: str, **container_state: Any) -> dict[str, Any]:
        job = self.job(stage)
        name = f"{job['metadata']['name']}-{len(self.pods)}"
        status: dict[str, Any] = {"phase": phase, "podIP": "127.0.0.2"}
        if container_state:
            status["containerStatuses"] = [{"name": "trainer", "state": container_state}]
        pod = {
            "metadata": {
                "name": name,
                "labels": {"job-name": job["metadata"]["name"]},
                "creationTimestamp": f"T{len(self.pods):04d}",
            },
            "status": status,
        }
        self.pods.append(pod)
        return pod

    def set_job_status(self, stage: str, **status: Any) -> None:
        self.job(stage).setdefault("status", {}).update(status)

    def finish(
        self, stage: str, summary: dict[str, Any] | None, *, ok: bool = True, reason: str = ""
    ) -> None:
        state = {
            "terminated": {"exitCode": 0 if ok else 1, "reason": "Completed" if ok else (reason or "Error")}
        }
        if summary is not None:
            state["terminated"]["message"] = json.dumps(summary)
        self.add_pod(stage, "Succeeded" if ok else "Failed", **state)
        condition = {"type": "Complete" if ok else "Failed", "status": "True"}
        if not ok:
            condition["reason"] = "BackoffLimitExceeded"
        status = {"conditions": [condition], "succeeded" if ok else "failed": 1}
        if ok:
            status["completionTime"] = "2026-11-29T11:00:00Z"
        self.set_job_status(stage, **status)


VALIDATION_OK = {
    "stage": "validate",
    "ok": True,
    "dataset": {
        "rows": 950, "evalRows": 50, "invalidRows": 0, "duplicatesDropped": 3, "leakageRows": 1, "sha256": "ab" * 32,
        "format": "openai", "tokens": {"p50": 120, "p95": 300, "max": 800, "truncated": 0},
    },
    "estimate": {"gpuMemoryBytes": 20 * 2**30, "gpuMemoryBytesPerGpu": 20 * 2**30, "fitsOnRequestedGpus": True},
    "warnings": [],
}  # fmt: skip

TRAINING_OK = {
    "stage": "train",
    "ok": True,
    "progress": {
        "step": 120,
        "totalSteps": 120,
        "epoch": "3.0",
        "trainLoss": "1.1",
        "evalLoss": "1.3",
        "tokensPerSecond": 900,
    },
    "checkpoints": [
        {
            "step": 100,
            "uri": "s3://artifacts/default/support-bot/checkpoints/step-00000100/",
            "evalLoss": "1.35",
        }
    ],
}

FINISH_OK = {
    "stage": "export",
    "ok": True,
    "evaluation": {"metrics": {"perplexity": "3.9"}, "baseline": {"perplexity": "12.5"}, "passed": True},
    "outputs": {
        "adapterUri": "s3://artifacts/default/support-bot/adapter/",
        "manifestUri": "s3://artifacts/default/support-bot/manifest.json",
    },
}
