"""The user's commands: `kubetune status|watch|logs|plot|checkpoints|suspend|resume NAME`.

Also reachable as the kubectl plugin (`kubectl kubetune status NAME`). They work against any kubeconfig
(`--kubeconfig`, else $KUBECONFIG, else ~/.kube/config; `-n NAMESPACE`, else the context's namespace)
through the Kubernetes Python client, so a sandbox and a real cluster look the same.

Loss curves (`plot`) come from, in order of preference:
1. the trainer's log history in the job's output storage (`<output>/checkpoints/log_history.json`, the
   Hugging Face Trainer's `log_history`), when the trainer writes it and the user's own S3 credentials
   reach it (boto3's usual chain: AWS_* variables, AWS_ENDPOINT_URL included, profiles, instance roles;
   the CLI never reads the job's storage Secret);
2. the trainer pods' logs through the pod log API, whose `progress {...}` lines carry step, train and
   eval loss;
3. the eval losses of the recorded checkpoints (`status.checkpoints`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

GROUP, VERSION, PLURAL = "kubetune.dev", "v1alpha1", "finetunejobs"
TERMINAL = ("Succeeded", "Failed")
JOB_LABEL = "kubetune.dev/finetunejob"
STAGE_LABEL = "kubetune.dev/stage"
SPARK = "▁▂▃▄▅▆▇█"


class UserError(RuntimeError):
    """A problem the user can fix; printed as one line."""


# ------------------------------------------------------------------------------------------------ client


class Kube:
    """The few API calls the commands need, over any kubeconfig."""

    def __init__(self, kubeconfig: str | None = None, namespace: str | None = None) -> None:
        try:
            from kubernetes import client, config  # untyped: the objects below are Any
        except ImportError as error:  # pragma: no cover - the operator extra installs it
            raise UserError("the Kubernetes client is missing: pip install 'kubetune[operator]'") from error
        path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        self.kubeconfig = path.split(os.pathsep)[0]
        try:
            loader: Any = config
            loader.load_kube_config(config_file=self.kubeconfig)
            _, context = loader.list_kube_config_contexts(config_file=self.kubeconfig)
        except Exception as error:
            raise UserError(f"cannot load the kubeconfig {self.kubeconfig}: {error}") from error
        self.namespace = namespace or (context or {}).get("context", {}).get("namespace") or "default"
        self.custom: Any = client.CustomObjectsApi()
        self.core: Any = client.CoreV1Api()
        self._exception = client.exceptions.ApiException

    def job(self, name: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except self._exception as error:
            if error.status == 404:
                raise UserError(f'FineTuneJob "{name}" not found in namespace {self.namespace}') from None
            raise UserError(f"the API refused: {error.status} {error.reason}") from None
        except Exception as error:
            raise UserError(f"cannot reach the API server: {error}") from None
        return result

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.job(name)  # a clear message when it does not exist
        result: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch
        )
        return result

    def pods(self, selector: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def log_lines(self, pod: Mapping[str, Any], container: str, follow: bool) -> Iterator[str]:
        """The container's log through the pod log API, as `kubectl logs [-f]` reads it; following waits
        for a container still starting and ends when it terminates."""
        name = pod["metadata"]["name"]
        if not follow:
            yield from str(self._read_log(name, container)).splitlines()
            return
        stream = self._read_log(name, container, follow=True, wait=True, _preload_content=False)
        for line in stream:
            yield line.decode(errors="replace").rstrip("\n")

    def _read_log(self, name: str, container: str, *, wait: bool = False, **options: Any) -> Any:
        while True:
            try:
                return self.core.read_namespaced_pod_log(name, self.namespace, container=container, **options)
            except self._exception as error:
                message = _status_message(error)
                if not (wait and error.status == 400 and "waiting to start" in message):
                    raise UserError(f"cannot read the log of pod {name}: {message}") from None
            time.sleep(1.0)


def _status_message(error: Any) -> str:
    """The message of the API's Status, else the HTTP reason."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


