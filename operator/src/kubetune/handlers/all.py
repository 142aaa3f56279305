"""Registers every handler with Kopf: `kopf run -m kubetune.handlers.all` (what `kubetune operator` does)."""

from kubetune.handlers import finetunejob, modeldeployment, startup

__all__ = ["finetunejob", "modeldeployment", "startup"]
