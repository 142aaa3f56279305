"""The ModelDeployment state machine: revisions, canary steps with analysis, promotion and rollback, after
the gate (serving_source.py) has said what to serve. Pure: (resource, observed) -> (status, actions, events),
like the FineTuneJob's.

Every spec change that alters the pods is a new revision. The first revision rolls out directly; later ones
go through `spec.rollout.steps`, each step held until the canary is ready, its benchmark meets
`spec.rollout.analysis` and `intervalSeconds` have passed. Any failure rolls back to the stable revision; a
revision whose pods are not ready within `spec.rollout.progressDeadlineSeconds` of its step's start has failed.
During a canary step the stable revision keeps all its replicas until the canary's pods are ready, and only
then gives up the canary's share (render.canary_split).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubetune.api.common import ResourceIdentity, decimal_text
from kubetune.api.modeldeployment import Analysis, ModelDeploymentSpec, Rollout
from kubetune.api.timestamps import seconds_between
from kubetune.reconcile import conditions as c
from kubetune.reconcile.finetunejob import Action, Create, Delete, Event, Outcome, Patch
from kubetune.reconcile.observed import JobView
from kubetune.reconcile.serving_source import (
    GateBlockedError,
    fingerprint,
    missing_credentials,
    resolve_source,
)
from kubetune.render import modeldeployment as render
from kubetune.render.pod import Manifest

GATE_PASSED = "GatePassed"
AVAILABLE = "Available"
PROGRESSING = "Progressing"
ROLLED_BACK = "RolledBack"
BENCHMARKED = "Benchmarked"
CONDITION_ORDER = (GATE_PASSED, AVAILABLE, PROGRESSING, ROLLED_BACK, BENCHMARKED)
MAX_REVISIONS_IN_STATUS = 10
# Set or change this annotation (e.g. to a timestamp) to benchmark the stable revision again.
BENCHMARK_ANNOTATION = "kubetune.dev/benchmark"


@dataclass(frozen=True)
class DeploymentView:
    revision: int
    replicas: int
    ready: int


@dataclass(frozen=True)
class ServingObserved:
    now: str
    source_job: Manifest | None = None
    deployments: dict[int, DeploymentView] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    has_pdb: bool = False
    has_autoscaler: bool = False
    autoscaler_target: str | None = None  # the Deployment the HPA or ScaledObject scales
    bench_jobs: dict[str, JobView] = field(default_factory=dict)


def deployment_view(deployment: Manifest) -> DeploymentView:
    labels = deployment["metadata"].get("labels") or {}
    status = deployment.get("status") or {}
    return DeploymentView(
        revision=int(labels.get(render.REVISION_LABEL, "0")),
        replicas=int((deployment.get("spec") or {}).get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
    )


def _seconds_since(start: str | None, now: str) -> float:
    return seconds_between(start, now) or 0.0


@dataclass
class _Draft:
    owner: ResourceIdentity
    spec: ModelDeploymentSpec
    observed: ServingObserved
    status: dict[str, Any]
    generation: int
    defaults: render.ServingDefaults
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    benchmark_trigger: str = ""

    def condition(self, kind: str, status: c.ConditionStatus, reason: str, message: str) -> bool:
        before = c.find(list(self.status.get("conditions") or []), kind)
        updated = c.set_condition(
            list(self.status.get("conditions") or []),
            kind,
            status,
            reason,
            message,
            now=self.observed.now,
            generation=self.generation,
        )
        self.status["conditions"] = sorted(
            updated,
            key=lambda item: CONDITION_ORDER.index(item["type"]) if item["type"] in CONDITION_ORDER else 99,
        )
        return before is None or before.get("status") != status

    def event(self, kind: str, reason: str, message: str) -> None:
        self.events.append(
            Event("Warning" if kind == "Warning" else "Normal", reason, " ".join(message.split())[:1024])
        )

    @property
    def revisions(self) -> list[dict[str, Any]]:
        return list(self.status.get("revisions") or [])

    def save_revision(self, entry: dict[str, Any]) -> None:
        others = [r for r in self.revisions if r["revision"] != entry["revision"]]
        self.status["revisions"] = sorted([*others, entry], key=lambda r: r["revision"])[
            -MAX_REVISIONS_IN_STATUS:
        ]

    def outcome(self) -> Outcome:
        return Outcome(dict(self.status), tuple(self.actions), tuple(self.events), self.requeue_after)


def reconcile_deployment(
    resource: Manifest, observed: ServingObserved, defaults: render.ServingDefaults
) -> Outcome:
    meta = resource["metadata"]
    owner = ResourceIdentity.of(resource)
    generation = int(meta.get("generation") or 1)
    status = dict(resource.get("status") or {})
    status["observedGeneration"] = generation
    try:
        spec = ModelDeploymentSpec.model_validate(resource.get("spec") or {})
    except ValidationError as error:
        first = error.errors()[0]
        message = f"spec.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        status["phase"] = "Failed"
        status["conditions"] = c.set_condition(
            list(status.get("conditions") or []),
            AVAILABLE,
            "False",
            c.INVALID_SPEC,
            message,
            now=observed.now,
            generation=generation,
        )
        return Outcome(status)
    draft = _Draft(owner, spec, observed, status, generation, defaults)
    draft.benchmark_trigger = str((meta.get("annotations") or {}).get(BENCHMARK_ANNOTATION, ""))[:64]
    name = render.served_model_name(owner, spec)
    status.update(endpoint=render.endpoint(owner), servedModelName=name)
    try:
        source = resolve_source(owner.namespace, spec, observed.source_job)
    except GateBlockedError as blocked:
        if draft.condition(GATE_PASSED, "False", blocked.reason, blocked.message):
            draft.event("Warning", c.GATE_BLOCKED, blocked.message)
        if status.get("stableRevision") is None:
            status["phase"] = "Blocked"
            draft.condition(AVAILABLE, "False", c.GATE_BLOCKED, "nothing is served until the gate passes")
            return draft.outcome()
        _keep_serving(draft)  # a model already serving stays up while a newer source is blocked
        status["phase"] = "Blocked"
        return draft.outcome()
    gate_message = (
        "serving a model URI: no evaluation applies"
        if spec.source.model_uri
        else "the source job passed its evaluation gate"
    )
    if draft.condition(GATE_PASSED, "True", c.GATE_OPEN, gate_message):
        draft.event("Normal", c.GATE_OPEN, gate_message)
    status["sourceJobUid"] = source.lineage.get("source-job-uid") or None
    if status["sourceJobUid"] is None:
        status.pop("sourceJobUid")
    problem = missing_credentials(spec, source, defaults)
    if problem is not None and status.get("stableRevision") is None:
        # Said before any pod starts, rather than buried in a fetch container's log.
        status["phase"] = "Blocked"
        if draft.condition(AVAILABLE, "False", c.STORAGE_CREDENTIALS_MISSING, problem):
            draft.event("Warning", c.STORAGE_CREDENTIALS_MISSING, problem)
        return draft.outcome()
    _ensure_shared_objects(draft)
    latest = _current_revision(draft, fingerprint(spec, source))
    _drive(draft, source, latest)
    return draft.outcome()


def _ensure_shared_objects(draft: _Draft) -> None:
    observed, owner = draft.observed, draft.owner
    if owner.name not in observed.services:
        draft.actions.append(Create(render.service(owner)))
    if draft.spec.replicas > 1 and not observed.has_pdb:
        draft.actions.append(Create(render.pod_disruption_budget(owner)))


def _current_revision(draft: _Draft, wanted: str) -> dict[str, Any]:
    """The newest revision, or a new one when the pods the spec asks for changed."""
    revisions = draft.revisions
    latest = revisions[-1] if revisions else None
    if latest is not None and latest.get("fingerprint") == wanted:
        return latest
    number = (latest["revision"] if latest else 0) + 1
    entry = {
        "revision": number,
        "state": "Progressing",
        "fingerprint": wanted,
        "step": 0,
        "stepStartedAt": draft.observed.now,
    }
    draft.save_revision(entry)
    draft.status["revision"] = number
    draft.event("Normal", c.REVISION_CREATED, f"revision {number} created from generation {draft.generation}")
    return entry


def _ensure_deployment(
    draft: _Draft, source: render.ResolvedSource, revision: int, replicas: int, role: render.Role
) -> None:
    existing = draft.observed.deployments.get(revision)
    if existing is None:
        manifest = render.revision_deployment(
            draft.owner,
            draft.spec,
            source,
            revision=revision,
            replicas=replicas,
            role=role,
            defaults=draft.defaults,
        )
        draft.actions.append(Create(manifest))
    elif existing.replicas != replicas and not (role == "stable" and draft.spec.autoscaling):
        draft.actions.append(
            Patch(
                "apps/v1",
                "Deployment",
                render.revision_name(draft.owner, revision),
                {"spec": {"replicas": replicas}},
            )
        )


def _delete_other_deployments(draft: _Draft, keep: set[int]) -> None:
    for revision in sorted(draft.observed.deployments):
        if revision not in keep:
            draft.actions.append(Delete("apps/v1", "Deployment", render.revision_name(draft.owner, revision)))
    for service_name in sorted(draft.observed.services):
        match = re.fullmatch(re.escape(draft.owner.name) + r"-r(\d+)", service_name)
        if match and int(match.group(1)) not in keep:
            draft.actions.append(Delete("v1", "Service", service_name))


def _keep_serving(draft: _Draft) -> None:
    stable = draft.status.get("stableRevision")
    view = draft.observed.deployments.get(stable) if stable is not None else None
    ready = view.ready if view else 0
    draft.condition(
        AVAILABLE,
        "True" if ready else "False",
        c.STABLE_SERVING,
        f"revision {stable} serves with {ready} ready pod(s)",
    )


def _drive(draft: _Draft, source: render.ResolvedSource, latest: dict[str, Any]) -> None:
    state, revision = latest["state"], latest["revision"]
    stable = draft.status.get("stableRevision")
    if state == "Stable":
        _serve_stable(draft, source, revision)
        _delete_other_deployments(draft, {revision})  # level-based: only the stable revision remains
        return
    if state == "RolledBack":
        draft.status["phase"] = "RolledBack"
        draft.status["canaryWeight"] = 0
        if stable is not None:
            _ensure_deployment(draft, source, stable, draft.spec.replicas, "stable")
            _delete_other_deployments(draft, {stable})
        return
    rollout = draft.spec.rollout or Rollout()
    if stable is None or rollout.strategy == "replace":
        _roll_out_directly(draft, source, latest, stable)
    else:
        _canary_step(draft, source, latest, stable, rollout)


def _route_weights(draft: _Draft, weights: dict[int, int]) -> None:
    """With spec.rollout.httpRouteRef, traffic follows the HTTPRoute's backend weights (Gateway API) rather than
    the replica ratio. Only the first rule's backendRefs are replaced: the user's matches and filters stay."""
    rollout = draft.spec.rollout
    if rollout is None or rollout.http_route_ref is None:
        return
    backends = [
        {
            "group": "",
            "kind": "Service",
            "name": render.revision_name(draft.owner, revision),
            "port": render.SERVING_PORT,
            "weight": weight,
        }
        for revision, weight in sorted(weights.items())
    ]
    operation = [{"op": "replace", "path": "/spec/rules/0/backendRefs", "value": backends}]
    draft.actions.append(
        Patch(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            rollout.http_route_ref.name,
            operation,
            json_patch=True,
        )
    )


def _promote(draft: _Draft, latest: dict[str, Any], how: str) -> None:
    revision = latest["revision"]
    previous = draft.status.get("stableRevision")
    for entry in draft.revisions:
        if entry["state"] == "Stable" and entry["revision"] != revision:
            draft.save_revision({**entry, "state": "Superseded", "weight": 0})
    draft.save_revision({**latest, "state": "Stable", "weight": 100, "reason": how})
    if (draft.spec.rollout or Rollout()).http_route_ref:
        if render.revision_name(draft.owner, revision) not in draft.observed.services:
            draft.actions.append(Create(render.revision_service(draft.owner, revision)))
        _route_weights(draft, {revision: 100})
    draft.status.update(stableRevision=revision, canaryWeight=0, phase="Ready")
    draft.condition(PROGRESSING, "False", c.ROLLOUT_COMPLETE, f"revision {revision} is stable")
    draft.condition(ROLLED_BACK, "False", c.PROMOTED, f"revision {revision} promoted")
    draft.event(
        "Normal",
        c.PROMOTED,
        f"revision {revision} is stable" + (f", replacing revision {previous}" if previous else ""),
    )


def _rollback(draft: _Draft, latest: dict[str, Any], reason: str, message: str) -> None:
    stable = draft.status.get("stableRevision")
    draft.save_revision({**latest, "state": "RolledBack", "weight": 0, "reason": f"{reason}: {message}"})
    draft.status.update(phase="RolledBack", canaryWeight=0)
    if draft.condition(
        ROLLED_BACK, "True", reason, f"revision {latest['revision']} rolled back to {stable}: {message}"
    ):
        draft.event(
            "Warning",
            c.ROLLED_BACK_EVENT,
            f"revision {latest['revision']} rolled back to revision {stable}: {message}",
        )
    draft.condition(PROGRESSING, "False", reason, message)
    if stable is not None:
        _route_weights(draft, {stable: 100})
        draft.actions.append(
            Patch(
                "apps/v1",
                "Deployment",
                render.revision_name(draft.owner, stable),
                {"spec": {"replicas": draft.spec.replicas}},
            )
        )
        _delete_other_deployments(draft, {stable})


def _roll_out_directly(
    draft: _Draft, source: render.ResolvedSource, latest: dict[str, Any], stable: int | None
) -> None:
    revision = latest["revision"]
    _ensure_deployment(draft, source, revision, draft.spec.replicas, "stable")
    view = draft.observed.deployments.get(revision)
    ready = view.ready if view else 0
    draft.save_revision({**latest, "readyReplicas": ready, "weight": 100})
    if view is not None and ready >= max(draft.spec.replicas, 1):
        _promote(draft, latest, "all replicas ready")
        _delete_other_deployments(draft, {revision})
        _serve_stable(draft, source, revision)
        return
    waited = _seconds_since(latest.get("stepStartedAt"), draft.observed.now)
    deadline = (draft.spec.rollout or Rollout()).progress_deadline_seconds
    if waited > deadline:
        message = (
            f"{ready}/{draft.spec.replicas} pods ready after {int(waited)}s"
            f" (spec.rollout.progressDeadlineSeconds {deadline})"
        )
        if stable is not None:
            _rollback(draft, latest, c.NOT_READY, message)
        else:
            draft.condition(AVAILABLE, "False", c.NOT_READY, message + "; check the pods' events and logs")
            draft.status["phase"] = "Failed"
        return
    draft.condition(
        PROGRESSING, "True", c.DEPLOYING, f"revision {revision}: {ready}/{draft.spec.replicas} pods ready"
    )
    if stable is None:
        draft.condition(AVAILABLE, "False", c.DEPLOYING, "the first revision is starting")
    draft.status["phase"] = "Deploying"
    draft.requeue_after = 10.0


def _analysis_failure(summary: dict[str, Any], analysis: Analysis, weight: int) -> tuple[str, str] | None:
    bench = summary.get("benchmark") or {}
    error_rate = float(bench.get("errorRate", "0") or 0)
    if error_rate > analysis.max_error_rate:
        return (
            c.ERROR_RATE_TOO_HIGH,
            f"error rate {error_rate:.3g} > {decimal_text(analysis.max_error_rate)} at {weight}% traffic",
        )
    p95 = bench.get("p95LatencySeconds")
    if p95 is not None and float(p95) > analysis.max_p95_latency_seconds:
        return (
            c.LATENCY_TOO_HIGH,
            f"p95 latency {float(p95):.3g}s > {decimal_text(analysis.max_p95_latency_seconds)}s at {weight}% traffic",
        )
    return None


def _canary_step(
    draft: _Draft, source: render.ResolvedSource, latest: dict[str, Any], stable: int, rollout: Rollout
) -> None:
    revision, step = latest["revision"], int(latest.get("step") or 0)
    if rollout.abort:
        _rollback(draft, latest, c.ABORTED_BY_USER, "spec.rollout.abort is true")
        return
    weight = rollout.steps[step]
    total = max(draft.spec.replicas, 1)
    stable_replicas, canary_count = render.canary_split(total, weight)
    view = draft.observed.deployments.get(revision)
    ready = view.ready if view else 0
    # The stable keeps every replica until the canary's pods are ready to take their share.
    _ensure_deployment(draft, source, stable, stable_replicas if ready >= canary_count else total, "stable")
    _ensure_deployment(draft, source, revision, canary_count, "canary")
    for service_revision in (stable, revision):
        if render.revision_name(draft.owner, service_revision) not in draft.observed.services:
            draft.actions.append(Create(render.revision_service(draft.owner, service_revision)))
    if (latest.get("weight") or 0) != weight:
        _route_weights(draft, {stable: 100 - weight, revision: weight})
    routed = rollout.http_route_ref is not None
    effective = weight if routed else render.effective_weight(stable_replicas, canary_count)
    draft.status.update(canaryWeight=effective, phase="Progressing")
    draft.save_revision({**latest, "weight": weight, "readyReplicas": ready})
    latest = {**latest, "weight": weight, "readyReplicas": ready}
    split = "" if routed or effective == weight else f", effectively {effective}% by replicas"
    draft.condition(
        PROGRESSING,
        "True",
        c.CANARY,
        f"revision {revision} at {weight}%{split} ({ready}/{canary_count} canary pods ready,"
        f" {stable_replicas if ready >= canary_count else total} stable)",
    )
    _keep_serving(draft)
    if rollout.paused:
        draft.status["phase"] = "Paused"
        draft.condition(
            PROGRESSING, "Unknown", c.PAUSED, f"spec.rollout.paused: revision {revision} held at {weight}%"
        )
        return
    draft.requeue_after = 10.0
    waited = _seconds_since(latest.get("stepStartedAt"), draft.observed.now)
    if ready < canary_count:
        if waited > rollout.progress_deadline_seconds:
            _rollback(
                draft,
                latest,
                c.CANARY_NOT_READY,
                f"{ready}/{canary_count} canary pods ready after {int(waited)}s at {weight}%"
                f" (spec.rollout.progressDeadlineSeconds {rollout.progress_deadline_seconds})",
            )
        return
    analysis = rollout.analysis or Analysis()
    bench_name = f"{draft.owner.name}-bench-r{revision}-s{step}"
    bench = draft.observed.bench_jobs.get(bench_name)
    if bench is None:
        draft.actions.append(
            Create(
                render.benchmark_job(
                    draft.owner,
                    draft.spec,
                    revision,
                    draft.defaults,
                    job_name=bench_name,
                    target=render.revision_endpoint(draft.owner, revision),
                )
            )
        )
        return
    if bench.failure_reason:
        _rollback(
            draft,
            latest,
            c.ANALYSIS_FAILED,
            f"the analysis benchmark at {weight}% failed: {bench.failure_message or bench.failure_reason}",
        )
        return
    if not bench.complete:
        return
    failure = _analysis_failure(bench.summary() or {}, analysis, weight)
    if failure:
        _rollback(draft, latest, *failure)
        return
    if waited < analysis.interval_seconds:
        draft.requeue_after = max(1.0, analysis.interval_seconds - waited)
        return
    if step + 1 >= len(rollout.steps):
        _promote(draft, {**latest, "step": step}, f"passed analysis at every step {rollout.steps}")
        _delete_other_deployments(draft, {revision})
        _serve_stable(draft, source, revision)
        return
    draft.save_revision({**latest, "step": step + 1, "stepStartedAt": draft.observed.now})
    draft.event(
        "Normal",
        c.CANARY_STEP_PASSED,
        f"revision {revision} passed analysis at {weight}%; moving to {rollout.steps[step + 1]}%",
    )


def _serve_stable(draft: _Draft, source: render.ResolvedSource, revision: int) -> None:
    _ensure_deployment(draft, source, revision, draft.spec.replicas, "stable")
    _ensure_autoscaler(draft, revision)
    view = draft.observed.deployments.get(revision)
    ready = view.ready if view else 0
    draft.status.update(stableRevision=revision, canaryWeight=0)
    if draft.status.get("phase") != "Blocked":
        draft.status["phase"] = "Ready" if ready else "Deploying"
    draft.condition(
        AVAILABLE,
        "True" if ready else "False",
        c.STABLE_SERVING,
        f"revision {revision} serves with {ready} ready pod(s)",
    )
    draft.condition(PROGRESSING, "False", c.ROLLOUT_COMPLETE, f"revision {revision} is stable")
    _benchmark(draft, revision, ready)


def _ensure_autoscaler(draft: _Draft, revision: int) -> None:
    """The HPA or ScaledObject scales the stable revision's Deployment; after a promotion it is pointed at the
    new one (the old Deployment is deleted)."""
    scaling = draft.spec.autoscaling
    if scaling is None:
        return
    if scaling.engine == "keda":
        manifest = render.keda_scaled_object(draft.owner, draft.spec, revision, draft.defaults.prometheus_url)
        api_version = "keda.sh/v1alpha1"
    else:
        manifest = render.horizontal_pod_autoscaler(draft.owner, draft.spec, revision)
        api_version = "autoscaling/v2"
    if not draft.observed.has_autoscaler:
        draft.actions.append(Create(manifest))
    elif draft.observed.autoscaler_target != render.revision_name(draft.owner, revision):
        draft.actions.append(
            Patch(api_version, manifest["kind"], draft.owner.name, {"spec": manifest["spec"]})
        )


def _benchmark(draft: _Draft, revision: int, ready: int) -> None:
    """After a rollout completes, and again whenever the annotation kubetune.dev/benchmark changes (on demand):
    one benchmark of the shared endpoint, recorded in status.benchmark."""
    trigger = draft.benchmark_trigger
    recorded = draft.status.get("benchmark") or {}
    if (recorded.get("revision") == revision and recorded.get("trigger", "") == trigger) or not ready:
        return
    name = f"{draft.owner.name}-bench-r{revision}"
    if trigger:
        name += "-" + hashlib.sha256(trigger.encode()).hexdigest()[:8]
    job = draft.observed.bench_jobs.get(name)
    if job is None:
        draft.actions.append(
            Create(
                render.benchmark_job(
                    draft.owner,
                    draft.spec,
                    revision,
                    draft.defaults,
                    job_name=name,
                    target=render.endpoint(draft.owner),
                )
            )
        )
        return
    if job.failure_reason:
        draft.condition(
            BENCHMARKED, "False", c.BENCHMARK_FAILED, job.failure_message or "the benchmark Job failed"
        )
        return
    if not job.complete:
        return
    bench = (job.summary() or {}).get("benchmark") or {}
    draft.status["benchmark"] = {**bench, "revision": revision, "time": draft.observed.now}
    if trigger:
        draft.status["benchmark"]["trigger"] = trigger
    message = ", ".join(
        f"{key} {bench[key]}"
        for key in ("p50LatencySeconds", "p95LatencySeconds", "outputTokensPerSecond")
        if key in bench
    )
    draft.condition(BENCHMARKED, "True", c.BENCHMARK_RECORDED, message or "benchmark recorded")
    draft.event("Normal", c.BENCHMARK_RECORDED, f"revision {revision}: {message}")
