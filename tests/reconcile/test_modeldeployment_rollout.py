"""The ModelDeployment state machine: gate, first rollout, canary steps with analysis, rollback, benchmark."""

from __future__ import annotations

import pytest

from kubetune.reconcile.modeldeployment import AVAILABLE, GATE_PASSED, PROGRESSING, ROLLED_BACK
from kubetune.render.modeldeployment import ServingDefaults
from tests.api.conftest import load_example, with_changes
from tests.reconcile.serving_world import ServingWorld, passed_job

EXAMPLE = load_example("05-serve-canary/modeldeployment.yaml")
HEALTHY = {
    "errorRate": "0",
    "p50LatencySeconds": "0.4",
    "p95LatencySeconds": "0.9",
    "outputTokensPerSecond": "120",
}


def _world(job=None, **changes) -> ServingWorld:
    resource = with_changes(
        EXAMPLE, {"metadata.uid": "mdep-uid", "metadata.generation": 1, "spec.autoscaling": None, **changes}
    )
    resource["spec"] = {k: v for k, v in resource["spec"].items() if v is not None}
    return ServingWorld(resource, job)


def _ready_first_revision(world: ServingWorld) -> None:
    world.step()
    world.make_ready()
    world.step()
    world.finish_bench("support-bot-bench-r1", HEALTHY)
    world.step()
    assert world.status["phase"] == "Ready"


def _new_revision(world: ServingWorld) -> None:
    world.resource["spec"]["maxModelLen"] = 8192  # changes the pods: a new revision
    world.resource["metadata"]["generation"] += 1
    world.step()


def test_blocked_until_the_job_passes_then_proceeds_by_itself() -> None:
    world = _world(job=None)
    world.step()
    assert world.status["phase"] == "Blocked"
    assert world.condition(GATE_PASSED)["reason"] == "SourceNotFound"
    world.source_job = passed_job({"perplexity": "3.9"}, passed=False)
    world.step()
    assert world.condition(GATE_PASSED)["reason"] == "EvaluationNotPassed"
    assert "perplexity 9.5 > max 8.0" in world.condition(GATE_PASSED)["message"]
    assert not any(kind == "Deployment" for kind, _ in world.objects)
    world.source_job = passed_job({"perplexity": "3.9"})
    world.step()
    assert world.condition(GATE_PASSED)["status"] == "True"
    assert ("Deployment", "support-bot-r1") in world.objects


def test_gate_thresholds_keep_it_blocked_naming_metric_value_and_threshold() -> None:
    world = _world(job=passed_job({"perplexity": "6.7"}))
    world.step()
    gate = world.condition(GATE_PASSED)
    assert world.status["phase"] == "Blocked"
    assert gate["reason"] == "ThresholdsNotMet" and "perplexity 6.7 > max 6" in gate["message"]


