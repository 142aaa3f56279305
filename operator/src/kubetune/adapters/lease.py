"""Leader election against the API: read the Lease, claim or renew it, release it (decisions in
reconcile/leader.py). Its own client and rate limit, so a busy reconciler can never delay a renewal."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp

from kubetune.adapters.kube import ApiError, KubeClient
from kubetune.reconcile.leader import (
    JITTER_FACTOR,
    LEASE_API_VERSION,
    LEASE_KIND,
    Decision,
    LeaseRecord,
    LeaseTiming,
    claim_patch,
    decide,
    new_lease,
    release_patch,
)

logger = logging.getLogger(__name__)


class LeadershipLostError(Exception):
    """The leader could not renew its Lease before the renew deadline: another replica may lead soon."""


class LeaseElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: LeaseTiming,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing
        self._clock = clock
        self._wall_clock = wall_clock
        self._observed: LeaseRecord | None = None
        self._observed_at = clock()
        self.leading = False

    def _observe(self, record: LeaseRecord) -> None:
        if not record.same_claim(self._observed):
            self._observed_at = self._clock()
        self._observed = record

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this candidate holds the Lease afterwards. API errors count as a failed
        attempt (the caller retries), except a 403, which no retry can fix."""
        try:
            lease = await self.client.get(LEASE_API_VERSION, LEASE_KIND, self.namespace, self.name)
            if lease is None:
                lease = await self.client.create(
                    new_lease(self.name, self.namespace, self.identity, self._wall_clock(), self.timing)
                )  # an existing Lease (another candidate was first) comes back instead: judged below
                record = LeaseRecord.from_lease(lease)
                self._observe(record)
                self.leading = record.holder == self.identity
                return self.leading
            record = LeaseRecord.from_lease(lease)
            self._observe(record)
            decision = decide(record, self.identity, seen_for_seconds=self._clock() - self._observed_at)
            if decision is Decision.WAIT:
                self.leading = False
                return False
            previous = record.holder
            patched = await self.client.patch(
                LEASE_API_VERSION,
                LEASE_KIND,
                self.namespace,
                self.name,
                claim_patch(record, self.identity, self._wall_clock(), self.timing),
            )
        except ApiError as error:
            if error.status == 403:
                raise
            if error.status != 409:  # 409: another candidate wrote first; the next read shows who
                logger.warning("lease %s/%s: %s", self.namespace, self.name, error)
            self.leading = False
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.warning("lease %s/%s: %s", self.namespace, self.name, error)
            self.leading = False
            return False
        record = LeaseRecord.from_lease(patched)
        self._observe(record)
        if decision is Decision.TAKE:
            logger.info("took the lease %s/%s from %s", self.namespace, self.name, previous or "nobody")
        self.leading = True
        return True

    def _jittered(self) -> float:
        return self.timing.retry_period_seconds * (1 + random.uniform(0, JITTER_FACTOR - 1))

    async def acquire(self) -> None:
        """Until this candidate leads: one attempt per (jittered) retry period."""
        holder = None
        while not await self.try_acquire_or_renew():
            current = self._observed.holder if self._observed else None
            if current != holder:
                holder = current
                logger.info("standing by: the lease %s/%s is held by %s", self.namespace, self.name, holder)
            await asyncio.sleep(self._jittered())

    async def keep(self) -> None:
        """Renews every retry period while leading; raises LeadershipLostError once no renewal succeeded for the
        renew deadline (or another took the Lease), so the caller stops acting before the lease expires."""
        renewed = self._clock()
        deadline = self.timing.renew_deadline_seconds
        while True:
            await asyncio.sleep(self.timing.retry_period_seconds)
            left = deadline - (self._clock() - renewed)
            try:
                ok = left > 0 and await asyncio.wait_for(self.try_acquire_or_renew(), timeout=left)
            except TimeoutError:
                ok = False
            if ok:
                renewed = self._clock()
                continue
            holder = self._observed.holder if self._observed else ""
            if holder and holder != self.identity:
                raise LeadershipLostError(f"the lease {self.namespace}/{self.name} is now held by {holder}")
            if self._clock() - renewed >= deadline:
                raise LeadershipLostError(
                    f"could not renew the lease {self.namespace}/{self.name} for {deadline}s (the renew deadline)"
                )

    async def release(self) -> None:
        """Hands the Lease back (if still ours) so a standby takes over at once; best effort."""
        if not self.leading or self._observed is None:
            return
        self.leading = False
        try:
            await self.client.patch(
                LEASE_API_VERSION,
                LEASE_KIND,
                self.namespace,
                self.name,
                release_patch(self._observed, self._wall_clock()),
            )
            logger.info("released the lease %s/%s", self.namespace, self.name)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            logger.warning(
                "could not release the lease %s/%s (it expires anyway): %s", self.namespace, self.name, error
            )
