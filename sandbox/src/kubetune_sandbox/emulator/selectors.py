"""Label and field selectors, as far as the operator, Kopf and kubectl use them.

Label selectors: `key=value`, `key==value`, `key!=value`, `key` and `!key`, comma-separated (no set-based
`in`/`notin` and no `>`/`<`). Field selectors: `metadata.name` and `metadata.namespace` only (what kubectl
sends for `kubectl get NAME -w` and `kubectl wait`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# A label key: an optional DNS-subdomain prefix and a name of up to 63 characters.
_KEY = r"(?:[a-z0-9.-]{1,253}/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_LABEL_TERM = re.compile(rf"(!?)\s*({_KEY})\s*(?:(==|=|!=)\s*({_VALUE}))?")
_FIELD_TERM = re.compile(r"(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(.*)")

Requirement = tuple[str, str, str]  # (key or field, operator "=", "!=", "exists" or "!", value)


class SelectorError(ValueError):
    """A selector that does not parse, or one the emulator does not serve; the API answers 400 BadRequest."""


def _terms(text: str | None) -> list[str]:
    return [term.strip() for term in (text or "").split(",") if term.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    requirements = []
    for term in _terms(text):
        match = _LABEL_TERM.fullmatch(term)
        if match is None or (match[1] and match[3]):
            raise SelectorError(
                f"unable to parse requirement: {term!r} (the emulator has no set-based selectors)"
            )
        negated, key, operator, value = match.groups()
        if operator is None:
            requirements.append((key, "!" if negated else "exists", ""))
        else:
            requirements.append((key, "!=" if operator == "!=" else "=", value))
    return requirements


def parse_field_selector(text: str | None) -> list[Requirement]:
    selectors = []
    for term in _terms(text):
        match = _FIELD_TERM.fullmatch(term)
        if match is None:
            field = re.split(r"\s*!?==?", term, maxsplit=1)[0]
            raise SelectorError(f'field label not supported: "{field}"')
        selectors.append((match[1], "!=" if match[2] == "!=" else "=", match[3]))
    return selectors


def _holds(requirement: Requirement, value: str | None) -> bool:
    _, operator, expected = requirement
    match operator:
        case "exists":
            return value is not None
        case "!":
            return value is None
        case "=":
            return value == expected
        case _:
            return value != expected


def make_matcher(
    label_selector: str | None, field_selector: str | None
) -> Callable[[Mapping[str, Any]], bool]:
    """Parse both selectors once and return a predicate over objects; raises SelectorError."""
    labels_wanted = parse_label_selector(label_selector)
    fields_wanted = parse_field_selector(field_selector)

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        labels = meta.get("labels") or {}
        if not all(_holds(r, labels.get(r[0])) for r in labels_wanted):
            return False
        return all(_holds(r, str(meta.get(r[0].removeprefix("metadata."), ""))) for r in fields_wanted)

    return matches
