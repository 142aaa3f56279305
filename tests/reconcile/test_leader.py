"""Leader election's decisions and Lease bodies (reconcile/leader.py), as tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubetune.handlers.settings import ConfigError, OperatorConfig
from kubetune.reconcile.leader import (
    Decision,
    LeaseRecord,
    LeaseTiming,
    claim_patch,
    decide,
    micro_time,
    new_lease,
    release_patch,
)

NOW = datetime(2026, 12, 3, 17, 0, 0, 123456, tzinfo=UTC)


def _record(holder: str = "a", transitions: int = 2, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(
        holder, duration, "2026-12-03T16:00:00.000000Z", "2026-12-03T16:59:59.000000Z", transitions, "41"
    )


@pytest.mark.parametrize(
    ("holder", "seen_for", "decision"),
    [
        ("me", 0.0, Decision.RENEW),  # ours: renew, however old
        ("me", 99.0, Decision.RENEW),
        ("", 0.0, Decision.TAKE),  # released
        ("other", 0.0, Decision.WAIT),  # just renewed by another
        ("other", 14.9, Decision.WAIT),
        ("other", 15.0, Decision.TAKE),  # unchanged for a whole lease: its holder is gone
        ("other", 60.0, Decision.TAKE),
    ],
)
def test_a_candidate_renews_its_own_takes_a_free_or_expired_lease_and_waits_for_a_live_one(
    holder: str, seen_for: float, decision: Decision
) -> None:
    assert decide(_record(holder), "me", seen_for_seconds=seen_for) is decision


def test_expiry_follows_the_lease_duration_the_holder_wrote() -> None:
    assert decide(_record("other", duration=1), "me", seen_for_seconds=1.0) is Decision.TAKE
    assert decide(_record("other", duration=60), "me", seen_for_seconds=30.0) is Decision.WAIT


def test_a_record_is_the_same_claim_only_while_nobody_renews_or_takes_it() -> None:
    base = _record()
    assert base.same_claim(LeaseRecord("a", 15, base.acquire_time, base.renew_time, 2, "99"))  # version alone
    assert not base.same_claim(
        LeaseRecord("a", 15, base.acquire_time, "2026-12-03T17:00:01.000000Z", 2, "42")
    )
    assert not base.same_claim(LeaseRecord("b", 15, base.acquire_time, base.renew_time, 3, "42"))
    assert not base.same_claim(None)


def test_a_renewal_keeps_acquire_time_and_transitions_and_carries_the_version_read() -> None:
    patch = claim_patch(_record("me"), "me", NOW, LeaseTiming())
    assert patch == {
        "metadata": {"resourceVersion": "41"},
        "spec": {
            "holderIdentity": "me",
            "leaseDurationSeconds": 15,
            "renewTime": "2026-12-03T17:00:00.123456Z",
        },
    }


@pytest.mark.parametrize("previous", ["other", ""])
def test_a_takeover_counts_a_transition_and_sets_a_new_acquire_time(previous: str) -> None:
    spec = claim_patch(_record(previous, transitions=2), "me", NOW, LeaseTiming(duration_seconds=20))["spec"]
    assert spec["holderIdentity"] == "me"
    assert spec["acquireTime"] == spec["renewTime"] == micro_time(NOW)
    assert spec["leaseTransitions"] == 3
    assert spec["leaseDurationSeconds"] == 20


def test_a_release_clears_the_holder_and_shortens_the_lease_to_a_second() -> None:
    patch = release_patch(_record("me", transitions=4), NOW)
    assert patch["metadata"] == {"resourceVersion": "41"}
    assert patch["spec"]["holderIdentity"] is None  # a merge patch removes it
    assert patch["spec"]["leaseDurationSeconds"] == 1
    assert patch["spec"]["leaseTransitions"] == 4


def test_a_new_lease_is_held_by_its_creator_from_now() -> None:
    lease = new_lease("kubetune-operator", "kubetune-system", "pod-1", NOW, LeaseTiming())
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    assert lease["metadata"]["namespace"] == "kubetune-system"
    record = LeaseRecord.from_lease({**lease, "metadata": {**lease["metadata"], "resourceVersion": "7"}})
    assert (record.holder, record.duration_seconds, record.transitions, record.resource_version) == (
        "pod-1",
        15,
        0,
        "7",
    )


def test_micro_time_is_utc_with_microseconds() -> None:
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2026-01-02T03:04:05.000006Z"


@pytest.mark.parametrize(
    ("duration", "deadline", "retry", "complaint"),
    [
        (15, 10, 2, None),  # client-go's defaults
        (4, 3, 1, None),
        (10, 10, 2, "must be longer than the renew deadline"),
        (15, 20, 2, "must be longer than the renew deadline"),
        (15, 2, 2, "x the retry period"),
        (15, 10, 0, "at least 1s"),
    ],
)
def test_unsafe_lease_timings_are_refused_as_client_go_refuses_them(
    duration: int, deadline: int, retry: int, complaint: str | None
) -> None:
    problems = LeaseTiming(duration, deadline, retry).problems()
    if complaint is None:
        assert problems == []
    else:
        assert any(complaint in problem for problem in problems), problems


POD = {"POD_NAMESPACE": "kubetune-system", "POD_NAME": "kubetune-7c9f-abcde"}


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({}, False),  # a local run: no namespace of its own
        ({"KUBETUNE_LEADER_ELECTION": "false", **POD}, False),
        (POD, True),  # auto, in a pod
        ({"KUBETUNE_LEADER_ELECTION": "true", **POD}, True),
        ({"KUBETUNE_LEADER_ELECTION": "TRUE", **POD}, True),
    ],
)
def test_leader_election_is_on_in_a_pod_and_off_for_a_local_run(env: dict[str, str], enabled: bool) -> None:
    election = OperatorConfig.from_env(env).leader_election
    assert (election is not None) is enabled
    if election is not None:
        assert (election.namespace, election.identity, election.lease_name) == (
            "kubetune-system",
            "kubetune-7c9f-abcde",
            "kubetune-operator",
        )


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"KUBETUNE_LEADER_ELECTION": "yes"}, "KUBETUNE_LEADER_ELECTION"),
        ({"KUBETUNE_LEADER_ELECTION": "true"}, "POD_NAMESPACE"),
        ({"KUBETUNE_LEADER_ELECTION": "true", "POD_NAMESPACE": "Bad_NS", "POD_NAME": "p"}, "POD_NAMESPACE"),
        ({"POD_NAMESPACE": "ns"}, "POD_NAME"),
        ({**POD, "KUBETUNE_LEASE_NAME": "Not A Name"}, "KUBETUNE_LEASE_NAME"),
        ({**POD, "KUBETUNE_LEASE_DURATION_SECONDS": "5"}, "KUBETUNE_LEASE_DURATION_SECONDS"),  # < deadline 10
        ({**POD, "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS": "x"}, "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS"),
    ],
)
def test_a_bad_leader_election_setting_stops_start_up_naming_it(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        OperatorConfig.from_env(env)