# ---------------------------------------------------------------------------------------------- display


def _number(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def progress_line(status: Mapping[str, Any], width: int = 24) -> str:
    """`Running [#######.....] 120/400 loss 1.234 3100 tok/s ETA 01:20` from status.progress."""
    progress = status.get("progress") or {}
    phase = status.get("phase") or "Pending"
    step, total = progress.get("step"), progress.get("totalSteps")
    if step is not None and total:
        filled = int(width * min(step / total, 1.0))
        bar = "#" * filled + "." * (width - filled)
        counts = f"{step}/{total}"
    else:
        bar, counts = "." * width, "-/-"
    parts = [f"{phase:<10}", f"[{bar}]", counts]
    loss = progress.get("trainLoss")
    if loss is not None:
        parts.append(f"loss {loss}")
    if progress.get("evalLoss") is not None:
        parts.append(f"eval {progress['evalLoss']}")
    if progress.get("tokensPerSecond") is not None:
        parts.append(f"{progress['tokensPerSecond']} tok/s")
    parts.append(f"ETA {duration(_number(progress.get('etaSeconds')))}")
    return " ".join(parts)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def evaluation_table(job: Mapping[str, Any]) -> str:
    """Metric | base | tuned | threshold | verdict, from status.evaluation and spec.evaluation.thresholds."""
    evaluation = (job.get("status") or {}).get("evaluation") or {}
    thresholds = ((job.get("spec") or {}).get("evaluation") or {}).get("thresholds") or {}
    tuned = evaluation.get("metrics") or {}
    base = evaluation.get("baseline") or {}
    names = list(dict.fromkeys([*tuned, *base, *thresholds]))
    if not names:
        return "no evaluation yet"
    failed = set(evaluation.get("failedThresholds") or [])
    rows = [["metric", "base", "tuned", "threshold", ""]]
    for name in names:
        limit = thresholds.get(name) or {}
        bound = " ".join(f"{key} {value}" for key, value in limit.items() if key in ("min", "max"))
        verdict = ""
        if limit:
            verdict = "FAIL" if any(f.startswith(name) for f in failed) else "ok"
        rows.append([name, str(base.get(name, "-")), str(tuned.get(name, "-")), bound or "-", verdict])
    passed = evaluation.get("passed")
    footer = "" if passed is None else ("\nevaluation passed" if passed else "\nevaluation FAILED")
    return table(rows) + footer


def dataset_report(status: Mapping[str, Any]) -> str:
    dataset = status.get("dataset") or {}
    if not dataset:
        return "no dataset report yet"
    tokens = dataset.get("tokens") or {}
    rows = [
        ["rows (train)", str(dataset.get("rows", "-"))],
        ["rows (eval)", str(dataset.get("evalRows", "-"))],
        ["format", str(dataset.get("format", "-"))],
        ["invalid rows", str(dataset.get("invalidRows", 0))],
        ["duplicates dropped", str(dataset.get("duplicatesDropped", 0))],
        ["train/eval leakage", str(dataset.get("leakageRows", 0))],
        ["tokens p50/p95/max", f"{tokens.get('p50', '-')}/{tokens.get('p95', '-')}/{tokens.get('max', '-')}"],
        ["truncated", str(tokens.get("truncated", 0))],
    ]
    return table(rows)


def status_text(job: Mapping[str, Any]) -> str:
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    lines = [f"FineTuneJob {meta.get('namespace')}/{meta.get('name')}: {status.get('phase', 'Pending')}", ""]
    conditions = status.get("conditions") or []
    if conditions:
        rows = [["condition", "status", "reason", "message"]]
        rows += [[c.get("type", ""), c.get("status", ""), c.get("reason", ""), (c.get("message") or "")[:80]]
                 for c in conditions]  # fmt: skip
        lines += [table(rows), ""]
    lines += ["progress: " + progress_line(status), ""]
    if status.get("dataset"):
        lines += ["dataset:", dataset_report(status), ""]
    lines += ["evaluation:", evaluation_table(job)]
    outputs = status.get("outputs") or {}
    if outputs:
        lines += ["", "outputs:", *(f"  {key}: {value}" for key, value in outputs.items())]
    return "\n".join(lines)


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(SPARK[min(int((v - low) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in finite)


# ----------------------------------------------------------------------------------------------- losses

Series = dict[str, list[tuple[int, float]]]


def losses_from_history(history: list[Mapping[str, Any]]) -> Series:
    """Hugging Face `log_history` entries ({"step", "loss"} / {"step", "eval_loss"})."""
    series: Series = {"train": [], "eval": []}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, name in (
            ("loss", "train"),
            ("eval_loss", "eval"),
            ("trainLoss", "train"),
            ("evalLoss", "eval"),
        ):
            value = _number(entry.get(key))
            if value is not None:
                series[name].append((int(step), value))
    return series


def losses_from_log(lines: list[str]) -> Series:
    """The trainer's `progress {json}` log lines."""
    entries = []
    for line in lines:
        marker = line.find("progress {")
        if marker < 0:
            continue
        try:
            entries.append(json.loads(line[marker + len("progress ") :]))
        except ValueError:
            continue
    series = losses_from_history(entries)
    for name in series:  # the same step may be reported twice: keep the last value
        series[name] = sorted(dict(series[name]).items())
    return series


def losses_from_checkpoints(status: Mapping[str, Any]) -> Series:
    points = []
    for checkpoint in status.get("checkpoints") or []:
        value = _number(checkpoint.get("evalLoss"))
        if value is not None and checkpoint.get("step") is not None:
            points.append((int(checkpoint["step"]), value))
    return {"train": [], "eval": sorted(points)}


def read_s3_json(uri: str, s3: Any = None) -> Any:
    """An S3 object's JSON, with the given client or one from boto3's usual credential chain."""
    if s3 is None:
        import boto3

        s3 = boto3.client("s3")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def collect_losses(kube: Kube, job: Mapping[str, Any], s3: Any = None) -> tuple[Series, str]:
    """(series, where they came from). `s3`: a boto3 S3 client for the job's output storage (default:
    boto3's credential chain)."""
    output = (((job.get("spec") or {}).get("output") or {}).get("uri") or "").rstrip("/")
    if output.startswith("s3://"):
        uri = f"{output}/checkpoints/log_history.json"
        try:
            series = losses_from_history(read_s3_json(uri, s3))
            if series["train"] or series["eval"]:
                return series, uri
        except Exception:  # no such file, no credentials: try the next source
            pass
    name = job["metadata"]["name"]
    pods = kube.pods(f"{JOB_LABEL}={name},{STAGE_LABEL}=train")
    lines: list[str] = []
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        try:
            lines += list(kube.log_lines(pod, "trainer", follow=False))
        except Exception:
            continue
    series = losses_from_log(lines)
    if series["train"] or series["eval"]:
        return series, "the trainer pods' logs"
    return losses_from_checkpoints(job.get("status") or {}), "status.checkpoints"


def write_png(path: Path, series: Series, title: str) -> str:
    """A loss plot; matplotlib when installed, else a small built-in renderer. Returns which was used."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _write_png_builtin(path, series)
        return "built-in renderer (matplotlib is not installed)"
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        if points:
            axes.plot([s for s, _ in points], [v for _, v in points], marker="o" if name == "eval" else "",
                      label=f"{name} loss")  # fmt: skip
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return "matplotlib"


_COLOURS = {"train": (31, 119, 180), "eval": (255, 127, 14)}


def _write_png_builtin(path: Path, series: Series, width: int = 640, height: int = 360) -> None:
    """Axes and polylines on a white canvas, encoded as an 8-bit RGB PNG with zlib: no dependencies."""
    pixels = bytearray(b"\xff" * width * height * 3)
    margin = 40

    def put(x: int, y: int, colour: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            offset = (y * width + x) * 3
            pixels[offset : offset + 3] = bytes(colour)

    def line(x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            x, y = x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps
            for dx, dy in ((0, 0), (1, 0), (0, 1)):
                put(x + dx, y + dy, colour)

    black = (0, 0, 0)
    line(margin, height - margin, width - margin, height - margin, black)
    line(margin, margin, margin, height - margin, black)
    points = [p for values in series.values() for p in values]
    if points:
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        x_low, x_high = min(steps), max(steps) or 1
        y_low, y_high = min(values), max(values)
        x_span, y_span = (x_high - x_low) or 1, (y_high - y_low) or 1.0

        def xy(step: int, value: float) -> tuple[int, int]:
            x = margin + int((step - x_low) / x_span * (width - 2 * margin))
            y = height - margin - int((value - y_low) / y_span * (height - 2 * margin))
            return x, y

        for name, values_of in series.items():
            colour = _COLOURS.get(name, black)
            coordinates = [xy(s, v) for s, v in values_of]
            for (x0, y0), (x1, y1) in itertools.pairwise(coordinates):
                line(x0, y0, x1, y1, colour)
            for x, y in coordinates:
                for dx in range(-2, 3):
                    for dy in range(-2, 3):
                        put(x + dx, y + dy, colour)
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3 : (y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


# --------------------------------------------------------------------------------------------- commands


def _kube(args: argparse.Namespace) -> Kube:
    return Kube(args.kubeconfig, args.namespace)


def cmd_status(args: argparse.Namespace) -> int:
    job = _kube(args).job(args.name)
    if args.output == "json":
        print(json.dumps(job.get("status") or {}, indent=2))
    else:
        print(status_text(job))
    return 0


def watch_job(
    kube: Kube, name: str, *, interval: float = 1.0, stream: Any = None, timeout: float | None = None
) -> dict[str, Any]:
    """Redraw the progress line until the job reaches a terminal phase; returns the final object."""
    stream = stream or sys.stdout
    interactive = stream.isatty()
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    while True:
        job = kube.job(name)
        status = job.get("status") or {}
        line = progress_line(status)
        if interactive:
            stream.write("\r\033[K" + line)
        elif line != last:
            stream.write(line + "\n")
        stream.flush()
        last = line
        if status.get("phase") in TERMINAL:
            if interactive:
                stream.write("\n")
            return job
        if deadline is not None and time.monotonic() > deadline:
            if interactive:
                stream.write("\n")
            raise UserError(f"FineTuneJob {name} is still {status.get('phase')} after {timeout:.0f}s")
        time.sleep(interval)


def cmd_watch(args: argparse.Namespace) -> int:
    job = watch_job(_kube(args), args.name, interval=args.interval)
    status = job.get("status") or {}
    if status.get("phase") == "Failed":
        failed: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {}
        )
        print(f"failed: {failed.get('reason', '')}: {failed.get('message', '')}")
        return 1
    return 0


def _current_pod(kube: Kube, name: str) -> dict[str, Any] | None:
    pods = kube.pods(f"{JOB_LABEL}={name}")
    if not pods:
        return None
    stage_order = {"validate": 0, "train": 1, "finish": 2}
    return max(
        pods,
        key=lambda p: (
            p["metadata"].get("creationTimestamp", ""),
            stage_order.get((p["metadata"].get("labels") or {}).get(STAGE_LABEL, ""), -1),
        ),
    )


def cmd_logs(args: argparse.Namespace) -> int:
    """Follow the job's newest pod (validate, train or finish), moving on when a newer one appears."""
    kube = _kube(args)
    seen: set[str] = set()
    while True:
        pod = _current_pod(kube, args.name)
        if pod is None or pod["metadata"]["name"] in seen:
            job = kube.job(args.name)
            if not args.follow or (job.get("status") or {}).get("phase") in TERMINAL:
                if pod is None:
                    print(f"FineTuneJob {args.name} has no pods yet", file=sys.stderr)
                return 0
            time.sleep(1.0)
            continue
        seen.add(pod["metadata"]["name"])
        stage = (pod["metadata"].get("labels") or {}).get(STAGE_LABEL, "")
        print(f"==> pod {pod['metadata']['name']} ({stage})", file=sys.stderr, flush=True)
        container = (pod.get("spec") or {}).get("containers", [{}])[0].get("name", "trainer")
        for line in kube.log_lines(pod, container, follow=args.follow):
            print(line, flush=True)
        if not args.follow:
            return 0


def cmd_plot(args: argparse.Namespace) -> int:
    kube = _kube(args)
    job = kube.job(args.name)
    series, source = collect_losses(kube, job)
    if not series["train"] and not series["eval"]:
        raise UserError(f"no loss values recorded for {args.name} yet")
    output = Path(args.output or f"{args.name}-loss.png")
    renderer = write_png(output, series, f"{args.name} loss")
    for name, points in series.items():
        if points:
            values = [v for _, v in points]
            print(f"{name:5} {sparkline(values)}  {values[0]:.4g} -> {values[-1]:.4g} ({len(points)} points)")
    print(f"wrote {output} ({renderer}); losses from {source}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    status = _kube(args).job(args.name).get("status") or {}
    checkpoints = status.get("checkpoints") or []
    if not checkpoints:
        print(f"FineTuneJob {args.name} has no complete checkpoints yet")
        return 0
    rows = [["step", "eval loss", "time", "uri"]]
    rows += [[str(c.get("step")), str(c.get("evalLoss", "-")), str(c.get("time", "-")), str(c.get("uri"))]
             for c in checkpoints]  # fmt: skip
    print(table(rows))
    return 0


def _set_suspend(args: argparse.Namespace, value: bool) -> int:
    kube = _kube(args)
    kube.patch_job(args.name, {"spec": {"suspend": value}})
    print(f"FineTuneJob {kube.namespace}/{args.name} {'suspended' if value else 'resumed'}")
    return 0


def _with_connection(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("name", help="the FineTuneJob's name")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    return parser


def _guard(function: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(function(args))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def register(commands: Any) -> None:
    """Add the user commands to `kubetune`'s subparsers."""
    status = _with_connection(
        commands.add_parser("status", help="conditions, progress and evaluation of a job")
    )
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.set_defaults(run=_guard(cmd_status))
    watch = _with_connection(commands.add_parser("watch", help="a progress bar until the job finishes"))
    watch.add_argument("--interval", type=float, default=1.0)
    watch.set_defaults(run=_guard(cmd_watch))
    logs = _with_connection(commands.add_parser("logs", help="the job's current trainer pod's log"))
    logs.add_argument("-f", "--follow", action=argparse.BooleanOptionalAction, default=True)
    logs.set_defaults(run=_guard(cmd_logs))
    plot = _with_connection(commands.add_parser("plot", help="loss curves to a PNG and a terminal sparkline"))
    plot.add_argument("-o", "--output", help="PNG path (default NAME-loss.png)")
    plot.set_defaults(run=_guard(cmd_plot))
    checkpoints = _with_connection(commands.add_parser("checkpoints", help="the job's complete checkpoints"))
    checkpoints.set_defaults(run=_guard(cmd_checkpoints))
    suspend = _with_connection(commands.add_parser("suspend", help="suspend a job (checkpoints, frees GPUs)"))
    suspend.set_defaults(run=_guard(lambda args: _set_suspend(args, True)))
    resume = _with_connection(commands.add_parser("resume", help="resume a suspended job"))
    resume.set_defaults(run=_guard(lambda args: _set_suspend(args, False)))
