"""The patch formats the operator, Kopf and kubectl send: JSON merge patch and JSON patch (no strategic merge)."""

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
