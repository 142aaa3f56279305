"""The child watch loop against the API emulator: the server filters by label, an expired resourceVersion
(410 Gone) makes it list again, and what changed while no watch was open still wakes the parent. And the
coalescing of wake-ups into reconciles."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.adapters.kube import Credentials, KubeClient
from kubetune.adapters.watch import ChildWatcher
from kubetune.handlers.children import Wakeups
from kubetune.reconcile.watches import CHILD_WATCHES, Owner

pytestmark = pytest.mark.asyncio
PODS = next(w for w in CHILD_WATCHES if w.kind == "Pod")
OURS = {"app.kubernetes.io/managed-by": "kubetune", PODS.owner_label: "owner"}


@pytest.fixture
def emulator() -> Iterator[Any]:
    from kubetune_sandbox.emulator.server import EmulatorServer

    # A short history, so that a watch resuming after unrelated writes gets 410 Gone, as from etcd compaction.
    with EmulatorServer(history_limit=5) as server:
        yield server


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


async def create(emulator: Any, body: dict[str, Any]) -> None:
    await asyncio.to_thread(emulator.create, "v1/pods", body, "default")


async def next_wake(woken: asyncio.Queue[Owner], timeout: float = 20.0) -> Owner:
    return await asyncio.wait_for(woken.get(), timeout)


def pod_requests(emulator: Any) -> list[dict[str, str]]:
    return [
        dict(r.params) for r in list(emulator.emulator) if r.url.path == "/api/v1/namespaces/default/pods"
    ]


async def test_only_labelled_children_arrive_and_an_expired_version_is_listed_again(emulator: Any) -> None:
    client = KubeClient(Credentials(server=emulator.url))
    woken: asyncio.Queue[Owner] = asyncio.Queue()
    watcher = ChildWatcher(client, PODS, "default", woken.put_nowait, timeout_seconds=1)
    await create(emulator, pod("ours-before", OURS))
    await watcher.list(quiet=True)
    task = asyncio.create_task(watcher.run())
    try:
        for n in range(10):  # not ours: filtered by the server, and they push our version out of the history
            await create(emulator, pod(f"theirs-{n}", {"app": "other"}))
        await create(emulator, pod("ours-after", OURS | {PODS.owner_label: "second"}))
        assert await next_wake(woken) == ("default", "second")
        # The watch ends every second; resuming from a version the history has lost answers 410, and the
        # loop lists again instead of failing, then follows from the new version.
        for n in range(10, 20):
            await create(emulator, pod(f"theirs-{n}", {"app": "other"}))
        for _ in range(100):
            if len([p for p in pod_requests(emulator) if p.get("watch") != "true"]) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(
            emulator.patch, "v1/pods", "default", "ours-before", {"metadata": {"labels": {"touched": "yes"}}}
        )
        assert await next_wake(woken) == ("default", "owner")
        listings = [p for p in pod_requests(emulator) if p.get("watch") != "true"]
        watches = [p for p in pod_requests(emulator) if p.get("watch") == "true"]
        assert all(p["labelSelector"] == PODS.label_selector for p in listings + watches)
        assert len(watches) >= 2 and len(listings) >= 2  # the quiet first listing, and the one after 410
        assert watcher.seen.watch is PODS and len(watcher.seen) == 2  # only ours were ever seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_relist_wakes_the_parent_of_a_child_that_changed_while_no_watch_was_open(
    emulator: Any,
) -> None:
    client = KubeClient(Credentials(server=emulator.url))
    woken: list[Owner] = []
    watcher = ChildWatcher(client, PODS, "default", woken.append)
    try:
        await create(emulator, pod("steady", OURS | {PODS.owner_label: "steady"}))
        await create(emulator, pod("edited", OURS | {PODS.owner_label: "edited"}))
        await watcher.list(quiet=True)
        assert woken == []
        await asyncio.to_thread(
            emulator.patch, "v1/pods", "default", "edited", {"metadata": {"labels": {"touched": "yes"}}}
        )
        await create(emulator, pod("late", OURS | {PODS.owner_label: "late"}))
        await watcher.list()  # what run() does after 410 Gone
        assert sorted(woken) == [("default", "edited"), ("default", "late")]
    finally:
        await client.close()


async def test_a_burst_of_events_for_one_parent_costs_at_most_one_more_reconcile() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def reconcile(namespace: str, name: str) -> None:
        calls.append(name)
        await release.wait()

    tasks: set[asyncio.Task[None]] = set()
    wakeups = Wakeups({"FineTuneJob": reconcile}, tasks)
    wakeups.wake("FineTuneJob", ("default", "busy"))
    wakeups.wake("FineTuneJob", ("default", "other"))
    while len(calls) < 2:
        await asyncio.sleep(0.01)  # both reconciles are running (and read what they read)
    for _ in range(9):
        wakeups.wake("FineTuneJob", ("default", "busy"))
    assert sorted(calls) == ["busy", "other"]  # nine events while one runs wait as one
    release.set()
    while tasks:
        await asyncio.gather(*list(tasks))
    assert sorted(calls) == ["busy", "busy", "other"]


async def test_a_failing_reconcile_does_not_stop_later_wakeups() -> None:
    calls: list[str] = []

    async def reconcile(namespace: str, name: str) -> None:
        calls.append(name)
        raise RuntimeError("the API is down")

    tasks: set[asyncio.Task[None]] = set()
    wakeups = Wakeups({"FineTuneJob": reconcile}, tasks)
    wakeups.wake("FineTuneJob", ("default", "job"))
    while tasks:
        await asyncio.gather(*list(tasks))
    wakeups.wake("FineTuneJob", ("default", "job"))
    while tasks:
        await asyncio.gather(*list(tasks))
    assert calls == ["job", "job"]
