"""The patch formats the operator, Kopf and kubectl send: JSON merge patch, JSON patch, and strategic merge
patch without directives (what `kubectl apply` sends for a changed Secret or ConfigMap)."""

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


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch without `$` directives, applied as the JSON merge patch it then is: kubectl apply
    marks lists it merges by key with `$setElementOrder`, so the lists left are replaced in both formats.
    One with directives is refused (415) rather than merged differently."""
    if _has_directive(patch):
        message = (
            "the kubetune API emulator applies strategic merge patches only without directives "
            "($patch, $setElementOrder, $retainKeys, $deleteFromPrimitiveList); send a JSON merge patch"
        )
        raise PatchError(message, 415)
    return merge_patch(target, patch)


def _has_directive(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_directive(item) for item in value)
    return isinstance(value, dict) and any(k.startswith("$") or _has_directive(v) for k, v in value.items())


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
