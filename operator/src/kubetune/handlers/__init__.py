"""Kopf handlers: `kopf run -m kubetune.handlers` (what `kubetune operator` does)."""

from kubetune.handlers import finetunejob, startup

__all__ = ["finetunejob", "startup"]
