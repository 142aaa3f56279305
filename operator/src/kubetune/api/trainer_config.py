"""TrainerConfig: what the operator tells the trainer image (what the trainer answers is in trainer_contract).

The operator renders it into a ConfigMap from the trainer's part of the FineTuneJob spec (`TrainerSpec`), whose
model fills every default (the CRD's, and those that depend on spec.method); the trainer reads the same
typed model back. Results flow the
other way only through Kubernetes objects (the pod's termination message, the job's status) and the
trainer's metrics endpoint.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.common import ApiModel, ResourceIdentity
from kubetune.api.finetunejob import TrainerSpec
from kubetune.api.trainer_contract import DEFAULT_METRICS_PORT, MAX_METRICS_PORT, MIN_METRICS_PORT

CONFIG_FILE_NAME = "trainer-config.json"
# The trainer image's virtualenv, which holds kubetune_trainer (trainer-image/Dockerfile creates it there;
# tests/chart/test_images.py checks the two agree). Multi-process pods start its interpreter by absolute
# path, so torch.distributed's workers import kubetune_trainer whatever the base image's PATH holds.
TRAINER_VENV = "/opt/kubetune"
TRAINER_PYTHON = f"{TRAINER_VENV}/bin/python"
Stage = Literal["validate", "train", "evaluate", "export", "all", "bench"]


class ArtifactLayout(ApiModel):
    """Where each stage reads and writes, all under the job's output prefix."""

    root: str

    @staticmethod
    def _join(root: str, *parts: str) -> str:
        return root.rstrip("/") + "/" + "/".join(parts)

    @property
    def validation_report(self) -> str:
        return self._join(self.root, "validation", "report.json")

    @property
    def prepared_data(self) -> str:
        return self._join(self.root, "validation", "data") + "/"

    @property
    def checkpoints(self) -> str:
        return self._join(self.root, "checkpoints") + "/"

    @property
    def adapter(self) -> str:
        return self._join(self.root, "adapter") + "/"

    @property
    def merged(self) -> str:
        return self._join(self.root, "merged") + "/"

    @property
    def exports(self) -> str:
        return self._join(self.root, "exports") + "/"

    @property
    def evaluation_report(self) -> str:
        return self._join(self.root, "evaluation", "metrics.json")

    @property
    def manifest(self) -> str:
        return self._join(self.root, "manifest.json")


class TrainerConfig(ApiModel):
    job: ResourceIdentity  # names checkpoint writers and work directories; recorded in the manifest
    spec: TrainerSpec = Field(description="What the trainer runs of the job's spec, every default filled")
    # Where the trainer serves /metrics: the operator renders its KUBETUNE_TRAINER_METRICS_PORT here.
    metrics_port: Annotated[int, Field(ge=MIN_METRICS_PORT, le=MAX_METRICS_PORT)] = DEFAULT_METRICS_PORT
    progress_interval_seconds: Annotated[int, Field(ge=1, le=300)] = 15

    @property
    def artifacts(self) -> ArtifactLayout:
        return ArtifactLayout(root=self.spec.output.uri)