def test_first_revision_rolls_out_directly_and_records_a_benchmark() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    status = world.status
    assert status["stableRevision"] == 1 and status["revision"] == 1 and status["canaryWeight"] == 0
    assert status["endpoint"] == "http://support-bot.default.svc:8000/v1"
    assert status["benchmark"]["p95LatencySeconds"] == "0.9" and status["benchmark"]["revision"] == 1
    assert world.condition(AVAILABLE)["status"] == "True"
    deployment = world.deployment(1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--lora-modules") + 1] == "support-bot=/models/adapters/adapter"
    assert args[args.index("--served-model-name") + 1] == "support-bot-base"
    assert args[args.index("--max-lora-rank") + 1] == "16"  # the job's spec.lora.r (its default here)
    best = "s3://a/c/step-100/"  # spec.source.checkpoint: best = lowest eval loss
    assert best in deployment["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert deployment["metadata"]["annotations"]["lineage.kubetune.dev/dataset-sha256"] == "ab" * 32


def test_healthy_canary_promotes_through_every_step() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    weights = []
    for step in range(3):
        world.step()  # scales the canary to this step's weight
        world.make_ready()
        world.step()  # the canary is ready: its analysis benchmark starts
        weights.append(world.status["canaryWeight"])
        assert world.status["phase"] == "Progressing"
        world.finish_bench(f"support-bot-bench-r2-s{step}", HEALTHY)
        world.step(minutes=5)  # past intervalSeconds
    world.make_ready()
    world.step()
    assert weights == [33, 50, 100]  # 2 replicas: 10% is 1 canary pod beside 2 stable ones
    assert world.status["stableRevision"] == 2
    assert ("Deployment", "support-bot-r1") not in world.objects
    assert world.deployment(2)["spec"]["replicas"] == 2
    assert [e.reason for e in world.events].count("CanaryStepPassed") == 2
    assert "Promoted" in [e.reason for e in world.events]


def test_stable_keeps_every_replica_until_the_canary_is_ready() -> None:
    world = _world(
        job=passed_job({"perplexity": "3.9"}), **{"spec.replicas": 4, "spec.rollout.steps": [50, 100]}
    )
    _ready_first_revision(world)
    _new_revision(world)
    assert world.deployment(1)["spec"]["replicas"] == 4  # the canary is not ready yet
    assert world.deployment(2)["spec"]["replicas"] == 2
    world.step()
    assert world.deployment(1)["spec"]["replicas"] == 4
    world.make_ready()
    world.step()
    assert world.deployment(1)["spec"]["replicas"] == 2  # now the canary takes its share
    assert world.status["canaryWeight"] == 50


def test_status_and_condition_say_the_effective_weight() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    assert world.status["canaryWeight"] == 33
    assert "at 10%, effectively 33% by replicas" in world.condition(PROGRESSING)["message"]


@pytest.mark.parametrize(
    ("benchmark", "reason"),
    [
        ({"errorRate": "0.2", "p95LatencySeconds": "0.5"}, "ErrorRateTooHigh"),
        ({"errorRate": "0", "p95LatencySeconds": "3.5"}, "LatencyTooHigh"),
    ],
)
def test_canary_failing_analysis_rolls_back(benchmark, reason) -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    world.make_ready()
    world.step()
    world.finish_bench("support-bot-bench-r2-s0", benchmark)
    world.step()
    assert world.status["phase"] == "RolledBack"
    rolled = world.condition(ROLLED_BACK)
    assert rolled["status"] == "True" and rolled["reason"] == reason
    assert ("Deployment", "support-bot-r2") not in world.objects
    assert world.deployment(1)["spec"]["replicas"] == 2
    assert world.status["stableRevision"] == 1
    world.step()
    assert ("Deployment", "support-bot-r2") not in world.objects  # stays rolled back until the spec changes


def test_canary_never_ready_rolls_back_after_the_deadline() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    world.step(minutes=11)  # a big model may still be downloading: 600 s is no longer the deadline
    assert world.status["phase"] == "Progressing"
    world.step(minutes=20)  # past the default spec.rollout.progressDeadlineSeconds (1800)
    assert world.condition(ROLLED_BACK)["reason"] == "CanaryNotReady"
    assert "spec.rollout.progressDeadlineSeconds 1800" in world.condition(ROLLED_BACK)["message"]


def test_progress_deadline_is_the_spec_field() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}), **{"spec.rollout.progressDeadlineSeconds": 3600})
    world.step()
    world.step(minutes=45)
    assert world.status["phase"] == "Deploying"
    world.step(minutes=20)
    assert world.status["phase"] == "Failed"
    assert "progressDeadlineSeconds 3600" in world.condition(AVAILABLE)["message"]


def test_pause_holds_and_abort_rolls_back() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    world.resource["spec"]["rollout"]["paused"] = True
    world.make_ready()
    world.step(minutes=30)
    assert world.status["phase"] == "Paused" and world.condition(PROGRESSING)["reason"] == "Paused"
    assert not any(name.startswith("support-bot-bench-r2") for name in world.bench_jobs())
    world.resource["spec"]["rollout"] = {**world.resource["spec"]["rollout"], "paused": False, "abort": True}
    world.step()
    assert world.condition(ROLLED_BACK)["reason"] == "AbortedByUser"


def test_model_uri_source_serves_several_adapters_without_a_gate() -> None:
    spec = load_example("06-serve-model-uri-tgi/modeldeployment.yaml")
    spec["metadata"].update(uid="u", generation=1)
    world = ServingWorld(spec)
    world.step()
    assert world.condition(GATE_PASSED)["status"] == "True"
    container = world.objects[("Deployment", "shared-base-r1")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LORA_ADAPTERS"] == (
        "shared-base=/models/adapters/summarizer,"
        "summarizer=/models/adapters/summarizer,classifier=/models/adapters/classifier"
    )
    assert container["args"][:2] == ["--model-id", "/models/base"]


def test_replica_change_is_not_a_new_revision() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    world.resource["spec"]["replicas"] = 3
    world.step()
    assert world.status["revision"] == 1
    assert world.deployment(1)["spec"]["replicas"] == 3


def test_http_route_weights_carry_the_canary_split() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}), **{"spec.rollout.httpRouteRef": {"name": "public"}})
    _ready_first_revision(world)
    _new_revision(world)
    world.make_ready()
    outcome = world.step()
    assert not [a for a in outcome.actions if getattr(a, "kind", "") == "HTTPRoute"]  # set once per step
    patches = []
    world2 = _world(
        job=passed_job({"perplexity": "3.9"}), **{"spec.rollout.httpRouteRef": {"name": "public"}}
    )
    world2.step()
    world2.make_ready()
    patches += [a for a in world2.step().actions if getattr(a, "kind", "") == "HTTPRoute"]
    assert patches and patches[0].json_patch
    (operation,) = patches[0].patch
    assert operation["path"] == "/spec/rules/0/backendRefs"
    assert [(b["name"], b["weight"]) for b in operation["value"]] == [("support-bot-r1", 100)]


