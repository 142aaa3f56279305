"""500 FineTuneJobs at once: the real operator beside a no-op Kopf operator, on one API emulator.

Each arm is a fresh operator process watching its own namespace. The bench creates N suspended FineTuneJobs
(nothing trains) as fast as the emulator takes them and measures, from the emulator's side of the wire:

- pickup latency: a job's creation -> the first status write for it that the API accepted (p50, p99);
- all_in_phase_seconds: the first creation -> the last job's first status write with phase Suspended;
- peak RSS of the operator process (VmHWM from /proc, with psutil sampling as a fallback);
- API requests per job: every request that reached the emulator from the first creation until the API was
  quiet again (follow-up writes included), divided by N (the operator's start-up and list calls excluded).

The no-op arm has the same Kopf shape (create/resume/update + a 30 s timer on FineTuneJobs, event handlers on
FineTuneJobs and on labelled Jobs and Pods, the same persistence settings) but its handler only patches
`status.phase: Suspended`. Rounds alternate the arms' order (ours-noop, noop-ours, ...): this machine's timings
swing +/-30%, so ratios are medians of per-round ratios. The last output line is JSON.

    .venv/bin/python bench/operator_scale.py            # 500 jobs, 2 rounds
    .venv/bin/python bench/operator_scale.py --jobs 50 --rounds 1 --profile /tmp/op.prof
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import psutil

from kubetune.api.crd import all_crds
from kubetune_sandbox.emulator.server import ApiEmulator, EmulatorServer
from kubetune_sandbox.emulator.store import Store

REPO = Path(__file__).resolve().parents[1]
RESOURCE = "kubetune.dev/v1alpha1/finetunejobs"
EXPECTED_PHASE = "Suspended"

# The no-op operator: the same resources and handler shape as kubetune.handlers, doing nothing but one status
# field. Written to a temp file and run by `kopf run`, exactly as ours is run by `kubetune operator`.
NOOP_OPERATOR = """
import logging
import kopf

