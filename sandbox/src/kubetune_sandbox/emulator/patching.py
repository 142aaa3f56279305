"""The three patch formats the Kubernetes API accepts: JSON merge, strategic merge, JSON patch."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch that cannot be applied; `code` is the HTTP status the API answers with."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists the built-in types merge by key (patchMergeKey) instead of replacing; the first key that
# every item carries wins (container ports merge by containerPort, service ports by port).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
}
# Lists of scalars with patchStrategy=merge: the patch adds to them instead of replacing them.
_MERGED_SCALAR_LISTS = {"finalizers"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch, covering what kubectl and Kopf send for the built-in types.

    Maps merge like a merge patch; lists named in `_MERGE_KEYS` merge item by item; the
    `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/` and `$setElementOrder/` directives work.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    patch = {key: value for key, value in patch.items() if key != "$patch"}
    if directive == "replace":
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            continue  # only reorders; the order of merged items is not modelled
        if key == "$retainKeys":
            continue  # applied below, once the other keys are merged
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if "$retainKeys" in patch:
        result = {key: value for key, value in result.items() if key in patch["$retainKeys"]}
    return result


def _merge_list(field: str, current_value: Any, patch: list[Any]) -> list[Any]:
    current: list[Any] = current_value if isinstance(current_value, list) else []
    if field in _MERGED_SCALAR_LISTS:
        return current + [item for item in patch if item not in current]
    items = current + patch
    key = next(
        (
            k
            for k in _MERGE_KEYS.get(field, ())
            if items and all(isinstance(i, dict) and k in i for i in items)
        ),
        None,
    )
    if key is None:
        return copy.deepcopy(patch)
    result: list[Any] = copy.deepcopy(current)
    for item in patch:
        index = next((i for i, old in enumerate(result) if old[key] == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}", 400)
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"jsonpatch: path {path!r} does not exist")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    node, last = _parent(doc, parts, path), parts[-1]
    if isinstance(node, dict) and last in node:
        return node[last]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node[int(last)]
    raise PatchError(f"jsonpatch: path {path!r} does not exist")


def _remove(doc: Any, path: str) -> Any:
    value = _get(doc, path)  # raises when absent
    parts = _pointer(path)
    node = _parent(doc, parts, path)
    if isinstance(node, dict):
        del node[parts[-1]]
    else:
        del node[int(parts[-1])]
    return value


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    node, last = _parent(doc, parts, path), parts[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and (last == "-" or (last.isdigit() and int(last) <= len(node))):
        node.insert(len(node) if last == "-" else int(last), value)
    else:
        raise PatchError(f"jsonpatch: cannot add at {path!r}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch. A failed `test` raises PatchError with 422, as the API answers."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise PatchError("a JSON patch must be a list of operations", 400)
    doc = copy.deepcopy(target)
    for op in operations:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"jsonpatch: operation {op!r} has no path", 400)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"jsonpatch: operation {op!r} has no value", 400)
        match kind:
            case "add":
                doc = _add(doc, path, copy.deepcopy(op["value"]))
            case "remove":
                _remove(doc, path)
            case "replace":
                _get(doc, path)  # the target must exist
                doc = _add(_remove_for_replace(doc, path), path, copy.deepcopy(op["value"]))
            case "move":
                doc = _add(doc, path, _remove(doc, str(op.get("from", ""))))
            case "copy":
                doc = _add(doc, path, copy.deepcopy(_get(doc, str(op.get("from", "")))))
            case "test":
                if _get(doc, path) != op["value"]:
                    raise PatchError(f"the test operation failed: {path} is not {op['value']!r}")
            case _:
                raise PatchError(f"jsonpatch: unknown operation {kind!r}", 400)
    return doc


def _remove_for_replace(doc: Any, path: str) -> Any:
    if _pointer(path):
        _remove(doc, path)
    return doc
