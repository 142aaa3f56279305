"""Child events wake their parent: the Jobs, Pods and Deployments the operator created are LISTed and
WATCHed with server-side label selectors (reconcile.watches.CHILD_WATCHES, adapters.watch), in each watched
namespace or once cluster-wide, instead of Kopf's `on.event(labels=...)`, which watches every such object
the operator can read and filters in memory.

The watches start with the operator (listed before the resume handlers) and are cancelled by
Runtime.close() at shutdown, before the client closes. Events for one parent coalesce: one reconcile runs, at most one more waits behind it."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from kubetune.adapters.kube import KubeClient
from kubetune.adapters.watch import ChildWatcher
from kubetune.handlers.finetunejob import reconcile_job
from kubetune.handlers.modeldeployment import reconcile_serving
from kubetune.handlers.runtime import RUNTIME
from kubetune.handlers.startup import login
from kubetune.reconcile.watches import CHILD_WATCHES, Owner

logger = logging.getLogger(__name__)

Reconcile = Callable[[str, str], Awaitable[object]]
Key = tuple[str, str, str]  # (parent kind, namespace, name)


class Wakeups:
    """Reconciles parents on child events, one at a time per parent; a burst of events while one runs
    (a Job and its pods changing together) costs one more reconcile, not one per event."""

    def __init__(self, reconcilers: Mapping[str, Reconcile], tasks: set[asyncio.Task[None]]) -> None:
        self._reconcilers = reconcilers
        self._tasks = tasks  # where the running ones are kept, so that shutdown cancels them
        self._running: set[Key] = set()
        self._again: set[Key] = set()

    def wake(self, kind: str, owner: Owner) -> None:
        key = (kind, *owner)
        if key in self._running:
            self._again.add(key)
            return
        self._running.add(key)
        task = asyncio.create_task(self._run(key), name=f"reconcile {kind} {owner[0]}/{owner[1]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Key) -> None:
        kind, namespace, name = key
        try:
            while True:
                self._again.discard(key)
                try:
                    await self._reconcilers[kind](namespace, name)
                except kopf.TemporaryError as error:
                    # Already recorded in the object's status; its resync timer retries.
                    logger.warning(
                        "reconcile of %s %s/%s on a child event failed: %s", kind, namespace, name, error
                    )
                except Exception:
                    logger.exception("reconcile of %s %s/%s on a child event failed", kind, namespace, name)
                if key not in self._again:
                    return
        finally:
            self._running.discard(key)
            self._again.discard(key)


WAKEUPS = Wakeups({"FineTuneJob": reconcile_job, "ModelDeployment": reconcile_serving}, RUNTIME.background)


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "a child watch stopped: its events now wait for the resync timer", exc_info=task.exception()
        )


def child_watchers(client: KubeClient, namespaces: tuple[str, ...], wakeups: Wakeups) -> list[ChildWatcher]:
    """Every child kind in every watched namespace, or each once cluster-wide when none is configured."""
    scopes: tuple[str | None, ...] = namespaces or (None,)
    return [
        ChildWatcher(client, watch, namespace, functools.partial(wakeups.wake, watch.owner_kind))
        for watch in CHILD_WATCHES
        for namespace in scopes
    ]


@kopf.on.startup()
async def start_child_watches(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """Lists every child kind before Kopf's resume handlers run (start-up precedes them), so that a child
    changing in between arrives as a watch event, not never. Kopf logs in only after start-up, so this logs
    in itself, the same way."""
    if RUNTIME.credentials is None:
        login(settings=settings, **kwargs)
    watchers = child_watchers(RUNTIME.client(), RUNTIME.config.namespaces, WAKEUPS)
    listed = await asyncio.gather(*(w.list(quiet=True) for w in watchers), return_exceptions=True)
    for watcher, result in zip(watchers, listed, strict=True):
        if isinstance(result, Exception):  # run() lists again, waking every parent: resume may have passed
            logger.warning("could not list %s in %s yet: %s", watcher.watch.kind, watcher.where, result)
        task = asyncio.create_task(
            watcher.run(),
            name=f"watch {watcher.watch.kind} for {watcher.watch.owner_kind} in {watcher.where}",
        )
        task.add_done_callback(_log_death)
        RUNTIME.background.add(task)
