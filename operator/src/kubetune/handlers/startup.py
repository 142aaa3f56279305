"""Every Kopf setting in one place, the login, the liveness probe and the metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune.adapters.kube import SERVICE_ACCOUNT_TOKEN_PATH, Credentials
from kubetune.adapters.metrics import serve_metrics
from kubetune.handlers.runtime import RUNTIME

DOMAIN = "kubetune.dev"
# 401s in a row (each after re-reading the token) that mean the credential is dead, not rotating: at the
# default resync every object's reconcile and every watch retry adds one, so a minute or two at most.
UNAUTHORIZED_LIMIT = 5


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
    if RUNTIME.config.namespaces:
        # Named namespaces (settings refuse globs): Kopf would otherwise list and watch every namespace
        # of the cluster to match patterns, which the chart's watchNamespaces RBAC does not grant.
        settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.queueing.error_delays = (1, 2, 5, 10, 30, 60)
    if RUNTIME.config.metrics_port and serve_metrics(RUNTIME.config.metrics_port):
        logger.info("metrics on :%d/metrics", RUNTIME.config.metrics_port)


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    await RUNTIME.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return discover_credentials(**kwargs)


def discover_credentials(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig. The operator's client reuses the result
    (and leader election, which logs in this way before Kopf runs)."""
    info = kopf.login_with_service_account(**kwargs)
    token_path = SERVICE_ACCOUNT_TOKEN_PATH if info is not None else None  # projected: the kubelet rotates it
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        RUNTIME.credentials = Credentials.from_kopf(info, token_path=token_path)
    return info


@kopf.on.probe(id="reconciler")
def alive(**_: Any) -> str:
    """Fails (HTTP 500 on /healthz) once the API keeps refusing the credential, so the kubelet restarts the
    pod and it logs in afresh, instead of a green probe over an operator that can do nothing."""
    streak = RUNTIME.unauthorized_streak()
    if streak >= UNAUTHORIZED_LIMIT:
        raise kopf.PermanentError(
            f"the Kubernetes API refused the operator's credentials {streak} times in a row (401 Unauthorized)"
        )
    return "ok" if RUNTIME.credentials is not None else "waiting for login"
