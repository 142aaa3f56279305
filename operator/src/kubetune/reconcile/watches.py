"""Which children wake which parent: the label selectors the operator's child watches send to the API server,
and the parent an event names. Pure: the LIST/WATCH loop is adapters.watch, the wiring handlers.children."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.render.finetunejob import JOB_LABEL
from kubetune.render.modeldeployment import DEPLOYMENT_LABEL
from kubetune.render.pod import MANAGED_BY

Owner = tuple[str, str]  # (namespace, name) of the FineTuneJob or ModelDeployment a child names


@dataclass(frozen=True)
class ChildWatch:
    """One child kind whose changes wake one parent kind; the parent's name is in `owner_label`."""

    api_version: str
    kind: str
    owner_kind: str
    owner_label: str

    @property
    def label_selector(self) -> str:
        # Filtered by the API server: the operator never receives (or caches) pods it does not own.
        return f"{MANAGED_BY}=kubetune,{self.owner_label}"

    def owner(self, obj: Mapping[str, Any]) -> Owner | None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(self.owner_label)
        namespace = meta.get("namespace")
        return (namespace, name) if name and namespace else None


# What triggered a reconcile under Kopf's client-side filtered child handlers; nothing more.
CHILD_WATCHES = (
    ChildWatch("batch/v1", "Job", "FineTuneJob", JOB_LABEL),
    ChildWatch("v1", "Pod", "FineTuneJob", JOB_LABEL),
    ChildWatch("apps/v1", "Deployment", "ModelDeployment", DEPLOYMENT_LABEL),
    ChildWatch("batch/v1", "Job", "ModelDeployment", DEPLOYMENT_LABEL),
)


class SeenChildren:
    """uid -> (resourceVersion, owner) of what one watch has seen: a relist after 410 Gone or an error wakes
    only the parents whose children changed, appeared or vanished while the watch was down (a few dozen
    bytes a child, not the objects)."""

    def __init__(self, watch: ChildWatch) -> None:
        self.watch = watch
        self._seen: dict[str, tuple[str, Owner | None]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def event(self, type_: str, obj: Mapping[str, Any]) -> Owner | None:
        """A watch event (ADDED, MODIFIED, DELETED): remember it; the parent to wake, if it names one."""
        meta = obj.get("metadata") or {}
        owner = self.watch.owner(obj)
        uid = meta.get("uid")
        if uid:
            if type_ == "DELETED":
                self._seen.pop(uid, None)
            else:
                self._seen[uid] = (str(meta.get("resourceVersion", "")), owner)
        return owner

    def relist(self, items: Iterable[Mapping[str, Any]]) -> set[Owner]:
        """Replace what was seen by a full listing; the parents of every child that differs."""
        seen: dict[str, tuple[str, Owner | None]] = {}
        changed: set[Owner] = set()
        for obj in items:
            meta = obj.get("metadata") or {}
            uid = meta.get("uid")
            entry = (str(meta.get("resourceVersion", "")), self.watch.owner(obj))
            if not uid:
                continue
            seen[uid] = entry
            if self._seen.get(uid) != entry and entry[1] is not None:
                changed.add(entry[1])
        for uid, (_, owner) in self._seen.items():
            if uid not in seen and owner is not None:
                changed.add(owner)  # deleted while the watch was down
        self._seen = seen
        return changed
