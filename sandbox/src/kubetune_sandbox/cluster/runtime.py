"""The whole sandbox in one object: API emulator, S3, the Secret, the controllers, the kubelet, the operator.

    with Sandbox(Path("/tmp/kt")) as sandbox:   # writes /tmp/kt/kubeconfig and /tmp/kt/sandbox.json
        ...

Everything started is stopped by `stop()` (also on a failed start): the operator subprocess and every pod's
processes run in their own process groups, which get SIGTERM and then SIGKILL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kubetune_sandbox.cluster import chart, seed
from kubetune_sandbox.cluster.api import SECRETS, log
from kubetune_sandbox.cluster.controllers import DeploymentController, JobController
from kubetune_sandbox.cluster.images import ImageMap
from kubetune_sandbox.cluster.kubelet import Kubelet, die_with_parent
from kubetune_sandbox.cluster.seed import SandboxError
from kubetune_sandbox.cluster.services import ServiceProxy

SECRET_NAME = "sandbox-s3"
OPERATOR_START_SECONDS = 60.0


@dataclass
class SandboxOptions:
    api_port: int = 0
    s3_port: int = 0
    pretrain_steps: int = seed.DEFAULT_PRETRAIN_STEPS
    dataset_rows: int = seed.DEFAULT_DATASET_ROWS
    namespaces: tuple[str, ...] = ("default",)
    operator: bool = True
    operator_env: dict[str, str] = field(default_factory=dict)
    images: ImageMap | None = None
    seed_model: bool = True  # tests of the controllers alone skip the model build
    grace_seconds: float = 30.0
    # The operator authenticates as the chart's ServiceAccount and gets what the chart's RBAC grants
    # (rendered with these values); False: no authorization at all, the operator is the administrator.
    authorize_operator: bool = True
    chart_values: dict[str, Any] = field(default_factory=dict)


class Sandbox:
    def __init__(
        self, directory: Path, options: SandboxOptions | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.dir = Path(directory).resolve()
        self.options = options or SandboxOptions()
        self.say = say
        self.images = self.options.images or ImageMap.from_env()
        self.s3: seed.S3 | None = None
        self.server: Any = None
        self.kubelet: Kubelet | None = None
        self.jobs: JobController | None = None
        self.deployments: DeploymentController | None = None
        self.proxy: ServiceProxy | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        """The operator's: the chart's ServiceAccount token (the user's kubeconfig is the administrator's)."""
        return self.dir / "operator-kubeconfig" if self.options.authorize_operator else self.kubeconfig

    @property
    def info_file(self) -> Path:
        return self.dir / "sandbox.json"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        options = self.options
        self.dir.mkdir(parents=True, exist_ok=True)
        if options.api_port and not seed.port_free("127.0.0.1", options.api_port):
            raise SandboxError(
                f"port {options.api_port} on 127.0.0.1 is in use; pick another with --api-port"
            )
        try:
            from kubetune.api.crd import all_crds
            from kubetune_sandbox.emulator.server import EmulatorServer
        except ImportError as error:
            raise SandboxError(
                f"the API emulator needs {error.name}; install the sandbox extras: pip install -e '.[sandbox]'"
            ) from error

        self.s3 = seed.S3(port=options.s3_port).start()
        if options.seed_model:
            model = seed.tiny_model(options.pretrain_steps, say=self.say)
            self.s3.seed(model, seed.demo_dataset(options.dataset_rows))
        else:
            self.s3.client().create_bucket(Bucket=seed.BUCKET)

        namespaces = tuple(
            dict.fromkeys((*options.namespaces, *options.chart_values.get("watchNamespaces", ())))
        )
        rbac = chart.operator_rbac(chart.render(options.chart_values)) if options.authorize_operator else []
        self.server = EmulatorServer(
            crds=all_crds(),
            port=options.api_port,
            namespaces=(*namespaces, chart.OPERATOR_NAMESPACE) if rbac else namespaces,
            authorization=bool(rbac),
        )
        self.server.start()
        self.server.kubeconfig(self.kubeconfig)
        if rbac:
            chart.operator_kubeconfig(self.server, self.operator_kubeconfig, rbac)
        self.create_storage_secret(options.namespaces)

        self.kubelet = Kubelet(
            self.server, self.dir / "kubelet", self.images, default_grace_seconds=options.grace_seconds
        )
        self.server.set_pod_log_source(self.kubelet.log_file)  # `kubectl logs` reads the pods' files
        self.jobs = JobController(self.server)
        self.deployments = DeploymentController(self.server)
        self.proxy = ServiceProxy(self.server)
        for component in (self.kubelet, self.jobs, self.deployments, self.proxy):
            component.start()
        if options.operator:
            self._start_operator()
        self.info = {
            "apiServer": self.server.url,
            "kubeconfig": str(self.kubeconfig),
            "operatorKubeconfig": str(self.operator_kubeconfig),
            "s3": {
                "endpoint": self.s3.endpoint,
                "accessKeyId": seed.ACCESS_KEY_ID,
                "secretAccessKey": seed.SECRET_ACCESS_KEY,
                "region": seed.REGION,
            },
            "bucket": seed.BUCKET,
            "baseModelUri": seed.BASE_MODEL_URI,
            "datasetUri": seed.DATASET_URI,
            "storageSecretName": SECRET_NAME,
            "trainerImage": self.images.trainer_image,
            "servingRuntime": self.images.serving_runtime,
            "operatorLog": str(self.dir / "operator.log"),
            "podsDir": str(self.dir / "kubelet" / "pods"),
        }
        self.info_file.write_text(json.dumps(self.info, indent=2) + "\n")

    def create_storage_secret(self, namespaces: tuple[str, ...]) -> None:
        assert self.s3 is not None and self.server is not None
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.s3.environment().items()}
        for namespace in namespaces:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET_NAME, "namespace": namespace},
                "type": "Opaque",
                "data": data,
            }
            self.server.create(SECRETS, body, namespace)

    def _start_operator(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.operator_kubeconfig),
            "KUBETUNE_METRICS_PORT": str(seed.free_port()),
            "KUBETUNE_TRAINER_IMAGE": self.images.trainer_image,
            "KUBETUNE_VLLM_IMAGE": self.images.vllm_image,
            "KUBETUNE_TGI_IMAGE": self.images.tgi_image,
            "KUBETUNE_RESYNC_SECONDS": "3",  # a laptop's patience, not a cluster's
            # As the chart's Deployment sets it: the Roles above exist only in these namespaces.
            "KUBETUNE_WATCH_NAMESPACES": ",".join(self.options.chart_values.get("watchNamespaces", ())),
            **self.options.operator_env,
        }
        log_file = (self.dir / "operator.log").open("ab")
        command = [
            sys.executable,
            "-m",
            "kubetune.cli.main",
            "operator",
            "--health-port",
            "0",
            "--no-json-logs",
        ]
        self.operator = subprocess.Popen(
            command,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call, no imports or locks
        )
        log_file.close()
        deadline = time.monotonic() + OPERATOR_START_SECONDS
        while time.monotonic() < deadline:
            if self.operator.poll() is not None:
                tail = (self.dir / "operator.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise SandboxError(
                    f"the operator exited at start ({' '.join(tail)}); see {self.dir / 'operator.log'}"
                )
            text = (self.dir / "operator.log").read_text(errors="replace")
            if "Initial authentication has finished" in text:  # Kopf is logged in; its watches follow
                return
            time.sleep(0.2)

    def stop(self) -> None:
        if self.operator is not None:
            _stop_group(self.operator, 10.0)
            self.operator = None
        for component in (self.jobs, self.deployments, self.proxy):
            if component is not None:
                with contextlib.suppress(Exception):
                    component.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
            self.server = None
        if self.s3 is not None:
            with contextlib.suppress(Exception):
                self.s3.stop()
            self.s3 = None
        self.jobs = self.deployments = self.proxy = None


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("the operator did not stop within %.0fs; killing it", grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
