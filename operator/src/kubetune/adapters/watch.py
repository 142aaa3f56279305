"""LIST then WATCH one child kind in one namespace (or the cluster) with a server-side label selector.

Kopf's `on.event(..., labels=...)` lists and watches every Pod, Job and Deployment it can see and filters in
the operator; this loop asks the API server for the operator's children only. Like an informer, it resumes
each watch from the last resourceVersion (bookmarks keep it fresh), relists on 410 Gone and backs off on
errors; unlike one, it keeps no objects, only uid -> resourceVersion to tell what a relist changed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aiohttp

from kubetune.adapters.kube import ApiError, KubeClient
from kubetune.reconcile.watches import ChildWatch, Owner, SeenChildren

logger = logging.getLogger(__name__)

WATCH_TIMEOUT_SECONDS = 300  # the server ends each watch after this long (Kopf's server_timeout too)
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
EXPIRED = 410


class ExpiredVersionError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def backoff_seconds(failures: int) -> float:
    """The wait after `failures` failures in a row, with jitter so that many watches do not retry in step."""
    base = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1]
    return base * random.uniform(0.8, 1.2)


async def watch_children(
    client: KubeClient,
    watch: ChildWatch,
    namespace: str | None,
    wake: Callable[[Owner], None],
    *,
    timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
) -> None:
    """Runs until cancelled, calling `wake(owner)` for every child event naming a parent.

    The first listing wakes nobody (resume handlers reconcile every parent at start-up); a later relist
    wakes the parents whose children changed while no watch was open."""
    where = namespace or "all namespaces"
    seen = SeenChildren(watch)
    version: str | None = None
    listed_once = False
    failures = 0
    while True:
        events = 0
        listed_now = version is None
        try:
            if version is None:
                items, version = await client.list_with_version(
                    watch.api_version, watch.kind, namespace, label_selector=watch.label_selector
                )
                changed = seen.relist(items)
                if listed_once:
                    for parent in sorted(changed):
                        wake(parent)
                listed_once = True
            opened = time.monotonic()
            async for event in client.watch(
                watch.api_version,
                watch.kind,
                namespace,
                resource_version=version,
                label_selector=watch.label_selector,
                timeout_seconds=timeout_seconds,
            ):
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == EXPIRED:
                        raise ExpiredVersionError(obj.get("message", "resource version expired"))
                    raise ApiError(int(obj.get("code") or 500), obj)
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                events += 1
                if type_ == "BOOKMARK":
                    continue
                owner = seen.event(str(type_), obj)
                if owner is not None:
                    wake(owner)
            # The server's timeout ended it; one that ends at once with nothing is a failure in disguise.
            if events or time.monotonic() - opened >= 1.0:
                failures = 0
                continue
            raise ApiError(500, "the watch ended at once without events")
        except asyncio.CancelledError:
            raise
        except (ExpiredVersionError, ApiError) as error:
            if isinstance(error, ExpiredVersionError) or error.status == EXPIRED:
                logger.info("%s watch in %s expired (%s): listing again", watch.kind, where, error)
                version = None
                if events or not listed_now:
                    continue
                # Expired at once after a fresh listing: something is wrong; back off like any failure.
            failures += 1
            delay = backoff_seconds(failures)
            logger.warning("%s watch in %s failed (%s): retrying in %.1fs", watch.kind, where, error, delay)
            await asyncio.sleep(delay)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # ValueError: a line that is not JSON (a proxy's answer); the next attempt starts clean.
            failures += 1
            delay = backoff_seconds(failures)
            logger.warning("%s watch in %s failed (%r): retrying in %.1fs", watch.kind, where, error, delay)
            await asyncio.sleep(delay)
