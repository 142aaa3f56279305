"""What both kinds' handlers share: one reconcile at a time per object, the actions applied, the status
written once, errors recorded in status and retried, and the operator's own metrics around it.

Each kind supplies only how to observe and decide (`Decide`) and, optionally, what to record after a
successful reconcile (`Settled`); the policy lives in kubetune.reconcile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kopf

from kubetune.adapters import metrics
from kubetune.adapters.kube import ApiError, KubeClient
from kubetune.api.common import GROUP, VERSION
from kubetune.api.timestamps import utc_now
from kubetune.handlers.runtime import RUNTIME
from kubetune.reconcile.errors import error_status, without_error
from kubetune.reconcile.finetunejob import Create, Delete, Event, Outcome, Patch

logger = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
RETRY_SECONDS = 15
REPORTING_COMPONENT = "kubetune-operator"
MAX_EVENT_MESSAGE = 1024  # what the API server accepts, about

Body = dict[str, Any]
Decide = Callable[[KubeClient, Body], Awaitable[Outcome]]
Settled = Callable[[Body, Outcome], None]


def now() -> str:
    return utc_now()


async def apply(client: KubeClient, namespace: str, outcome: Outcome) -> None:
    for action in outcome.actions:
        if isinstance(action, Create):
            await client.create(action.manifest)
        elif isinstance(action, Patch):
            await client.patch(
                action.api_version,
                action.kind,
                namespace,
                action.name,
                action.patch,
                json_patch=action.json_patch,
            )
        elif isinstance(action, Delete):
            await client.delete(action.api_version, action.kind, namespace, action.name)


async def write_status(client: KubeClient, kind: str, body: Body, status: dict[str, Any]) -> None:
    meta = body["metadata"]
    await client.patch(
        API_VERSION, kind, meta["namespace"], meta["name"], {"status": status}, subresource="status"
    )


def event_manifest(body: Body, event: Event, *, now: str, instance: str) -> dict[str, Any]:
    """A core/v1 Event about `body`, as `kubectl describe` shows them."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": meta["namespace"], "generateName": f"{meta['name']}."},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", API_VERSION),
            "kind": body.get("kind"),
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_EVENT_MESSAGE],
        "source": {"component": REPORTING_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(client: KubeClient, body: Body, event: Event) -> None:
    """Through the operator's own client, not kopf.event(): that needs the context of a Kopf handler, and
    child events (handlers.children) reconcile outside one. An event is worth no retry: log and go on."""
    try:
        await client.create(event_manifest(body, event, now=now(), instance=socket.gethostname()))
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        logger.warning("could not post the %s event on %s: %s", event.reason, body["metadata"]["name"], error)


async def write_outcome(client: KubeClient, kind: str, body: Body, outcome: Outcome) -> Outcome:
    """The whole status in one write (only when it changed), then the events, one line each. Returns the
    outcome as written (without an earlier error condition)."""
    outcome = Outcome(without_error(outcome.status), outcome.actions, outcome.events, outcome.requeue_after)
    if outcome.status != (body.get("status") or {}):
        await write_status(client, kind, body, outcome.status)
    for event in outcome.events:
        await post_event(client, body, event)
        metrics.EVENTS.labels(kind, event.reason).inc()
    return outcome


async def record_error(client: KubeClient, kind: str, body: Body, error: Exception) -> None:
    """Never leave an object without a status: say what went wrong and that it will be retried."""
    with contextlib.suppress(ApiError):  # the retry will try again
        await write_status(client, kind, body, error_status(body, error, now=now()))


class Reconciler:
    """Fetch, decide, act, then write the whole status once: safe to call at any time, any number of times,
    for one kind. Concurrent calls for one object wait for each other."""

    def __init__(self, kind: str, decide: Decide, settled: Settled | None = None) -> None:
        self.kind = kind
        self.decide = decide
        self.settled = settled
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def __call__(self, namespace: str, name: str) -> Outcome | None:
        client = RUNTIME.client()
        async with self._locks[f"{namespace}/{name}"]:
            started = time.perf_counter()
            body = await client.get(API_VERSION, self.kind, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            try:
                outcome = await self.decide(client, body)
                await apply(client, namespace, outcome)
            except Exception as error:
                metrics.RECONCILES.labels(self.kind, "error").inc()
                await record_error(client, self.kind, body, error)
                raise kopf.TemporaryError(f"reconcile failed: {error}", delay=RETRY_SECONDS) from error
            outcome = await write_outcome(client, self.kind, body, outcome)
            if self.settled is not None:
                self.settled(body, outcome)
            metrics.RECONCILES.labels(self.kind, "ok").inc()
            metrics.RECONCILE_SECONDS.labels(self.kind).observe(time.perf_counter() - started)
            return outcome

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: drop its lock."""
        self._locks.pop(f"{namespace}/{name}", None)