GROUP, VERSION, PLURAL = "kubetune.dev", "v1alpha1", "finetunejobs"
LABELS = {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/finetunejob": kopf.PRESENT}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_):
    settings.persistence.finalizer = "kubetune.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def changed(patch: kopf.Patch, **_):
    patch.status["phase"] = "Suspended"


@kopf.timer(GROUP, VERSION, PLURAL, interval=30, sharp=False)
async def resync(patch: kopf.Patch, **_):
    patch.status["phase"] = "Suspended"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def event(**_):
    pass


@kopf.on.event("batch", "v1", "jobs", labels=LABELS)
@kopf.on.event("", "v1", "pods", labels=LABELS)
async def child(**_):
    pass
"""


@attrs.define(kw_only=True)
class MeteredEmulator(ApiEmulator):
    """The emulator, also timing each job's first accepted status write and counting requests."""

    first_status: dict[str, float] = attrs.field(factory=dict)
    in_phase: dict[str, float] = attrs.field(factory=dict)
    request_times: list[float] = attrs.field(factory=list)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.request_times.append(time.monotonic())
        response = await super().__call__(raw_request)
        path = raw_request.path
        if raw_request.method == "PATCH" and "/finetunejobs/" in path and response.status == 200:
            # A status write: through /status (ours, Kopf's) or a main-resource patch carrying status.
            body = await raw_request.json()
            status = body.get("status") if isinstance(body, dict) else None
            if status:
                name = path.split("/finetunejobs/")[1].split("/")[0]
                key = f"{path.split('/namespaces/')[1].split('/')[0]}/{name}"
                stamp = time.monotonic()
                self.first_status.setdefault(key, stamp)
                if status.get("phase") == EXPECTED_PHASE:
                    self.in_phase.setdefault(key, stamp)
        return response


@dataclass
class ArmResult:
    arm: str
    pickups: list[float]
    all_in_phase_seconds: float
    peak_rss_bytes: int
    requests: int
    jobs: int
    missing: int
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.pickups)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class RssSampler(threading.Thread):
    """Peak RSS of one process: sampled every 50 ms, then VmHWM (the kernel's own peak) at the end."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def finish(self) -> int:
        self.running = False
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        return self.peak


def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny/"},
            "dataset": {"uri": "s3://data/rows.jsonl", "evalSplit": 0.05},
            "output": {"uri": f"s3://artifacts/{namespace}/{name}/"},
            "suspend": True,
        },
    }


def operator_command(
    arm: str, namespace: str, workdir: Path, profile: Path | None
) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "KUBECONFIG": str(workdir / "kubeconfig")}
    if arm == "ours":
        env |= {
            "KUBETUNE_WATCH_NAMESPACES": namespace,
            "KUBETUNE_METRICS_PORT": "0",
            "KUBETUNE_SCRAPE_PROGRESS": "false",
        }
        prefix = [sys.executable]
        if profile is not None:
            prefix += ["-m", "cProfile", "-o", str(profile)]
        return [*prefix, "-m", "kubetune.cli.main", "operator", "--health-port", "0", "--no-json-logs"], env
    module = workdir / "noop_operator.py"
    module.write_text(NOOP_OPERATOR)
    return [sys.executable, "-m", "kopf", "run", "--standalone", "-n", namespace, str(module)], env


def run_arm(  # noqa: PLR0917 - one call site, read as a sentence
    server: EmulatorServer, arm: str, round_no: int, jobs: int, workdir: Path, profile: Path | None
) -> ArmResult:
    emulator = server.emulator
    assert isinstance(emulator, MeteredEmulator)
    namespace = f"{arm}-{round_no}"
    server.create("v1/namespaces", {"metadata": {"name": namespace}})
    command, env = operator_command(arm, namespace, workdir, profile if arm == "ours" else None)
    log = (workdir / f"{namespace}.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        # Wait until the operator watches: a canary job gets its status.
        server.create(RESOURCE, job_manifest("warmup", namespace))
        deadline = time.monotonic() + 60
        while f"{namespace}/warmup" not in emulator.in_phase:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{arm} operator never picked up its warm-up job: see {log.name}")
            time.sleep(0.05)
        time.sleep(1.0)  # let the warm-up's follow-up writes settle

        first_request = len(emulator.request_times)
        created: dict[str, float] = {}
        for index in range(jobs):  # "at once": back to back, as fast as the API takes them
            name = f"job-{index:04d}"
            server.create(RESOURCE, job_manifest(name, namespace))
            created[f"{namespace}/{name}"] = time.monotonic()
        start = min(created.values())
        deadline = time.monotonic() + max(120.0, jobs * 0.5)
        while not all(key in emulator.in_phase for key in created) and time.monotonic() < deadline:
            time.sleep(0.05)
        done = [emulator.in_phase[key] for key in created if key in emulator.in_phase]
        finished = max(done) if done else time.monotonic()
        # Requests per job count the whole burst, follow-up writes (Kopf's annotations, events) included:
        # until the API has been quiet for 1.5 s (the 30 s resync timers have not fired yet by then).
        settle_deadline = time.monotonic() + 20
        while time.monotonic() < settle_deadline and time.monotonic() - emulator.request_times[-1] < 1.5:
            time.sleep(0.1)
        requests = len(emulator.request_times) - first_request
        pickups = [emulator.first_status[k] - created[k] for k in created if k in emulator.first_status]
        return ArmResult(
            arm=arm,
            pickups=pickups,
            all_in_phase_seconds=finished - start,
            peak_rss_bytes=sampler.finish(),
            requests=requests,
            jobs=jobs,
            missing=sum(1 for key in created if key not in emulator.in_phase),
        )
    finally:
        sampler.running = False
        process.terminate()  # SIGTERM: lets cProfile write its file
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="cProfile our operator (last round) into this file")
    parser.add_argument("--keep", action="store_true", help="keep the operators' logs (printed path)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    server = EmulatorServer(crds=all_crds())
    # Big enough a watch history that no operator sees 410 Gone in the middle of the burst.
    server.emulator = MeteredEmulator(store=Store(max(50_000, args.jobs * 40)))
    results: list[tuple[ArmResult, ArmResult]] = []
    with server:
        server.kubeconfig(workdir / "kubeconfig")
        for round_no in range(args.rounds):
            order = ("ours", "noop") if round_no % 2 == 0 else ("noop", "ours")
            by_arm: dict[str, ArmResult] = {}
            for arm in order:
                profile = args.profile if round_no == args.rounds - 1 else None
                by_arm[arm] = result = run_arm(server, arm, round_no, args.jobs, workdir, profile)
                print(
                    f"round {round_no} {arm:>4}: p50 {result.percentile(0.5):.2f}s "
                    f"p99 {result.percentile(0.99):.2f}s all-in-phase {result.all_in_phase_seconds:.1f}s "
                    f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB "
                    f"requests/job {result.requests / result.jobs:.1f} missing {result.missing}",
                    flush=True,
                )
            results.append((by_arm["ours"], by_arm["noop"]))

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    summary = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "p50_pickup_seconds": median([ours.percentile(0.5) for ours, _ in results]),
        "p99_pickup_seconds": median([ours.percentile(0.99) for ours, _ in results]),
        "rss_ratio": median([ours.peak_rss_bytes / noop.peak_rss_bytes for ours, noop in results]),
        "all_in_phase_seconds": median([ours.all_in_phase_seconds for ours, _ in results]),
        "requests_per_job": median([ours.requests / ours.jobs for ours, _ in results]),
        "peak_rss_mib": median([ours.peak_rss_bytes / 2**20 for ours, _ in results]),
        "missing_jobs": max(ours.missing for ours, _ in results),
        "noop": {
            "p50_pickup_seconds": median([noop.percentile(0.5) for _, noop in results]),
            "p99_pickup_seconds": median([noop.percentile(0.99) for _, noop in results]),
            "all_in_phase_seconds": median([noop.all_in_phase_seconds for _, noop in results]),
            "requests_per_job": median([noop.requests / noop.jobs for _, noop in results]),
            "peak_rss_mib": median([noop.peak_rss_bytes / 2**20 for _, noop in results]),
        },
        "p99_ratio": median([ours.percentile(0.99) / noop.percentile(0.99) for ours, noop in results]),
        "targets": {"p99_pickup_seconds": 5.0, "rss_ratio": 1.5},
    }
    if args.keep:
        print(f"logs in {workdir}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
