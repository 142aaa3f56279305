"""Which listed children belong to an object: its uid among their ownerReferences. Pure.

Labels find the candidates; ownership decides, so an object recreated under the same name never adopts
its predecessor's children."""

from __future__ import annotations

from collections.abc import Iterable

from kubetune.render.pod import Manifest


def owned_by(child: Manifest, owner_uid: str | None) -> bool:
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return owner_uid is not None and any(ref.get("uid") == owner_uid for ref in refs)


def owned(children: Iterable[Manifest], owner: Manifest) -> list[Manifest]:
    """The children that the owner (a resource as read from the API) owns, in their order."""
    uid = owner["metadata"].get("uid")
    return [child for child in children if owned_by(child, uid)]
