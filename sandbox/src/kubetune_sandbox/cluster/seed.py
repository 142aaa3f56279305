"""The sandbox's S3 (moto's server on loopback) and what it is seeded with: the tiny pretrained model
(built once, cached) and the demo instruction dataset.

Fixed, documented names, so that examples/quickstart/ can be plain YAML:
  bucket      kubetune-sandbox                                   (users may write anywhere in it)
  base model  s3://kubetune-sandbox/models/tiny-llama/
  dataset     s3://kubetune-sandbox/datasets/demo-instructions.jsonl
The model cache lives in $KUBETUNE_CACHE or ~/.cache/kubetune; each build is checked by a manifest of
sha256 sums written last, so an interrupted build or a corrupted file is rebuilt, not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUCKET = "kubetune-sandbox"
MODEL_PREFIX = "models/tiny-llama/"
DATASET_KEY = "datasets/demo-instructions.jsonl"
BASE_MODEL_URI = f"s3://{BUCKET}/{MODEL_PREFIX}"
DATASET_URI = f"s3://{BUCKET}/{DATASET_KEY}"
ACCESS_KEY_ID = "sandbox"
SECRET_ACCESS_KEY = "sandbox-secret"  # moto accepts any credentials; these only need to be consistent
REGION = "us-east-1"
MANIFEST = "kubetune-cache.json"
CACHE_VERSION = 1
DEFAULT_PRETRAIN_STEPS = 150
DEFAULT_DATASET_ROWS = 600


class SandboxError(RuntimeError):
    """A problem the user can fix; the message is one line saying what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------------------ model cache


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def cache_intact(model_dir: Path) -> bool:
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files") or {}
    present = {str(p.relative_to(model_dir)): p for p in _files(model_dir)}
    if set(files) != set(present) or not files:
        return False
    return all(_sha256(present[name]) == digest for name, digest in files.items())


def tiny_model(
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    *,
    root: Path | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """The cached tiny pretrained model (built on first use; rebuilt if the cache is corrupted)."""
    root = root or cache_root()
    model_dir = root / f"tiny-llama-v{CACHE_VERSION}-steps{pretrain_steps}"
    if model_dir.exists():
        if cache_intact(model_dir):
            return model_dir
        say(f"the model cache at {model_dir} is corrupted or incomplete; rebuilding it")
        shutil.rmtree(model_dir, ignore_errors=True)
    try:
        from kubetune_trainer.tiny import build_tiny_model, demo_corpus
    except ImportError as error:
        raise SandboxError(
            f"the trainer's libraries are missing ({error.name}); install them: pip install -e '.[trainer]'"
        ) from error
    say(f"building the tiny pretrained model once ({pretrain_steps} steps; cached in {root})...")
    building = model_dir.with_name(model_dir.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    build_tiny_model(building, corpus=demo_corpus(2000), pretrain_steps=pretrain_steps)
    manifest = {
        "version": CACHE_VERSION,
        "files": {str(p.relative_to(building)): _sha256(p) for p in _files(building)},
    }
    (building / MANIFEST).write_text(json.dumps(manifest, indent=1))
    building.rename(model_dir)
    return model_dir


def demo_dataset(rows: int = DEFAULT_DATASET_ROWS, seed: int = 0) -> bytes:
    from kubetune_trainer.tiny import demo_instruction_rows

    return "".join(json.dumps(row) + "\n" for row in demo_instruction_rows(rows, seed)).encode()


# ---------------------------------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Request:
    """One request the sandbox's S3 answered, as its access log would show it."""

    method: str
    path: str  # /BUCKET/KEY, unquoted
    query: str
    user_agent: str  # the trainer's carries `app/kubetune-STAGE` (storage.STAGE_ENV)

    @property
    def stage(self) -> str | None:
        """The trainer stage that sent it (validate, train, evaluate, export, fetch), if any."""
        for part in self.user_agent.split():
            if part.startswith("app/kubetune-"):
                return part[len("app/kubetune-") :]
        return None

    def is_object_get(self, uri_prefix: str) -> bool:
        """A GET of an object (not a listing) under `uri_prefix`, e.g. s3://kubetune-sandbox/models/tiny-llama/."""
        under = "/" + uri_prefix.removeprefix("s3://")
        return self.method == "GET" and self.path.startswith(under) and "list-type" not in self.query


class _RequestLog:
    """WSGI middleware in front of moto: every request is appended to `requests` before moto answers it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[S3Request] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = S3Request(
            method=str(environ.get("REQUEST_METHOD", "")),
            path=urllib.parse.unquote(str(environ.get("PATH_INFO", ""))),
            query=str(environ.get("QUERY_STRING", "")),
            user_agent=str(environ.get("HTTP_USER_AGENT", "")),
        )
        with self._lock:
            self.requests.append(request)
        return self.app(environ, start_response)

    def snapshot(self) -> list[S3Request]:
        with self._lock:
            return list(self.requests)


@dataclass
class S3:
    """moto's S3 server over real HTTP on loopback, keeping a log of the requests it answered (`requests()`)."""

    host: str = "127.0.0.1"
    port: int = 0
    server: Any = None
    log: Any = None
    thread: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3:
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError as error:
            raise SandboxError(
                "moto's S3 server is missing; install the sandbox extras: pip install -e '.[sandbox]'"
            ) from error
        if self.port and not port_free(self.host, self.port):
            raise SandboxError(f"port {self.port} on {self.host} is in use; pick another with --s3-port")
        # What moto's ThreadedMotoServer runs, with the request log in front of it.
        self.log = _RequestLog(DomainDispatcherApplication(create_backend_app))
        self.server = make_server(
            self.host, self.port, self.log, threaded=True, request_handler=MotoRequestHandler
        )
        self.host, self.port = str(self.server.server_address[0]), int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="sandbox-s3", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)
            self.server = self.thread = None

    def requests(self) -> list[S3Request]:
        """Every request answered so far, oldest first."""
        return self.log.snapshot() if self.log is not None else []

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 2}),
        )

    def environment(self) -> dict[str, str]:
        """What the Secret `sandbox-s3` holds: the standard AWS variables boto3 and the trainer read."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
        }

    def seed(self, model_dir: Path, dataset: bytes) -> None:
        client = self.client()
        client.create_bucket(Bucket=BUCKET)
        for path in _files(model_dir):
            client.upload_file(str(path), BUCKET, MODEL_PREFIX + str(path.relative_to(model_dir)))
        client.put_object(Bucket=BUCKET, Key=DATASET_KEY, Body=dataset)


def _main() -> None:  # `python -m kubetune_sandbox.cluster.seed`: build the cache ahead of time (CI warm-up)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PRETRAIN_STEPS
    print(tiny_model(steps))


if __name__ == "__main__":
    _main()
