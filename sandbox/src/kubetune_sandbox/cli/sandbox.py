"""`kubetune sandbox up --dir DIR` (the local cluster, in the foreground) and `kubetune quickstart`.

The sandbox modules are imported inside the commands that use them, so other `kubetune` commands start fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from kubetune.api.manifests import load_all_yaml
from kubetune.cli import user

T = TypeVar("T")
EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "quickstart"
RESOURCES = {
    "FineTuneJob": "kubetune.dev/v1alpha1/finetunejobs",
    "ModelDeployment": "kubetune.dev/v1alpha1/modeldeployments",
    "Secret": "v1/secrets",
    "ConfigMap": "v1/configmaps",
}


def _options(args: argparse.Namespace) -> Any:
    from kubetune_sandbox.cluster import runtime

    return runtime.SandboxOptions(
        api_port=args.api_port, s3_port=args.s3_port, pretrain_steps=args.pretrain_steps
    )


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="sandbox: %(message)s")
    for noisy in ("aiohttp", "kmock", "werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class _Stop:
    """SIGINT/SIGTERM set a flag (the main thread then stops everything in order)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _up(args: argparse.Namespace) -> int:
    _quiet_logs()
    from kubetune_sandbox.cluster import runtime, seed

    stop = _Stop()
    sandbox = runtime.Sandbox(Path(args.dir), _options(args), say=lambda text: print(text, flush=True))
    try:
        sandbox.start()
    except seed.SandboxError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sandbox.stop()
        return 130
    try:
        info = sandbox.info
        print(f"sandbox up: API {info['apiServer']}, S3 {info['s3']['endpoint']}, bucket {info['bucket']}")
        print(f"  serving: {info['servingRuntime']}")
        print(f"  export KUBECONFIG={sandbox.kubeconfig}")
        print(f"  details: {sandbox.info_file}; Ctrl-C stops everything", flush=True)
        while not stop.event.wait(0.5):
            if sandbox.operator is not None and sandbox.operator.poll() is not None:
                print(f"error: the operator exited; see {info['operatorLog']}", file=sys.stderr)
                return 1
        print("stopping the sandbox...", flush=True)
        return 0
    finally:
        sandbox.stop()
        stop.restore()


# ------------------------------------------------------------------------------------------- quickstart


class QuickstartError(RuntimeError):
    pass


