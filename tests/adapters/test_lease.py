"""The Lease elector (adapters/lease.py) against the API emulator: first come leads, a claim from a stale
read loses on the 409, a leader that cannot renew or whose Lease was taken gives up, a release frees it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.adapters.kube import Credentials, KubeClient
from kubetune.adapters.lease import LeadershipLostError, LeaseElector
from kubetune.reconcile.leader import LeaseTiming

pytestmark = pytest.mark.asyncio

FAST = LeaseTiming(duration_seconds=4, renew_deadline_seconds=3, retry_period_seconds=1)


class Clock:
    """A monotonic clock the test moves, for expiry without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    from kubetune_sandbox.emulator.server import EmulatorServer

    with EmulatorServer() as server:
        yield server.url


def _elector(
    url: str, identity: str, lease: str, clock: Clock | None = None, client: KubeClient | None = None
):
    return LeaseElector(
        client or KubeClient(Credentials(server=url)),
        name=lease,
        namespace="default",
        identity=identity,
        timing=FAST,
        clock=clock or time.monotonic,
    )


async def _spec(elector: LeaseElector) -> dict[str, Any]:
    lease = await elector.client.get("coordination.k8s.io/v1", "Lease", "default", elector.name)
    assert lease is not None
    return dict(lease["spec"])


async def test_the_first_candidate_creates_and_holds_the_lease_and_the_second_waits(
    emulator_url: str,
) -> None:
    clock = Clock()
    first, second = _elector(emulator_url, "a", "first", clock), _elector(emulator_url, "b", "first", clock)
    try:
        assert await first.try_acquire_or_renew()
        assert not await second.try_acquire_or_renew()
        clock.now += FAST.duration_seconds - 0.5  # live: a renewal inside the lease keeps it
        assert await first.try_acquire_or_renew()
        clock.now += 1.0
        assert not await second.try_acquire_or_renew()  # the renewal restarted the second's expiry clock
        spec = await _spec(first)
        assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0
    finally:
        await first.client.close()
        await second.client.close()


async def test_a_silent_leader_is_replaced_after_a_lease_of_unchanged_reads(emulator_url: str) -> None:
    clock = Clock()
    gone, standby = (
        _elector(emulator_url, "gone", "expiry", clock),
        _elector(emulator_url, "b", "expiry", clock),
    )
    try:
        assert await gone.try_acquire_or_renew()
        assert not await standby.try_acquire_or_renew()  # starts its clock on this record
        clock.now += FAST.duration_seconds - 0.1
        assert not await standby.try_acquire_or_renew()
        clock.now += 0.1
        assert await standby.try_acquire_or_renew()
        spec = await _spec(standby)
        assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    finally:
        await gone.client.close()
        await standby.client.close()


class HeldPatches(KubeClient):
    """Sends each PATCH only once the test lets it go: two candidates' claims from one read, interleaved."""

    def __init__(self, url: str) -> None:
        super().__init__(Credentials(server=url))
        self.go = asyncio.Event()

    async def patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        await self.go.wait()
        return await super().patch(*args, **kwargs)


async def test_of_two_claims_from_the_same_read_only_one_wins_the_other_gets_409(emulator_url: str) -> None:
    clock = Clock()
    owner = _elector(emulator_url, "owner", "race", clock)
    clients = [HeldPatches(emulator_url), HeldPatches(emulator_url)]
    racers = [_elector(emulator_url, f"r{i}", "race", clock, client) for i, client in enumerate(clients)]
    try:
        assert await owner.try_acquire_or_renew()
        for client, racer in zip(clients, racers, strict=True):  # both see the owner's record...
            client.go.set()
            assert not await racer.try_acquire_or_renew()
            client.go.clear()
        clock.now += FAST.duration_seconds  # ...unchanged for a lease: both decide to take it
        attempts = [asyncio.create_task(racer.try_acquire_or_renew()) for racer in racers]
        await asyncio.sleep(0.3)  # both have read the same resourceVersion and wait to patch
        clients[0].go.set()
        assert await attempts[0]
        clients[1].go.set()
        assert not await attempts[1]  # 409: its claim was based on a stale read
        assert (await _spec(owner))["holderIdentity"] == "r0"
    finally:
        for elector in (owner, *racers):
            await elector.client.close()


async def test_a_leader_whose_lease_was_taken_gives_up_at_its_next_renewal(emulator_url: str) -> None:
    clock = Clock()
    leader, other = _elector(emulator_url, "a", "taken", clock), _elector(emulator_url, "b", "taken", clock)
    try:
        assert await leader.try_acquire_or_renew()
        assert not await other.try_acquire_or_renew()
        clock.now += FAST.duration_seconds
        assert await other.try_acquire_or_renew()  # e.g. the leader was paused past its lease
        with pytest.raises(LeadershipLostError, match="now held by b"):
            await asyncio.wait_for(leader.keep(), timeout=10)
    finally:
        await leader.client.close()
        await other.client.close()


async def test_a_leader_that_cannot_reach_the_api_gives_up_at_the_renew_deadline(emulator_url: str) -> None:
    leader = _elector(emulator_url, "a", "unreachable")
    try:
        assert await leader.try_acquire_or_renew()
        await leader.client.close()
        leader.client = KubeClient(Credentials(server="http://127.0.0.1:9"))  # nothing listens: refused
        started = time.monotonic()
        with pytest.raises(LeadershipLostError, match="renew deadline"):
            await asyncio.wait_for(leader.keep(), timeout=10)
        gave_up = time.monotonic() - started
        # Before anyone may take over (the lease duration), and not before the deadline.
        assert FAST.renew_deadline_seconds <= gave_up < FAST.duration_seconds
    finally:
        await leader.client.close()


async def test_a_released_lease_is_taken_at_once(emulator_url: str) -> None:
    clock = Clock()
    leader, standby = (
        _elector(emulator_url, "a", "released", clock),
        _elector(emulator_url, "b", "released", clock),
    )
    try:
        assert await leader.try_acquire_or_renew()
        assert not await standby.try_acquire_or_renew()
        await leader.release()
        spec = await _spec(leader)
        assert "holderIdentity" not in spec and spec["leaseDurationSeconds"] == 1
        assert await standby.try_acquire_or_renew()  # no clock moved: no waiting out the lease
        assert (await _spec(standby))["holderIdentity"] == "b"
    finally:
        await leader.client.close()
        await standby.client.close()
