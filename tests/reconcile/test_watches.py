"""The child watches' pure part: the selectors sent to the API server and which parent an event wakes."""

from __future__ import annotations

from typing import Any

from kubetune.reconcile.watches import CHILD_WATCHES, ChildWatch, SeenChildren
from kubetune.render.finetunejob import JOB_LABEL
from kubetune.render.modeldeployment import DEPLOYMENT_LABEL

PODS = ChildWatch("v1", "Pod", "FineTuneJob", JOB_LABEL)


def child(uid: str, version: str, owner: str | None, namespace: str = "team-a") -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "kubetune"} | ({JOB_LABEL: owner} if owner else {})
    return {"metadata": {"uid": uid, "resourceVersion": version, "namespace": namespace, "labels": labels}}


def test_each_watch_selects_the_operators_children_of_one_parent_kind_on_the_server() -> None:
    selectors = {(w.kind, w.owner_kind): w.label_selector for w in CHILD_WATCHES}
    assert selectors == {
        ("Job", "FineTuneJob"): f"app.kubernetes.io/managed-by=kubetune,{JOB_LABEL}",
        ("Pod", "FineTuneJob"): f"app.kubernetes.io/managed-by=kubetune,{JOB_LABEL}",
        ("Deployment", "ModelDeployment"): f"app.kubernetes.io/managed-by=kubetune,{DEPLOYMENT_LABEL}",
        ("Job", "ModelDeployment"): f"app.kubernetes.io/managed-by=kubetune,{DEPLOYMENT_LABEL}",
    }


def test_an_event_names_the_parent_from_the_owner_label_and_the_childs_namespace() -> None:
    seen = SeenChildren(PODS)
    assert seen.event("ADDED", child("u1", "5", "support-bot")) == ("team-a", "support-bot")
    assert seen.event("MODIFIED", child("u2", "6", None)) is None
    assert len(seen) == 2
    seen.event("DELETED", child("u1", "7", "support-bot"))
    assert len(seen) == 1


def test_a_relist_wakes_only_parents_whose_children_changed_appeared_or_vanished() -> None:
    seen = SeenChildren(PODS)
    first = [child("a", "1", "steady"), child("b", "2", "edited"), child("c", "3", "deleted")]
    assert seen.relist(first) == {("team-a", "steady"), ("team-a", "edited"), ("team-a", "deleted")}
    later = [child("a", "1", "steady"), child("b", "9", "edited"), child("d", "10", "created")]
    assert seen.relist(later) == {("team-a", "edited"), ("team-a", "deleted"), ("team-a", "created")}
    assert seen.relist(later) == set()


def test_events_keep_what_a_relist_compares_against() -> None:
    seen = SeenChildren(PODS)
    seen.relist([child("a", "1", "job")])
    seen.event("MODIFIED", child("a", "2", "job"))
    assert seen.relist([child("a", "2", "job")]) == set()  # the watch already delivered that change