def test_http_route_weights_follow_steps_and_rollback() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}), **{"spec.rollout.httpRouteRef": {"name": "public"}})
    _ready_first_revision(world)
    world.resource["spec"]["maxModelLen"] = 8192
    outcome = world.step()
    (route,) = [a for a in outcome.actions if getattr(a, "kind", "") == "HTTPRoute"]
    assert [(b["name"], b["weight"]) for b in route.patch[0]["value"]] == [
        ("support-bot-r1", 90),
        ("support-bot-r2", 10),
    ]
    world.make_ready()
    world.step()
    world.finish_bench("support-bot-bench-r2-s0", {"errorRate": "0.5"})
    outcome = world.step()
    (route,) = [a for a in outcome.actions if getattr(a, "kind", "") == "HTTPRoute"]
    assert [(b["name"], b["weight"]) for b in route.patch[0]["value"]] == [("support-bot-r1", 100)]


def test_benchmark_on_demand_through_the_annotation() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    world.step()
    assert world.bench_jobs() == ["support-bot-bench-r1"]  # nothing new without a request
    world.resource["metadata"]["annotations"] = {"kubetune.dev/benchmark": "2026-11-29T12:00"}
    world.step()
    (extra,) = [name for name in world.bench_jobs() if name != "support-bot-bench-r1"]
    world.finish_bench(extra, {**HEALTHY, "p95LatencySeconds": "1.7"})
    world.step()
    assert world.status["benchmark"]["p95LatencySeconds"] == "1.7"
    assert world.status["benchmark"]["trigger"] == "2026-11-29T12:00"
    world.step()
    assert len(world.bench_jobs()) == 2


def test_the_benchmark_and_the_canary_analysis_ask_for_the_adapter() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}))
    _ready_first_revision(world)
    _new_revision(world)
    world.make_ready()
    world.step()
    for name in ("support-bot-bench-r1", "support-bot-bench-r2-s0"):
        command = world.objects[("Job", name)]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--model") + 1] == "support-bot"  # the adapter's name, not the base's


def test_lora_rank_comes_from_the_source_job() -> None:
    job = passed_job({"perplexity": "3.9"})
    job["spec"]["lora"] = {"r": 128, "alpha": 256}
    world = _world(job=job)
    world.step()
    args = world.deployment(1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-lora-rank") + 1] == "128"


def test_autoscaler_follows_the_stable_revision_after_promotion() -> None:
    world = _world(
        job=passed_job({"perplexity": "3.9"}),
        **{"spec.autoscaling": {"minReplicas": 1, "maxReplicas": 8, "metric": "vllm:num_requests_waiting"}},
    )
    _ready_first_revision(world)
    hpa = world.objects[("HorizontalPodAutoscaler", "support-bot")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "support-bot-r1"
    _new_revision(world)
    for step in range(3):
        world.step()
        world.make_ready()
        world.step()
        world.finish_bench(f"support-bot-bench-r2-s{step}", HEALTHY)
        world.step(minutes=5)
    world.step()
    assert world.status["stableRevision"] == 2 and ("Deployment", "support-bot-r1") not in world.objects
    assert hpa["spec"]["scaleTargetRef"]["name"] == "support-bot-r2"


def test_keda_queries_the_configured_prometheus() -> None:
    world = _world(
        job=passed_job({"perplexity": "3.9"}),
        **{"spec.autoscaling": {"minReplicas": 1, "maxReplicas": 8, "engine": "keda"}},
    )
    world.defaults = ServingDefaults(prometheus_url="http://thanos.observability.svc:9090")
    _ready_first_revision(world)
    (trigger,) = world.objects[("ScaledObject", "support-bot")]["spec"]["triggers"]
    assert trigger["metadata"]["serverAddress"] == "http://thanos.observability.svc:9090"
    assert 'modeldeployment="support-bot"' in trigger["metadata"]["query"]


def test_job_storage_secret_is_inherited() -> None:
    job = passed_job({"perplexity": "3.9"})
    job["spec"]["storageSecretRef"] = {"name": "job-credentials"}
    world = _world(job=job, **{"spec.storageSecretRef": None})
    world.step()
    fetch = world.deployment(1)["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["envFrom"] == [{"secretRef": {"name": "job-credentials"}}]


def test_no_credentials_anywhere_is_said_before_any_pod_starts() -> None:
    world = _world(job=passed_job({"perplexity": "3.9"}), **{"spec.storageSecretRef": None})
    world.step()
    assert world.status["phase"] == "Blocked"
    available = world.condition(AVAILABLE)
    assert available["reason"] == "StorageCredentialsMissing"
    assert (
        "spec.storageSecretRef" in available["message"] and "FineTuneJob support-bot" in available["message"]
    )
    assert not any(kind == "Deployment" for kind, _ in world.objects)
    # A ServiceAccount the operator names (IRSA, Workload Identity) carries credentials instead.
    world.defaults = ServingDefaults(service_account_name="kubetune-trainer")
    world.step()
    pod = world.deployment(1)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubetune-trainer" and "envFrom" not in pod["initContainers"][0]
