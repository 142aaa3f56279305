"""CustomResourceDefinitions generated from the typed models: the models are the single source of truth.

pydantic's JSON Schema is turned into a Kubernetes structural schema: references inlined, optional
fields collapsed to their non-null form, `exclusiveMinimum` rewritten in OpenAPI v3.0 style, and the
CEL rules carried by the models kept as `x-kubernetes-validations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from kubetune.api.common import CATEGORY, GROUP, VERSION
from kubetune.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus

# Children are named "<name>-<suffix>" and the name is also a label value: keep room for the suffix.
MAX_NAME_LENGTH = 52

_DROPPED_KEYS = {"title", "propertyNames", "$defs"}
# Reads best top-down: what it is, then its limits, then its children, then its rules.
_KEY_ORDER = {
    key: rank
    for rank, key in enumerate(
        (
            "type",
            "description",
            "default",
            "enum",
            "format",
            "minimum",
            "exclusiveMinimum",
            "maximum",
            "exclusiveMaximum",
        )
    )
}


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def render(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    columns: tuple[PrinterColumn, ...]
    description: str
    root_rules: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")
FINE_TUNE_JOB = KindInfo(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    spec_model=FineTuneJobSpec,
    status_model=FineTuneJobStatus,
    description="Fine-tunes a base model on a dataset: validate, queue, train, evaluate, export.",
    columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Model", ".spec.baseModel.uri"),
        PrinterColumn("Method", ".spec.method"),
        PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent of training steps done"),
        PrinterColumn("Passed", ".status.evaluation.passed", "boolean", "Evaluation met every threshold"),
        PrinterColumn("Loss", ".status.progress.trainLoss", priority=1),
        _AGE,
    ),
)

MODEL_DEPLOYMENT = KindInfo(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("mdep",),
    spec_model=ModelDeploymentSpec,
    status_model=ModelDeploymentStatus,
    description="Serves a fine-tuned model with vLLM or TGI once its evaluation passed; canary rollouts.",
    columns=(
        PrinterColumn("Phase", ".status.phase"),
        PrinterColumn("Runtime", ".spec.runtime"),
        PrinterColumn("Revision", ".status.revision", "integer"),
        PrinterColumn("Canary", ".status.canaryWeight", "integer", "Percent of traffic on the new revision"),
        PrinterColumn("Endpoint", ".status.endpoint", priority=1),
        _AGE,
    ),
)

KINDS: tuple[KindInfo, ...] = (FINE_TUNE_JOB, MODEL_DEPLOYMENT)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as a Kubernetes structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **{k: v for k, v in extra.items() if k != "x-kubernetes-validations"}}
    validations = base.get("x-kubernetes-validations", []) + extra.get("x-kubernetes-validations", [])
    if validations:
        merged["x-kubernetes-validations"] = validations
    return merged


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = _merge(target, node)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union of {len(variants)} types in a structural schema")
        node = _merge(_convert(variants[0], defs), node)
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[bound.replace("exclusive", "").lower()] = node[bound]
            node[bound] = True
    if "properties" in node:
        node["properties"] = {name: _convert(sub, defs) for name, sub in node["properties"].items()}
    if "items" in node:
        node["items"] = _convert(node["items"], defs)
    if "patternProperties" in node:
        # Structural schemas have no patternProperties: the key pattern is enforced by a CEL rule instead.
        (value_schema,) = node.pop("patternProperties").values()
        node["additionalProperties"] = value_schema
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(node["additionalProperties"], defs)
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)  # structural schemas forbid both; unknown fields are pruned
    kept = {k: v for k, v in node.items() if k not in _DROPPED_KEYS}
    return dict(sorted(kept.items(), key=lambda item: _KEY_ORDER.get(item[0], len(_KEY_ORDER))))


def _resource_schema(info: KindInfo) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Kubernetes allows limits on metadata.name here, and nothing else.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": MAX_NAME_LENGTH}},
            },
            "spec": structural_schema(info.spec_model),
            "status": structural_schema(info.status_model),
        },
    }
    if info.root_rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in info.root_rules]
    return schema


def custom_resource_definition(info: KindInfo) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name, "labels": {"app.kubernetes.io/part-of": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [column.render() for column in info.columns],
                    "schema": {"openAPIV3Schema": _resource_schema(info)},
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [custom_resource_definition(info) for info in KINDS]
