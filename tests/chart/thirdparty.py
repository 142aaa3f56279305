"""Structural checks for the third-party kinds the chart renders, which kubernetes-validate cannot validate.

Each schema lists a subset of the fields the upstream CRD (Prometheus Operator, monitoring.coreos.com/v1)
defines, closed with additionalProperties false: a typo or a field in the wrong place fails, as it would
with the API server's strict field validation. Field names follow the upstream CRDs.
"""

from __future__ import annotations

from typing import Any

import jsonschema

DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
NAME = {
    "type": "string",
    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    "maxLength": 253,
}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": required or [],
    }


METADATA = _closed(
    {"name": NAME, "namespace": NAME, "labels": LABELS, "annotations": LABELS}, ["name", "namespace"]
)
LABEL_SELECTOR = _closed({
    "matchLabels": LABELS,
    "matchExpressions": {"type": "array", "items": _closed({
        "key": {"type": "string"},
        "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        "values": {"type": "array", "items": {"type": "string"}},
    }, ["key", "operator"])},
})  # fmt: skip
NAMESPACE_SELECTOR = _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": NAME}})
RELABEL = _closed({
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"},
    "targetLabel": {"type": "string"},
    "regex": {"type": "string"},
    "modulus": {"type": "integer"},
    "replacement": {"type": "string"},
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"]},
})  # fmt: skip
ENDPOINT = {
    "port": {"type": "string"},
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https"]},
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "honorLabels": {"type": "boolean"},
    "relabelings": {"type": "array", "items": RELABEL},
    "metricRelabelings": {"type": "array", "items": RELABEL},
}


def _object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


RULE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
        "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
        "expr": {"type": "string", "minLength": 1},
        "for": DURATION,
        "keep_firing_for": DURATION,
        "labels": LABELS,
        "annotations": LABELS,
    },
    "required": ["expr"],
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _object("ServiceMonitor", _closed({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": NAMESPACE_SELECTOR,
        "jobLabel": {"type": "string"},
        "endpoints": {"type": "array", "minItems": 1, "items": _closed(ENDPOINT, ["port"])},
    }, ["selector", "endpoints"])),
    "PodMonitor": _object("PodMonitor", _closed({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": NAMESPACE_SELECTOR,
        "jobLabel": {"type": "string"},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _closed(ENDPOINT, ["port"])},
    }, ["selector", "podMetricsEndpoints"])),
    "PrometheusRule": _object("PrometheusRule", _closed({
        "groups": {"type": "array", "minItems": 1, "items": _closed({
            "name": {"type": "string", "minLength": 1},
            "interval": DURATION,
            "rules": {"type": "array", "minItems": 1, "items": RULE},
        }, ["name", "rules"])},
    }, ["groups"])),
}  # fmt: skip

THIRD_PARTY_KINDS = frozenset(SCHEMAS)


def structural_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMAS[document["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
