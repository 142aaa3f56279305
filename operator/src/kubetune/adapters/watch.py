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


class ChildWatcher:
    """One child kind in one namespace (None: the cluster), calling `wake(owner)` for each event that names a
    parent. `list()` once before the parents' resume handlers, quietly, then `run()` until cancelled."""

    def __init__(
        self,
        client: KubeClient,
        watch: ChildWatch,
        namespace: str | None,
        wake: Callable[[Owner], None],
        *,
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        self.watch = watch
        self.namespace = namespace
        self.wake = wake
        self.timeout_seconds = timeout_seconds
        self.where = namespace or "all namespaces"
        self.seen = SeenChildren(watch)
        self.version: str | None = None

    async def list(self, *, quiet: bool = False) -> None:
        """List and remember; wake the parents of children that differ from what was seen (on the first
        listing: all), unless `quiet`: a listing before the resume handlers, which reconcile every parent."""
        items, version = await self.client.list_with_version(
            self.watch.api_version, self.watch.kind, self.namespace, label_selector=self.watch.label_selector
        )
        changed = self.seen.relist(items)
        self.version = version
        if not quiet:
            for parent in sorted(changed):
                self.wake(parent)

    async def _follow(self) -> int:
        """One watch request from self.version; the number of events it delivered."""
        assert self.version is not None
        events = 0
        async for event in self.client.watch(
            self.watch.api_version,
            self.watch.kind,
            self.namespace,
            resource_version=self.version,
            label_selector=self.watch.label_selector,
            timeout_seconds=self.timeout_seconds,
        ):
            type_, obj = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if obj.get("code") == EXPIRED:
                    raise ExpiredVersionError(obj.get("message", "resource version expired"))
                raise ApiError(int(obj.get("code") or 500), obj)
            self.version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
            events += 1
            if type_ == "BOOKMARK":
                continue
            owner = self.seen.event(str(type_), obj)
            if owner is not None:
                self.wake(owner)
        return events

    async def run(self) -> None:
        kind, where = self.watch.kind, self.where
        failures = 0
        while True:
            events = 0
            listed_now = self.version is None
            try:
                if self.version is None:
                    await self.list()
                opened = time.monotonic()
                events = await self._follow()
                # The server's timeout ended it; one that ends at once with nothing is a failure in disguise.
                if events or time.monotonic() - opened >= 1.0:
                    failures = 0
                    continue
                raise ApiError(500, "the watch ended at once without events")
            except asyncio.CancelledError:
                raise
            # ValueError: a line that is not JSON (a proxy's answer); the next attempt starts clean.
            except (ExpiredVersionError, ApiError, aiohttp.ClientError, TimeoutError, ValueError) as error:
                expired = isinstance(error, ExpiredVersionError) or (
                    isinstance(error, ApiError) and error.status == EXPIRED
                )
                if expired:
                    logger.info("%s watch in %s expired (%s): listing again", kind, where, error)
                    self.version = None
                    if events or not listed_now:
                        continue
                    # Expired at once after a fresh listing: something is wrong; back off like any failure.
                failures += 1
                delay = backoff_seconds(failures)
                logger.warning("%s watch in %s failed (%r): retrying in %.1fs", kind, where, error, delay)
                await asyncio.sleep(delay)
