"""Kopf handlers: `kopf run -m kubetune.handlers` (what `kubetune operator` does)."""

from kubetune.handlers import finetunejob, modeldeployment, startup

__all__ = ["finetunejob", "modeldeployment", "startup"]
