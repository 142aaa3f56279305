"""Label and field selectors as the Kubernetes API parses and matches them."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

# A label key: an optional DNS-subdomain prefix and a name of up to 63 characters.
_KEY = r"(?:[a-z0-9.-]{1,253}/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?"
_NOT_EXISTS = re.compile(rf"!\s*({_KEY})")
_SET_BASED = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)")
_EQUALITY = re.compile(rf"({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})")
_EXISTS = re.compile(rf"({_KEY})")


class SelectorError(ValueError):
    """A selector that does not parse; the API answers 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        match self.operator:
            case "exists":
                return value is not None
            case "!":
                return value is None
            case "=" | "in":
                return value in self.values
            case "!=" | "notin":
                return value not in self.values
            case _:  # ">" and "<" compare integers; a non-integer label never matches
                try:
                    label, bound = int(value or ""), int(next(iter(self.values)))
                except ValueError:
                    return False
                return label > bound if self.operator == ">" else label < bound


def _split_terms(text: str) -> list[str]:
    """Split on commas, except the commas inside `in (a,b)` sets."""
    terms, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:index])
            start = index + 1
    terms.append(text[start:])
    return [term.strip() for term in terms if term.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    requirements = []
    for term in _split_terms(text or ""):
        if match := _NOT_EXISTS.fullmatch(term):
            requirements.append(Requirement(match[1], "!"))
        elif match := _SET_BASED.fullmatch(term):
            values = frozenset(v.strip() for v in match[3].split(",") if v.strip())
            requirements.append(Requirement(match[1], match[2], values))
        elif match := _EQUALITY.fullmatch(term):
            operator = "=" if match[2] == "==" else match[2]
            if operator in "<>" and not match[3].isdigit():
                raise SelectorError(f"unable to parse requirement: {term!r}: value must be an integer")
            requirements.append(Requirement(match[1], operator, frozenset({match[3]})))
        elif match := _EXISTS.fullmatch(term):
            requirements.append(Requirement(match[1], "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {term!r}")
    return requirements


def parse_field_selector(text: str | None, supported: Collection[str]) -> list[tuple[str, str, str]]:
    """Parse `a.b=c,d!=e` into (field, operator, value); unsupported fields fail as in Kubernetes."""
    selectors = []
    for term in _split_terms(text or ""):
        match = re.fullmatch(r"([A-Za-z0-9_.\[\]/-]+)\s*(==|=|!=)\s*(.*)", term)
        if match is None:
            raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
        field, operator, value = match[1], "!=" if match[2] == "!=" else "=", match[3]
        if field not in supported:
            raise SelectorError(f'field label not supported: "{field}"')
        selectors.append((field, operator, value))
    return selectors


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field, "" when absent (as the API compares fields)."""
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, bool):
        return str(node).lower()
    return "" if node is None else str(node)


def make_matcher(
    label_selector: str | None, field_selector: str | None, supported_fields: Collection[str]
) -> Callable[[Mapping[str, Any]], bool]:
    """Parse both selectors once and return a predicate over objects; raises SelectorError."""
    requirements = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, supported_fields)

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not all(requirement.matches(labels) for requirement in requirements):
            return False
        return all((field_value(obj, f) == v) == (op == "=") for f, op, v in fields)

    return matches
