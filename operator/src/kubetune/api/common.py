"""Building blocks shared by both kinds: the base model, bounded string types and conditions.

Every constraint is declared once here and reaches both the typed model (pydantic checks it) and the CRD
(the generator copies it into the OpenAPI schema, CEL rules included), so the API server and the operator
agree on what is valid.
"""

from __future__ import annotations

import decimal as _decimal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import GroupedMetadata
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kubetune"

# RFC 1123 names as Kubernetes checks them.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# Kubernetes resource.Quantity, e.g. "500m", "2", "16Gi", "1.5G".
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"

# Storage URIs. Bucket names follow S3's rules; keys may not climb out of their prefix.
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()/=+@,:-]*)?"
_PVC = r"pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[A-Za-z0-9_.=+@,:-][A-Za-z0-9_./=+@,:-]*)?"
_HF = r"hf://[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(@[A-Za-z0-9_./-]{1,255})?"
MODEL_URI_PATTERN = f"^({_S3}|{_HF}|{_PVC})$"
DATA_URI_PATTERN = f"^({_S3}|{_PVC})$"
NO_TRAVERSAL_RULE = {
    # CEL's matches() searches anywhere in the string (RE2); character classes avoid escaping.
    "rule": "!self.matches('/[.][.]?(/|$)') && !self.matches('://.*//')",
    "message": "must not contain '.' or '..' path segments or empty segments",
}


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def section(model: type[ApiModel]) -> Any:
    """A spec section that is always there: left out, it is the section with its own defaults.

    The model fills it (`default_factory`) and the CRD says `default: {}`, so the API server stores the same
    values the operator and the trainer read; a section with required fields cannot be one.
    """
    return Field(default_factory=model, json_schema_extra={"default": {}})


class ResourceIdentity(ApiModel):
    """Which object a child belongs to: what owner references, child names and the trainer's records need."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 1

    @classmethod
    def of(cls, resource: Mapping[str, Any]) -> ResourceIdentity:
        """The identity of a resource as the API server returns it."""
        meta = resource["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
        )


def cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    """One CEL validation rule as `x-kubernetes-validations` carries it."""
    return {"rule": rule, "message": message, **extra}


def rules(*items: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(items)}


def _refuse_quoted_number(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(f"use a number, not the string {value!r} (for example learningRate: 2e-4)")
    return value


@dataclass(frozen=True)
class Decimal(GroupedMetadata):
    """A decimal field: a YAML/JSON number (`learningRate: 2e-4`), bounded alike in the model and the CRD.

    Use as `Annotated[float, Decimal(gt=0, le=1)]`. The CRD gets `type: number` with `minimum`/`maximum`,
    so the API server checks the bounds itself. A structural schema cannot also admit a quoted string
    for a number, so the model refuses one too, saying to use a number.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    description: str = ""

    def __iter__(self) -> Iterator[Any]:
        yield Field(
            strict=True,
            allow_inf_nan=False,
            gt=self.gt,
            ge=self.ge,
            lt=self.lt,
            le=self.le,
            description=self.description or None,
        )
        yield BeforeValidator(_refuse_quoted_number)


def decimal_text(value: float) -> str:
    """A decimal as people write it and as Kubernetes quantities accept it: 5.0 -> "5", 2e-4 -> "0.0002"."""
    return format(_decimal.Decimal(repr(value)).normalize(), "f")


DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
Quantity = Annotated[str, Field(max_length=32, pattern=QUANTITY_PATTERN)]
ModelUri = Annotated[
    str, Field(max_length=1024, pattern=MODEL_URI_PATTERN, json_schema_extra=rules(NO_TRAVERSAL_RULE))
]
DataUri = Annotated[
    str, Field(max_length=1024, pattern=DATA_URI_PATTERN, json_schema_extra=rules(NO_TRAVERSAL_RULE))
]
NodeSelector = Annotated[
    dict[Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)], LabelValue],
    Field(
        max_length=32,
        json_schema_extra=rules(
            cel(
                "self.all(k, size(k) <= 317 && k.matches('" + LABEL_KEY_PATTERN.replace("\\", "\\\\") + "'))",
                "keys must be valid label keys",
            ),
        ),
    ),
]


class SecretReference(ApiModel):
    """A Secret in the resource's own namespace. Its keys are mounted into pods; the operator never reads it."""

    name: DnsName


class LocalObjectReference(ApiModel):
    name: DnsName


class Toleration(ApiModel):
    key: Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)] | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0, le=31_536_000)] | None = None

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.operator != 'Exists' || !has(self.value)", "value must be empty when operator is Exists"
            ),
            cel("has(self.key) || self.operator == 'Exists'", "an empty key needs operator Exists"),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies only to effect NoExecute",
                fieldPath=".tolerationSeconds",
            ),
        )
    )


class Condition(ApiModel):
    """metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$")]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ]
    message: Annotated[str, Field(max_length=1024)] = ""
    last_transition_time: Annotated[str, Field(max_length=64)]
    observed_generation: Annotated[int, Field(ge=0)] | None = None


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class EphemeralCache(ApiModel):
    """A generic ephemeral volume: a PersistentVolumeClaim created with each pod and deleted with it."""

    storage_class_name: DnsName | None = Field(
        default=None, description="The StorageClass of each pod's claim; the cluster's default when unset"
    )
    size: Quantity = Field(description="The storage each pod's claim requests, e.g. 200Gi")


class ModelCache(ApiModel):
    """Where pods keep downloaded models (their /cache): a claim shared by pods, or a volume per pod.

    Only `pvc` is shared: across stages, retries, nodes and replicas, so a model is downloaded once. An
    `ephemeral` volume belongs to one pod and is gone with it (each pod downloads again); it only moves the
    model off the node's disk onto a StorageClass. Left out, pods use emptyDirs on the node's disk."""

    pvc: DnsName | None = Field(
        default=None,
        description=(
            "An existing PersistentVolumeClaim in the resource's namespace, owned by the user; kubetune keeps"
            " its files under kubetune/ in it and never deletes a finished download. ReadWriteMany for pods"
            " on several nodes at once (multi-node training, replicas); a ReadWriteOnce claim serves one"
            " node at a time: concurrent pods on other nodes cannot mount it and stay ContainerCreating"
        ),
    )
    ephemeral: EphemeralCache | None = Field(
        default=None, description="A volume per pod, NOT shared: every pod downloads the model again"
    )

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "has(self.pvc) != has(self.ephemeral)",
                "exactly one of spec.cache.pvc or spec.cache.ephemeral must be set",
            )
        )
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelCache:
        # The CEL rule again, so the typed model refuses exactly what the API server refuses.
        if (self.pvc is None) == (self.ephemeral is None):
            raise ValueError("exactly one of spec.cache.pvc or spec.cache.ephemeral must be set")
        return self
