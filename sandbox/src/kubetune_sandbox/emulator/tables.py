"""Server-side `Table` rendering, so `kubectl get` prints a CRD's additionalPrinterColumns."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

_NAME_COLUMN = {
    "name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.",
    "priority": 0,
}  # fmt: skip
_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


_PLAIN_PATH = re.compile(r"(\.[A-Za-z0-9_-]+)+")


def plain_path(path: Any) -> bool:
    """Whether a printer column's path is `.a.b`, all evaluate() serves (a CRD with another is refused)."""
    return isinstance(path, str) and _PLAIN_PATH.fullmatch(path) is not None


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def columns_for(printer_columns: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    """The columns a CRD version declares, or Age when it declares none (as the API does)."""
    return list(printer_columns or [_AGE_COLUMN])


def evaluate(obj: Any, path: str) -> Any:
    """A printer column's JSONPath, which in our CRDs is a plain `.a.b`; None when absent."""
    for key in path.removeprefix(".").split("."):
        if not isinstance(obj, Mapping) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _age(timestamp: Any) -> str | None:
    try:
        then = datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cell(obj: Mapping[str, Any], column: Mapping[str, Any]) -> Any:
    value = evaluate(obj, str(column.get("jsonPath", "")))
    if value is None:
        return None
    if column.get("type") == "date":
        return _age(value)
    if isinstance(value, dict | list) or column.get("type") == "string":
        return value if isinstance(value, str) else json.dumps(value)
    return value


def to_table(
    objects: Iterable[Mapping[str, Any]],
    columns: list[Mapping[str, Any]],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    with_definitions: bool = True,
) -> dict[str, Any]:
    defaults = {"type": "string", "format": "", "description": "", "priority": 0}
    definitions = [_NAME_COLUMN]
    definitions += [
        {"name": c["name"]} | {key: c.get(key, value) for key, value in defaults.items()} for c in columns
    ]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"]] + [_cell(obj, c) for c in columns]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            metadata = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1"}
            row["object"] = metadata | {"metadata": obj["metadata"]}
        rows.append(row)
    table: dict[str, Any] = {"kind": "Table", "apiVersion": "meta.k8s.io/v1"}
    table["metadata"] = {"resourceVersion": resource_version}
    table["columnDefinitions"] = definitions if with_definitions else None
    table["rows"] = rows
    return table
