"""Every Kopf setting in one place, the login, the liveness probe and the metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from kubetune.adapters.kube import Credentials
from kubetune.adapters.metrics import REGISTRY
from kubetune.handlers.runtime import RUNTIME

DOMAIN = "kubetune.dev"


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    # Kopf's bookkeeping lives under our own domain, not kopf.zalando.org.
    settings.persistence.finalizer = f"{DOMAIN}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=DOMAIN, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60)
    if RUNTIME.config.metrics_port:
        start_http_server(RUNTIME.config.metrics_port, registry=REGISTRY)
        logger.info("metrics on :%d/metrics", RUNTIME.config.metrics_port)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    await RUNTIME.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig. The operator's client reuses the result."""
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        RUNTIME.credentials = Credentials.from_kopf(info)
    return info


@kopf.on.probe(id="reconciler")
def alive(**_: Any) -> str:
    return "ok" if RUNTIME.credentials is not None else "waiting for login"
