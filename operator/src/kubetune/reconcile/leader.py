"""Leader election over a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it: the decisions
and Lease bodies, without I/O (adapters/lease.py sends them).

Why a Lease and not Kopf's peering: peering pauses an operator while one of *higher* priority runs, and two
operators of the same priority (two replicas of one Deployment) both warn and freeze. A Lease elects exactly
one replica; the API server's optimistic concurrency (a write carrying a stale resourceVersion gets 409)
makes two candidates' simultaneous claims safe: one wins, the other re-reads.

Expiry is judged by the local clock from when this candidate last saw the record change, never by comparing
the Lease's renewTime with the local clock, so clock skew between nodes cannot shorten a lease.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"
LEASE_NAME = "kubetune-operator"
# client-go's defaults (kube-controller-manager, kube-scheduler): a dead leader is replaced within 15 s.
DEFAULT_LEASE_DURATION_SECONDS = 15
DEFAULT_RENEW_DEADLINE_SECONDS = 10
DEFAULT_RETRY_PERIOD_SECONDS = 2
JITTER_FACTOR = 1.2  # client-go: the renew deadline must exceed the retry period with its jitter


@dataclass(frozen=True)
class LeaseTiming:
    """How long a lease lasts, how long a leader keeps trying to renew before it gives up, how often every
    candidate tries. A leader gives up `duration - renew_deadline` seconds before anyone may take over."""

    duration_seconds: int = DEFAULT_LEASE_DURATION_SECONDS
    renew_deadline_seconds: int = DEFAULT_RENEW_DEADLINE_SECONDS
    retry_period_seconds: int = DEFAULT_RETRY_PERIOD_SECONDS

    def problems(self) -> list[str]:
        """What makes this timing unsafe, as client-go refuses it (empty when it is fine)."""
        problems = []
        if self.retry_period_seconds < 1:
            problems.append(f"the retry period ({self.retry_period_seconds}s) must be at least 1s")
        if self.duration_seconds <= self.renew_deadline_seconds:
            problems.append(
                f"the lease duration ({self.duration_seconds}s) must be longer than the renew deadline"
                f" ({self.renew_deadline_seconds}s), or a stalled leader still leads when another takes over"
            )
        if self.renew_deadline_seconds <= JITTER_FACTOR * self.retry_period_seconds:
            problems.append(
                f"the renew deadline ({self.renew_deadline_seconds}s) must be longer than {JITTER_FACTOR} x the"
                f" retry period ({self.retry_period_seconds}s), or a leader gets no second try to renew"
            )
        return problems


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as leader election reads it, with the version a write must carry."""

    holder: str  # "" when released or never held
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion", "")),
        )

    def same_claim(self, other: LeaseRecord | None) -> bool:
        """Whether nothing was renewed or changed hands between two reads (the expiry clock keeps running)."""
        return other is not None and (self.holder, self.renew_time, self.transitions) == (
            other.holder,
            other.renew_time,
            other.transitions,
        )


class Decision(enum.Enum):
    RENEW = "renew"  # we hold it: write a fresh renewTime
    TAKE = "take"  # free, released or expired: claim it
    WAIT = "wait"  # someone else holds a live lease


def decide(record: LeaseRecord, identity: str, *, seen_for_seconds: float) -> Decision:
    """What a candidate does with the Lease it just read; `seen_for_seconds` is how long (by its own clock)
    the record has looked exactly like this."""
    if record.holder == identity:
        return Decision.RENEW
    if not record.holder:
        return Decision.TAKE
    if seen_for_seconds >= record.duration_seconds:
        return Decision.TAKE
    return Decision.WAIT


def micro_time(moment: datetime) -> str:
    """The API's MicroTime (RFC 3339 with microseconds), which Lease times are."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_lease(name: str, namespace: str, identity: str, now: datetime, timing: LeaseTiming) -> dict[str, Any]:
    """The Lease a first candidate creates, held by itself."""
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": LEASE_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "kubetune"}},
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": timing.duration_seconds,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": 0,
        },
    }


def claim_patch(record: LeaseRecord, identity: str, now: datetime, timing: LeaseTiming) -> dict[str, Any]:
    """A merge patch that renews (same holder) or takes over (new holder: a transition, a new acquireTime).
    It carries the resourceVersion read, so a claim based on a stale read fails with 409."""
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": timing.duration_seconds,
        "renewTime": micro_time(now),
    }
    if record.holder != identity:
        spec["acquireTime"] = micro_time(now)
        spec["leaseTransitions"] = record.transitions + 1  # as client-go counts, a released lease too
    return {"metadata": {"resourceVersion": record.resource_version}, "spec": spec}


def release_patch(record: LeaseRecord, now: datetime) -> dict[str, Any]:
    """What a leader that stops cleanly writes (client-go's ReleaseOnCancel): no holder and a 1 s duration,
    so a standby takes over on its next try instead of waiting out the lease."""
    return {
        "metadata": {"resourceVersion": record.resource_version},
        "spec": {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": record.transitions,
        },
    }
