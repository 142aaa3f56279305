"""Child events wake their parent: the Jobs, Pods and Deployments the operator created are LISTed and
WATCHed with server-side label selectors (reconcile.watches.CHILD_WATCHES, adapters.watch), in each watched
namespace or once cluster-wide, instead of Kopf's `on.event(labels=...)`, which watches every such object
the operator can read and filters in memory.

The watches start with the operator and are cancelled by Runtime.close() at shutdown, before the client
closes. Events for one parent coalesce: one reconcile runs, at most one more waits behind it."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from kubetune.adapters.watch import watch_children
from kubetune.handlers.finetunejob import reconcile_job
from kubetune.handlers.modeldeployment import reconcile_serving
from kubetune.handlers.runtime import RUNTIME
from kubetune.reconcile.watches import CHILD_WATCHES, Owner

logger = logging.getLogger(__name__)

Reconcile = Callable[[str, str], Awaitable[object]]
Key = tuple[str, str, str]  # (parent kind, namespace, name)
LOGIN_POLL_SECONDS = 0.1


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
            "the child watches stopped: child events now wait for the resync timer", exc_info=task.exception()
        )


async def run_child_watches(wakeups: Wakeups = WAKEUPS) -> None:
    # Start-up handlers run before Kopf's login, and the watches need its credentials.
    while RUNTIME.credentials is None:
        await asyncio.sleep(LOGIN_POLL_SECONDS)
    client = RUNTIME.client()
    namespaces: tuple[str | None, ...] = RUNTIME.config.namespaces or (None,)
    async with asyncio.TaskGroup() as group:
        for watch in CHILD_WATCHES:
            for namespace in namespaces:
                wake = functools.partial(wakeups.wake, watch.owner_kind)
                group.create_task(
                    watch_children(client, watch, namespace, wake),
                    name=f"watch {watch.kind} for {watch.owner_kind} in {namespace or 'all namespaces'}",
                )


@kopf.on.startup()
async def start_child_watches(**_: Any) -> None:
    task = asyncio.create_task(run_child_watches(), name="kubetune child watches")
    task.add_done_callback(_log_death)
    RUNTIME.background.add(task)
