"""Hypothesis strategies for hostile custom resources: values drawn from the CRD's own schema (so many are
admitted and the typed model is really exercised), random JSON, and mutations of the valid examples."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

# Pieces that must never reach a shell or climb out of an S3 prefix.
HOSTILE_PIECES = ["../", "..", "/..", ";", "$(id)", "`id`", "\n", "\r\n", "|", "&&", "'", '"', " ", "\\",
                  "%2e%2e/", "\u202e", "é", "\x00", "*", "~", "//", "./"]  # fmt: skip

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # int64; beyond: test_integer_overflow_...
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_PIECES),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by an OpenAPI v3 schema: enums, patterns, bounds just inside and outside."""
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(-5, 100), st.text(max_size=8))
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        if properties and depth < 6:
            required = set(schema.get("required") or [])
            return st.fixed_dictionaries(
                {k: from_schema(v, depth + 1) for k, v in properties.items() if k in required},
                optional={k: from_schema(v, depth + 1) for k, v in properties.items() if k not in required},
            )
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and depth < 6:
            keys = st.text(
                st.characters(codec="ascii", categories=["Ll", "Lu", "Nd"]), min_size=1, max_size=10
            )
            return st.dictionaries(keys, from_schema(extra, depth + 1), max_size=3)
        return st.fixed_dictionaries({})
    if kind == "array":
        items = schema.get("items") or {}
        low = int(schema.get("minItems", 0))
        high = min(int(schema.get("maxItems", low + 3)), low + 3)
        return st.lists(from_schema(items, depth + 1), min_size=low, max_size=high)
    if kind == "string":
        if "pattern" in schema:
            pattern = st.from_regex(schema["pattern"], fullmatch=True)
            if "maxLength" in schema:
                # Mostly within the length limit, sometimes beyond it.
                limit = int(schema["maxLength"])
                return st.one_of(pattern.filter(lambda s: len(s) <= limit), pattern)
            return pattern
        return st.text(
            min_size=int(schema.get("minLength", 0)), max_size=int(schema.get("maxLength", 24)) + 2
        )
    if kind == "integer":
        low = int(schema.get("minimum", -(2**40)))
        high = int(schema.get("maximum", 2**40))
        return st.one_of(st.integers(low, high), st.sampled_from([low - 1, high + 1, 0, 2**63 - 1, -(2**63)]))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    return json_values


def spec_schema(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, example: Mapping[str, Any]) -> dict[str, Any]:
    """A valid example with 1-3 mutations: a value replaced (junk or hostile), a key deleted or added."""
    obj = copy.deepcopy(dict(example))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj["spec"]) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = obj["spec"]
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "hostile", "delete", "add"]))
        leaf = path[-1]
        if action == "replace":
            parent[leaf] = draw(json_values)
        elif action == "hostile" and isinstance(parent[leaf], str):
            original = parent[leaf]
            cut = draw(st.integers(0, len(original)))
            parent[leaf] = original[:cut] + draw(st.sampled_from(HOSTILE_PIECES)) + original[cut:]
        elif action == "delete" and isinstance(parent, dict):
            del parent[leaf]
        elif action == "add" and isinstance(parent[leaf], dict):
            parent[leaf][draw(st.text(max_size=8))] = draw(json_values)
    return obj
