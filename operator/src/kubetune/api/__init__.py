"""The typed API of kubetune.dev/v1alpha1: the single source of truth for CRDs, operator and trainer."""

from kubetune.api.common import API_VERSION, CATEGORY, GROUP, VERSION
from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "GROUP",
    "VERSION",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
