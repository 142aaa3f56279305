"""The three patch formats the Kubernetes API accepts: JSON merge, strategic merge, JSON patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer


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


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (the jsonpatch library). A failed `test` raises PatchError with 422, as the API answers."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise PatchError("a JSON patch must be a list of operations", 400)
    try:
        return jsonpatch.apply_patch(target, operations)
    except jsonpatch.JsonPatchTestFailed as error:
        raise PatchError(f"the test operation failed: {error}") from None
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as error:
        raise PatchError(f"jsonpatch: {error}", 400) from None
    except jsonpatch.JsonPatchConflict as error:
        raise PatchError(f"jsonpatch: {error}") from None
