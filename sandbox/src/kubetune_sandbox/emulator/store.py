"""The object store behind the emulator: revisions, watch history, deletion and garbage collection.

Everything here is synchronous and runs on the emulator's event loop thread, so a write and the
fan-out of its watch event happen atomically: a watcher that subscribes and reads the history in
one synchronous step can neither miss nor double-count an event.

Stored objects are never mutated in place: every write stores a fresh dict. Callers may read and
serialise what they get, and must copy it before changing it.
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

GroupResource = tuple[str, str]  # (group, plural): all versions of a resource share one storage
ObjectKey = tuple[str, str]  # (namespace or "", name)
Obj = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def aggregate(messages: Iterable[str]) -> str:
    """Messages joined as Kubernetes' aggregate error prints them: one message, or '[first, second]', no repeats."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


class ApiError(Exception):
    """An error the API answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    @classmethod
    def invalid(cls, kind: str, group: str, name: str, causes: list[Obj]) -> ApiError:
        """errors.NewInvalid, the one place 422 Invalid is worded; causes are {reason, message, field} dicts."""
        qualified = f"{kind}.{group}" if group else kind
        text = aggregate(f"{c['field']}: {c['message']}" for c in causes)
        details = {"name": name, "group": group, "kind": kind, "causes": causes}
        return cls(422, "Invalid", f"{qualified} {json.dumps(name)} is invalid: {text}", details)

    def status(self) -> Obj:
        status: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        status |= {"message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            status["details"] = self.details
        return status


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    resource: GroupResource
    type: str  # ADDED | MODIFIED | DELETED
    object: Obj
    old: Obj | None  # the state before, so that selector watches can turn updates into ADDED/DELETED


class Store:
    def __init__(self, history_limit: int = 10_000) -> None:
        self._objects: dict[GroupResource, dict[ObjectKey, Obj]] = collections.defaultdict(dict)
        self._uids: dict[str, tuple[GroupResource, ObjectKey]] = {}
        self._revision = 0
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=history_limit)
        self._oldest_lost = 0  # the newest revision that fell out of the history
        self._subscribers: list[Callable[[WatchEvent], None]] = []

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, resource: GroupResource, namespace: str | None, name: str) -> Obj | None:
        return self._objects[resource].get((namespace or "", name))

    def objects(self, resource: GroupResource, namespace: str | None = None) -> list[Obj]:
        objects = self._objects[resource]
        return [objects[key] for key in sorted(objects) if namespace is None or key[0] == namespace]

    def _all(self) -> list[tuple[GroupResource, Obj]]:
        """Every stored object, as a list: callers may write while going through it."""
        return [(resource, obj) for resource, objects in self._objects.items() for obj in objects.values()]

    # Watching.

    def subscribe(self, callback: Callable[[WatchEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def events_since(self, revision: int) -> list[WatchEvent]:
        """Events after `revision`; ApiError 410 if some of them fell out of the bounded history."""
        if revision < self._oldest_lost:
            message = f"too old resource version: {revision} ({self._oldest_lost + 1})"
            raise ApiError(410, "Expired", message)
        return [event for event in self._history if event.revision > revision]

    def _publish(self, type_: str, resource: GroupResource, obj: Obj, old: Obj | None) -> None:
        event = WatchEvent(int(obj["metadata"]["resourceVersion"]), resource, type_, obj, old)
        if len(self._history) == self._history.maxlen:
            self._oldest_lost = self._history[0].revision
        self._history.append(event)
        for callback in list(self._subscribers):
            callback(event)

    # Writing. The server validates first; these only store, publish and cascade.

    def put(self, resource: GroupResource, obj: Obj) -> Obj:
        """Store a new or changed object under a fresh resourceVersion and publish the event.

        An update that empties the finalizers of an object being deleted deletes it instead.
        """
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        old = self._objects[resource].get(key)
        if old is not None and meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(resource, key, last_state=obj)
        self._revision += 1
        meta["resourceVersion"] = str(self._revision)
        self._objects[resource][key] = obj
        self._uids[meta["uid"]] = (resource, key)
        self._publish("ADDED" if old is None else "MODIFIED", resource, obj, old)
        return obj

    def _remove(self, resource: GroupResource, key: ObjectKey, last_state: Obj | None = None) -> Obj:
        old = self._objects[resource].pop(key)
        obj = copy.deepcopy(last_state or old)
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)  # DELETED carries a new revision
        self._uids.pop(obj["metadata"]["uid"], None)
        self._publish("DELETED", resource, obj, old)
        return obj

    def delete(self, resource: GroupResource, namespace: str | None, name: str) -> Obj:
        """Delete in the background, as the operator and kubectl ask: mark while finalizers hold the object,
        else remove it; then collect the garbage."""
        result = self._delete(resource, (namespace or "", name))
        self.collect_garbage()
        return result

    def _delete(self, resource: GroupResource, key: ObjectKey) -> Obj:
        obj = self._objects[resource][key]
        if obj["metadata"].get("deletionTimestamp"):
            return obj  # already being deleted
        if not obj["metadata"].get("finalizers"):
            return self._remove(resource, key)
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["deletionTimestamp"] = now()
        meta["deletionGracePeriodSeconds"] = 0
        if meta.get("generation"):
            meta["generation"] += 1  # as the API does when it sets deletionTimestamp
        return self.put(resource, obj)

    def collect_garbage(self) -> None:
        """Delete, as the garbage collector would, objects whose owners are all gone, until none is left."""
        changed = True
        while changed:
            changed = False
            for resource, obj in self._all():
                meta = obj["metadata"]
                key = (meta.get("namespace", ""), meta["name"])
                owners = meta.get("ownerReferences") or []
                if self._objects[resource].get(key) is not obj or meta.get("deletionTimestamp") or not owners:
                    continue  # changed or removed earlier in this pass, being deleted, or owned by none
                if all(ref.get("uid") not in self._uids for ref in owners):
                    self._delete(resource, key)
                    changed = True