def load_manifests(directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise QuickstartError(f"no quickstart manifests at {directory}; pass --manifests DIR")
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        documents += list(load_all_yaml(path.read_text()))
    # Jobs before deployments: a ModelDeployment waits for its source anyway, but this reads naturally.
    return sorted(documents, key=lambda d: list(RESOURCES).index(d["kind"]) if d["kind"] in RESOURCES else 99)


def resolve_endpoint(endpoint: str, server: Any) -> str:
    """`http://NAME.NS.svc:8000/v1` -> the Service's loopback clusterIP (the sandbox's cluster DNS)."""
    from kubetune_sandbox.cluster import decisions

    ips = {}
    for service in server.list("v1/services"):
        ip = (service.get("spec") or {}).get("clusterIP")
        if ip and ip != "None":
            ips[(service["metadata"].get("namespace", "default"), service["metadata"]["name"])] = ip
    return str(decisions.rewrite_service_hosts(endpoint, ips))


def _wait_deployment(server: Any, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        obj = server.get("kubetune.dev/v1alpha1/modeldeployments", namespace, name) or {}
        status = obj.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase != last:
            print(f"  ModelDeployment {name}: {phase}", flush=True)
            last = phase
        if phase == "Ready" and status.get("endpoint"):
            return obj
        if phase in ("Failed", "Blocked"):
            reasons = "; ".join(f"{c.get('reason')}: {c.get('message')}" for c in status.get("conditions") or []
                                if c.get("status") == "False")  # fmt: skip
            raise QuickstartError(f"ModelDeployment {name} is {phase}: {reasons}")
        time.sleep(1.0)
    raise QuickstartError(f"ModelDeployment {name} not Ready after {timeout:.0f}s (phase {last})")


def _retrying(call: Callable[[], T], attempts: int = 10, delay: float = 3.0) -> T:
    """Right after Ready the Service may still be switching backends: a reset connection is worth a retry."""
    for attempt in range(attempts):
        try:
            return call()
        except (urllib.error.URLError, ConnectionError) as error:
            if attempt == attempts - 1 or (isinstance(error, urllib.error.HTTPError) and error.code < 500):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def chat(endpoint: str, model: str, question: str, timeout: float = 120.0) -> str:
    return _retrying(lambda: _chat_once(endpoint, model, question, timeout))


def _chat_once(endpoint: str, model: str, question: str, timeout: float) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 32,
        "temperature": 0,
    }
    request = urllib.request.Request(
        endpoint.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    return str(answer["choices"][0]["message"]["content"])


def _served_names(endpoint: str) -> list[str]:
    return _retrying(lambda: _served_names_once(endpoint))


def _served_names_once(endpoint: str) -> list[str]:
    with urllib.request.urlopen(endpoint.rstrip("/") + "/models", timeout=30) as response:
        return [m["id"] for m in json.loads(response.read()).get("data", [])]


def run_quickstart(args: argparse.Namespace) -> int:
    from kubetune_sandbox.cluster import runtime

    directory = Path(args.dir).resolve()
    manifests = load_manifests(Path(args.manifests) if args.manifests else EXAMPLES)
    started = time.monotonic()
    print(f"kubetune quickstart: a local sandbox in {directory}", flush=True)
    options = _options(args)
    with runtime.Sandbox(directory, options, say=lambda text: print("  " + text, flush=True)) as sandbox:
        server = sandbox.server
        print(f"  API {sandbox.info['apiServer']}, S3 {sandbox.info['s3']['endpoint']}")
        print(f"  serving runtime: {sandbox.info['servingRuntime']}", flush=True)
        job_name = namespace = deployment_name = None
        for manifest in manifests:
            meta = manifest["metadata"]
            resource = RESOURCES.get(manifest["kind"])
            if resource is None:
                raise QuickstartError(f"the quickstart does not apply {manifest['kind']} objects")
            server.create(resource, manifest, meta.get("namespace", "default"))
            print(f"  applied {manifest['kind']} {meta['name']}", flush=True)
            if manifest["kind"] == "FineTuneJob":
                job_name, namespace = meta["name"], meta.get("namespace", "default")
            elif manifest["kind"] == "ModelDeployment":
                deployment_name = meta["name"]
        if job_name is None or namespace is None:
            raise QuickstartError("the quickstart manifests hold no FineTuneJob")

        kube = user.Kube(str(sandbox.kubeconfig), namespace)
        print("\ntraining (validate -> train -> evaluate/export):", flush=True)
        job = user.watch_job(kube, job_name, timeout=args.timeout)
        status = job.get("status") or {}
        print("\ndataset report:")
        print(user.dataset_report(status))
        print("\nevaluation (base vs tuned vs thresholds):")
        print(user.evaluation_table(job))
        if status.get("phase") != "Succeeded":
            failed: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {}
            )
            raise QuickstartError(
                f"FineTuneJob {job_name} {status.get('phase')}: {failed.get('reason')}: {failed.get('message')}"
                f" (logs: {sandbox.info['podsDir']})"
            )
        evaluation = status.get("evaluation") or {}
        if evaluation.get("passed") is False:
            missed = "; ".join(evaluation.get("failedThresholds") or [])
            raise QuickstartError(f"the tuned model did not pass its evaluation thresholds ({missed})")
        assert sandbox.s3 is not None
        series, source = user.collect_losses(kube, job, sandbox.s3.client())  # the sandbox's own S3 keys
        png = directory / f"{job_name}-loss.png"
        if series["train"] or series["eval"]:
            renderer = user.write_png(png, series, f"{job_name} loss")
            for name, points in series.items():
                if points:
                    print(f"{name:5} loss {user.sparkline([v for _, v in points])}")
            print(f"loss curve: {png} ({renderer}; from {source})")
        else:
            print("no loss values recorded: no loss curve written")

        answer = None
        if deployment_name and not args.skip_serving:
            print("\nserving:", flush=True)
            deployment = _wait_deployment(server, namespace, deployment_name, args.serving_timeout)
            endpoint = resolve_endpoint(deployment["status"]["endpoint"], server)
            names = _served_names(endpoint)
            # status.servedModelName is the tuned adapter (the base answers to NAME-base).
            served = deployment["status"].get("servedModelName")
            model = served if served in names else names[0]
            question = "What is the capital of France?"
            answer = chat(endpoint, model, question)
            print(f"  endpoint {deployment['status']['endpoint']} (here {endpoint}), model {model!r}")
            print(f"  Q: {question}\n  A: {answer.strip()}")

        outputs = status.get("outputs") or {}
        minutes = (time.monotonic() - started) / 60
        print(f"\ndone in {minutes:.1f} min. Artifacts:")
        for key, value in outputs.items():
            print(f"  {key}: {value}")
        print(f"  (in the sandbox's S3 at {sandbox.info['s3']['endpoint']}, gone when it stops;"
              f" pod logs in {sandbox.info['podsDir']})")  # fmt: skip
        print(
            "\nOn a real cluster: install the operator (helm install kubetune charts/kubetune), put your model\n"
            "and data in S3, create a Secret with AWS_* credentials, set their URIs and storageSecretRef in\n"
            "examples/quickstart/*.yaml (and resources.gpus), then `kubectl apply -f examples/quickstart/`\n"
            f"and `kubectl kubetune watch {job_name}`. Keep a local cluster running: kubetune sandbox up --dir DIR"
        )
        if args.keep:
            print("\n--keep: the sandbox stays up; Ctrl-C stops it", flush=True)
            stop = _Stop()
            stop.event.wait()
            stop.restore()
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so the sandbox's `with` stops everything


def _quickstart(args: argparse.Namespace) -> int:
    _quiet_logs()
    from kubetune_sandbox.cluster import seed

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_quickstart(args)
    except (QuickstartError, seed.SandboxError, user.UserError) as error:
        print(f"\nquickstart failed: {error}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"\nquickstart failed: the model endpoint did not answer: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the sandbox was stopped", file=sys.stderr)
        return 130


def _common(parser: argparse.ArgumentParser) -> None:
    from kubetune_sandbox.cluster import seed

    parser.add_argument("--api-port", type=int, default=0, help="API server port on 127.0.0.1 (0: any free)")
    parser.add_argument("--s3-port", type=int, default=0, help="S3 port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=seed.DEFAULT_PRETRAIN_STEPS,
        help="pretraining steps of the cached tiny base model",
    )


def register_sandbox(commands: Any) -> None:
    sandbox = commands.add_parser("sandbox", help="a local cluster: API, S3, controllers, kubelet, operator")
    actions = sandbox.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="run the sandbox in the foreground until Ctrl-C/SIGTERM")
    up.add_argument("--dir", required=True, help="writes DIR/kubeconfig and DIR/sandbox.json here")
    _common(up)
    up.set_defaults(run=_up)


def register_quickstart(commands: Any) -> None:
    quickstart = commands.add_parser(
        "quickstart", help="the whole pipeline on this machine: train, evaluate and serve a tiny model"
    )
    quickstart.add_argument(
        "--dir", default="kubetune-quickstart", help="sandbox state, logs and the loss plot"
    )
    quickstart.add_argument("--manifests", help=f"folder of manifests to apply (default {EXAMPLES})")
    quickstart.add_argument(
        "--timeout", type=float, default=480.0, help="seconds allowed for the FineTuneJob"
    )
    quickstart.add_argument("--serving-timeout", type=float, default=240.0)
    quickstart.add_argument("--skip-serving", action="store_true", help="stop after training and evaluation")
    quickstart.add_argument("--keep", action="store_true", help="keep the sandbox running at the end")
    _common(quickstart)
    quickstart.set_defaults(run=_quickstart)
