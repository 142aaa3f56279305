"""The operator's own Prometheus metrics. Bounded labels only: per-job detail lives in status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "kubetune_reconcile_total", "Reconciles by kind and result", ["kind", "result"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time spent in one reconcile, API calls included",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
JOBS_BY_PHASE = Gauge("kubetune_finetunejobs", "FineTuneJobs by phase", ["phase"], registry=REGISTRY)
GPUS_REQUESTED = Gauge(
    "kubetune_gpus_requested", "GPUs requested by FineTuneJobs whose training is running", registry=REGISTRY
)
QUEUE_WAIT_SECONDS = Histogram(
    "kubetune_queue_wait_seconds",
    "From the dataset passing (GPUs requested) to the first training pod running",
    buckets=(10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400),
    registry=REGISTRY,
)
TRAINING_SECONDS = Histogram(
    "kubetune_training_duration_seconds",
    "From the first training pod running to training complete",
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
    registry=REGISTRY,
)
EVENTS = Counter("kubetune_events_total", "Events emitted by reason", ["kind", "reason"], registry=REGISTRY)

PHASES = ("Pending", "Validating", "Queued", "Running", "Evaluating", "Succeeded", "Failed", "Suspended")


class PhaseIndex:
    """Last known phase and GPU count per job, so the gauges are exact without listing the cluster."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, int]] = {}
        for phase in PHASES:
            JOBS_BY_PHASE.labels(phase).set(0)

    def update(self, uid: str, phase: str | None, gpus: int) -> None:
        if phase is None:
            self._jobs.pop(uid, None)
        else:
            self._jobs[uid] = (phase, gpus)
        counts = dict.fromkeys(PHASES, 0)
        running_gpus = 0
        for job_phase, job_gpus in self._jobs.values():
            counts[job_phase] = counts.get(job_phase, 0) + 1
            if job_phase == "Running":
                running_gpus += job_gpus
        for name, count in counts.items():
            JOBS_BY_PHASE.labels(name).set(count)
        GPUS_REQUESTED.set(running_gpus)


# 1 on the replica that holds the Lease (or the only one, without leader election), 0 on a standby.
LEADER = Gauge(
    "kubetune_leader", "Whether this operator replica leads (1) or stands by (0)", registry=REGISTRY
)
_serving: set[int] = set()


def serve_metrics(port: int) -> bool:
    """Starts the /metrics endpoint once per process (a standby serves it before Kopf's startup runs)."""
    if port in _serving:
        return False
    start_http_server(port, registry=REGISTRY)
    _serving.add(port)
    return True
