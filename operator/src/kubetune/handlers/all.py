"""Registers every handler with Kopf: `kopf run -m kubetune.handlers.all` (what `kubetune operator` does)."""

from kubetune.handlers import children, finetunejob, modeldeployment, startup

__all__ = ["children", "finetunejob", "modeldeployment", "startup"]
