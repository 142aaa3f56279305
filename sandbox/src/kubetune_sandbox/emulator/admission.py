"""Admission of custom resources as kube-apiserver performs it for an apiextensions.k8s.io/v1 CRD.

CRDAdmission compiles a CustomResourceDefinition once and then, for each create, update or status update,
does what the API server does between decoding a request body and storing it, for what our CRDs declare:

1. decoding: metadata must be an object; fields the schema does not declare refuse the request (400,
   'strict decoding error: unknown field "spec.foo"'), as fieldValidation=Strict does;
2. defaulting from `default`, also inside defaulted objects, array items and map values;
3. validation: the name, the OpenAPI schema (kube-openapi's rules and wording), `x-kubernetes-list-type`
   set/map uniqueness, then the CEL rules of `x-kubernetes-validations` (skipped, as Kubernetes does, once
   the schema has found a blocking error), transition rules (`oldSelf`) on updates.

There is no ratcheting (CRDValidationRatcheting): an update is validated as a whole. All errors found are
reported together, with the field paths and messages kube-apiserver prints, e.g.
`spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celpy import celtypes

from kubetune_sandbox.emulator.cel import (
    CelCompileError,
    CelEvaluationError,
    CelProgram,
    SetList,
    compile_cel,
    compile_re2,
    format_go_float,
)
from kubetune_sandbox.emulator.resources import DNS_SUBDOMAIN, DNS_SUBDOMAIN_MESSAGE
from kubetune_sandbox.emulator.store import ApiError, Obj, aggregate

__all__ = ["AdmissionError", "CRDAdmission", "FieldCause"]

# -------------------------- Field errors, worded as k8s.io/apimachinery/pkg/util/validation/field prints them
_OMIT = object()  # a field error without a value ("Too many: must have at most 3 items")
_NIL_PATH = "<nil>"  # how Go prints a nil *field.Path: errors about the whole object carry it

_ERROR_LABELS = {
    "FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value", "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden", "FieldValueTooLong": "Too long", "FieldValueTooMany": "Too many",
    "FieldValueTypeInvalid": "Invalid value",
}  # fmt: skip
_VALUELESS_ERRORS = frozenset({"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"})
# OpenAPI errors that keep CEL rules from running (customresource strategy's hasBlockingErr).
_BLOCKING_ERRORS = frozenset(
    {
        "FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany",
        "FieldValueTypeInvalid",
    }
)  # fmt: skip


def _quote(text: str) -> str:
    """A string as Go's %q prints it (for the printable text our messages carry)."""
    return json.dumps(text, ensure_ascii=False)


def _json(value: Any) -> str:
    """Compact JSON with sorted keys, as Go's json.Marshal writes decoded JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _format_value(value: Any) -> str:
    """A field error's bad value as ErrorBody prints it: numbers and booleans bare, strings quoted, else JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_go_float(value)
    if isinstance(value, str):
        return _quote(value)
    return _json(value)


@dataclass(frozen=True, slots=True)
class _FieldError:
    reason: str
    field: str
    value: Any = _OMIT
    detail: str = ""

    def body(self) -> str:
        label = _ERROR_LABELS[self.reason]
        text = (
            label
            if self.reason in _VALUELESS_ERRORS or self.value is _OMIT
            else f"{label}: {_format_value(self.value)}"
        )
        return f"{text}: {self.detail}" if self.detail else text

    def text(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> FieldCause:
        return FieldCause(field=self.field, reason=self.reason, message=self.text())


def _invalid(path: str, value: Any, detail: str) -> _FieldError:
    return _FieldError("FieldValueInvalid", path, value, detail)


def _required(path: str, detail: str = "") -> _FieldError:
    return _FieldError("FieldValueRequired", path, "", detail)


def _forbidden(path: str, detail: str) -> _FieldError:
    return _FieldError("FieldValueForbidden", path, "", detail)


def _duplicate(path: str, value: Any) -> _FieldError:
    return _FieldError("FieldValueDuplicate", path, value)


def _too_long(path: str, max_length: int) -> _FieldError:
    detail = f"may not be more than {max_length} {'byte' if max_length == 1 else 'bytes'}"
    return _FieldError("FieldValueTooLong", path, "<value omitted>", detail)


def _too_many(path: str, actual: int, maximum: int) -> _FieldError:
    unit = "item" if maximum == 1 else "items"
    return _FieldError("FieldValueTooMany", path, actual, f"must have at most {maximum} {unit}")


def _not_supported(path: str, value: Any, allowed: Sequence[Any]) -> _FieldError:
    names = [v if isinstance(v, str) else _json(v) for v in allowed]
    detail = "supported values: " + ", ".join(_quote(n) for n in names) if names else ""
    return _FieldError("FieldValueNotSupported", path, value, detail)


# Go's *field.Path: None is the nil path (printed "<nil>"); names join with dots, keys and indices in brackets.
def _child(path: str | None, name: str) -> str:
    return name if path is None else f"{path}.{name}"


def _key(path: str | None, key: str) -> str:
    return f"{path or ''}[{key}]"


def _index(path: str | None, index: int) -> str:
    return f"{path or ''}[{index}]"


def _shown(path: str | None) -> str:
    return _NIL_PATH if path is None else path


# --------------------------------------------------------------------------------------------- Public results
@dataclass(frozen=True)
class FieldCause:
    """One reason a custom resource was refused, as a Kubernetes StatusCause carries it."""

    field: str  # "spec.tolerations[0].key", "spec.thresholds[perplexity]", "<nil>" for the whole object
    reason: str  # FieldValueInvalid, FieldValueRequired, ... (FieldValueUnknown for strict decoding)
    message: str  # 'spec.method: Unsupported value: "foo": supported values: "lora", "qlora"'

    @property
    def detail(self) -> str:
        """The message without its field prefix: what Status.details.causes[].message holds."""
        prefix = f"{self.field}: "
        return self.message[len(prefix) :] if self.message.startswith(prefix) else self.message


class AdmissionError(Exception):
    """A custom resource refused by admission; `causes` lists every problem found."""

    def __init__(
        self, causes: Sequence[FieldCause], *, decoding_error: str | None = None, version: str = ""
    ) -> None:
        self.causes = list(causes)
        # Set when the body could not be decoded (unknown fields under Strict, malformed metadata):
        # kube-apiserver answers those with 400 BadRequest before validating anything.
        self.decoding_error = decoding_error
        self.version = version
        self.code = 422 if decoding_error is None else 400
        super().__init__(decoding_error or aggregate(cause.message for cause in self.causes))

    def to_error(
        self, *, kind: str, group: str, name: str, patched: Mapping[str, Any] | None = None
    ) -> ApiError:
        """The error kube-apiserver answers with. For a PATCH pass the patched object: strict decoding
        errors of patches come back as 422 Invalid on the field "patch" instead of 400 BadRequest."""
        if self.decoding_error is None:
            causes = [{"reason": c.reason, "message": c.detail, "field": c.field} for c in self.causes]
            return ApiError.invalid(kind, group, name, causes)
        if patched is not None:
            cause = _invalid("patch", _json(patched), self.decoding_error)
            return ApiError.invalid(
                "", "", "", [{"reason": cause.reason, "message": cause.body(), "field": "patch"}]
            )
        message = (
            f"{kind} in version {_quote(self.version)} cannot be handled as a {kind}: {self.decoding_error}"
        )
        return ApiError(400, "BadRequest", message)

    def to_status(self, *, kind: str, group: str, name: str, patched: Mapping[str, Any] | None = None) -> Obj:
        return self.to_error(kind=kind, group=group, name=name, patched=patched).status()


# ----------------------------------------------------------------------------------------- Structural schemas
@dataclass(frozen=True, slots=True)
class _RawRule:
    rule: str
    message: str
    field_path: str
    crd_path: str  # ...x-kubernetes-validations[i], for CRD errors
    declared: frozenset[str]  # the rule's fields as written


@dataclass(eq=False, slots=True)
class _Schema:
    """One node of a structural schema, with what validation, defaulting and pruning need precomputed."""

    crd_path: str
    type: str = ""
    has_default: bool = False
    default: Any = None
    enum: list[Any] | None = None
    maximum: float | None = None
    exclusive_maximum: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False
    max_length: int | None = None
    min_length: int | None = None
    pattern: str | None = None
    pattern_regex: Any = None
    max_items: int | None = None
    min_items: int | None = None
    max_properties: int | None = None
    required: tuple[str, ...] = ()
    properties: dict[str, _Schema] = field(default_factory=dict)
    additional_properties: _Schema | None = None
    items: _Schema | None = None
    list_type: str = ""  # "" means atomic
    list_map_key: str = ""
    raw_rules: tuple[_RawRule, ...] = ()
    defaults_below: bool = False  # this node or one below declares a default
    lists_below: bool = False  # a set or map list sits at or below this node
    cel_names: dict[str, str] = field(default_factory=dict)  # escaped CEL field name → property name


def _compile_schema(raw: Mapping[str, Any], crd_path: str, errors: list[str]) -> _Schema:
    s = _Schema(crd_path=crd_path)
    s.type = str(raw.get("type", ""))
    for keyword in _UNSUPPORTED_KEYWORDS.intersection(raw):
        errors.append(_forbidden(f"{crd_path}.{keyword}", _UNSUPPORTED_DETAIL).text())
    if "format" in raw:  # kube-apiserver knows ~30 formats; no CRD of ours declares one
        detail = "the kubetune API emulator validates no formats"
        errors.append(
            _FieldError("FieldValueNotSupported", f"{crd_path}.format", raw["format"], detail).text()
        )
    if "default" in raw:
        s.has_default, s.default = True, raw["default"]
    if "enum" in raw:
        s.enum = list(raw["enum"])
    for name in ("maximum", "minimum"):
        if raw.get(name) is not None:
            setattr(s, name, float(raw[name]))
    s.exclusive_maximum = bool(raw.get("exclusiveMaximum", False))
    s.exclusive_minimum = bool(raw.get("exclusiveMinimum", False))
    for raw_name, attribute in (
        ("maxLength", "max_length"),
        ("minLength", "min_length"),
        ("maxItems", "max_items"),
        ("minItems", "min_items"),
        ("maxProperties", "max_properties"),
    ):
        if raw.get(raw_name) is not None:
            setattr(s, attribute, int(raw[raw_name]))
    if raw.get("pattern") is not None:
        s.pattern = str(raw["pattern"])
        try:
            s.pattern_regex = compile_re2(s.pattern)
        except ValueError as error:
            detail = f"must be a valid regular expression: {error}"
            errors.append(_invalid(f"{crd_path}.pattern", s.pattern, detail).text())
    s.required = tuple(raw.get("required", ()))
    for name, child in (raw.get("properties") or {}).items():
        s.properties[name] = _compile_schema(child, f"{crd_path}.properties[{name}]", errors)
    additional = raw.get("additionalProperties")
    if isinstance(additional, Mapping):
        s.additional_properties = _compile_schema(additional, f"{crd_path}.additionalProperties", errors)
    if isinstance(raw.get("items"), Mapping):
        s.items = _compile_schema(raw["items"], f"{crd_path}.items", errors)
    list_type = raw.get("x-kubernetes-list-type")
    if list_type not in (None, "atomic", "set", "map"):
        errors.append(
            _not_supported(f"{crd_path}.x-kubernetes-list-type", list_type, ["atomic", "set", "map"]).text()
        )
    s.list_type = "" if list_type in (None, "atomic") else str(list_type)
    map_keys = list(raw.get("x-kubernetes-list-map-keys", ()))
    s.list_map_key = str(map_keys[0]) if map_keys else ""
    if s.list_type == "map" and not map_keys:
        detail = "must not be empty if x-kubernetes-list-type is map"
        errors.append(_required(f"{crd_path}.x-kubernetes-list-map-keys", detail).text())
    elif len(map_keys) > 1:  # our map lists are keyed by one field
        detail = "more than one key is not supported by the kubetune API emulator"
        errors.append(_forbidden(f"{crd_path}.x-kubernetes-list-map-keys", detail).text())
    s.raw_rules = tuple(_raw_rules(raw.get("x-kubernetes-validations") or (), crd_path))
    for rule in s.raw_rules:
        for name in _UNSUPPORTED_RULE_FIELDS:
            if name in rule.declared:
                errors.append(_forbidden(f"{rule.crd_path}.{name}", _UNSUPPORTED_DETAIL).text())
    children = [*s.properties.values(), s.additional_properties, s.items]
    present = [c for c in children if c is not None]
    s.defaults_below = s.has_default or any(c.defaults_below for c in present)
    s.lists_below = bool(s.list_type) or any(c.lists_below for c in present)
    s.cel_names = {escaped: name for name in s.properties if (escaped := _escape_cel_name(name)) is not None}
    return s


def _raw_rules(rules: Iterable[Mapping[str, Any]], crd_path: str) -> Iterator[_RawRule]:
    for i, rule in enumerate(rules):
        yield _RawRule(
            rule=str(rule.get("rule", "")),
            message=str(rule.get("message", "")),
            field_path=str(rule.get("fieldPath", "")),
            crd_path=f"{crd_path}.x-kubernetes-validations[{i}]",
            declared=frozenset(rule),
        )


# Schema features kube-apiserver has and no CRD of ours uses: a CRD declaring one is refused, never half-validated.
_UNSUPPORTED_KEYWORDS = frozenset(
    {
        "allOf", "anyOf", "oneOf", "not", "multipleOf", "nullable", "minProperties", "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    }
)  # fmt: skip
_UNSUPPORTED_RULE_FIELDS = ("messageExpression", "optionalOldSelf", "reason")
_UNSUPPORTED_DETAIL = "not supported by the kubetune API emulator"


# Stand-ins for what CEL sees at a resource root even when the schema does not declare it.
_STRING_SCHEMA = _Schema(crd_path="", type="string")
_METADATA_SCHEMA = _Schema(
    crd_path="",
    type="object",
    properties={"name": _STRING_SCHEMA, "generateName": _STRING_SCHEMA},
    cel_names={"name": "name", "generateName": "generateName"},
)


# ----------------------------------------------------------------------------------------- Small JSON helpers
def _copy_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_json(v) for v in value]
    return value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        # kube-apiserver decodes a number beyond int64 as a float: an integer field refuses it.
        return "integer" if -(2**63) <= value < 2**63 else "number"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    return "array"


# --------------------------------------------------------- Decoding: pruning, ObjectMeta coercion, defaulting
_META_FIELDS = frozenset({"apiVersion", "kind", "metadata"})


def _prune(value: Any, s: _Schema | None, path: str, unknown: list[str], resource_root: bool = False) -> None:
    """Drop fields the schema does not declare, recording their paths (pruning.PruneWithOptions)."""
    if isinstance(value, dict):
        for key in list(value):
            if resource_root and key in _META_FIELDS:
                continue
            child_path = f"{path}.{key}" if path else key
            if s is not None and key in s.properties:
                _prune(value[key], s.properties[key], child_path, unknown)
            elif s is not None and s.additional_properties is not None:
                _prune(value[key], s.additional_properties, child_path, unknown)
            else:
                unknown.append(child_path)
                del value[key]
    elif isinstance(value, list):
        items = s.items if s is not None else None
        for i, item in enumerate(value):
            _prune(item, items, f"{path}[{i}]", unknown)


def _prune_nulls(value: Any, s: _Schema | None) -> None:
    """Remove null map values whose field has no default (PruneNonNullableNullsWithoutDefaults)."""
    if s is None:
        return
    if isinstance(value, dict):
        for key in list(value):
            child_schema = s.properties.get(key, s.additional_properties)
            if value[key] is None and child_schema is not None and not child_schema.has_default:
                del value[key]
            else:
                _prune_nulls(value[key], child_schema)
    elif isinstance(value, list):
        for item in value:
            _prune_nulls(item, s.items)


def _apply_defaults(value: Any, s: _Schema | None) -> None:
    """structuraldefaulting.Default: fill absent (or null) fields, then recurse into the result."""
    if s is None or not s.defaults_below:
        return
    if isinstance(value, dict):
        for key, prop in s.properties.items():
            if prop.has_default and value.get(key) is None:
                value[key] = _copy_json(prop.default)
        for key in value:
            if key in s.properties:
                _apply_defaults(value[key], s.properties[key])
            elif s.additional_properties is not None:
                extra = s.additional_properties
                if value[key] is None and extra.has_default:
                    value[key] = _copy_json(extra.default)
                _apply_defaults(value[key], extra)
    elif isinstance(value, list) and s.items is not None:
        for i, item in enumerate(value):
            if item is None and s.items.has_default:
                value[i] = _copy_json(s.items.default)
            _apply_defaults(value[i], s.items)


# The types of the metadata fields a client may send; others are dropped as unknown fields.
_OBJECT_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "generateName": str, "namespace": str, "uid": str, "resourceVersion": str,
    "generation": int, "creationTimestamp": str, "deletionTimestamp": str, "deletionGracePeriodSeconds": int,
    "labels": dict, "annotations": dict, "ownerReferences": list, "finalizers": list, "managedFields": list,
}  # fmt: skip


def _undecodable(path: str, message: str, version: str) -> AdmissionError:
    """A body kube-apiserver cannot decode at all: 400 BadRequest."""
    cause = FieldCause(path, "FieldValueTypeInvalid", message)
    return AdmissionError([cause], decoding_error=message, version=version)


def _decode_object_meta(raw: Any, unknown: list[str], version: str) -> dict[str, Any]:
    """metadata as the API decodes it into ObjectMeta: an object of the right field types (else 400), unknown
    fields dropped and recorded, empty ones omitted. Nested values (labels, owner references) are not checked."""
    if not isinstance(raw, Mapping):
        raise _undecodable("metadata", "metadata must be an object", version)
    meta = {}
    for key, value in raw.items():
        expected = _OBJECT_META_TYPES.get(key)
        if expected is None:
            unknown.append(f"metadata.{key}")
        elif value in (None, "", 0, [], {}):
            continue  # omitted, as omitempty writes it
        elif not isinstance(value, expected) or isinstance(value, bool):
            raise _undecodable(f"metadata.{key}", f"metadata.{key} has the wrong type", version)
        else:
            meta[key] = _copy_json(value)
    return meta


# --------------- OpenAPI schema validation (kube-openapi's validator and the apiextensions error translation)
class _SchemaValidator:
    """kube-openapi's SchemaValidator walk, producing apiextensions' field errors.

    Paths inside messages are kube-openapi's ("spec.items[0]", map values "spec.labels.key"); the field of
    an error is that path under `prefix` (nil for the whole object, "status" for the status subresource).
    """

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix

    def _field(self, name: str) -> str:
        if name and name != ".":
            return _child(self.prefix, name.removeprefix("."))
        return _shown(self.prefix)

    def validate(self, s: _Schema, data: Any, path: str) -> list[_FieldError]:
        errors: list[_FieldError] = []
        type_error = self._check_type(s, data, path)
        if type_error is not None:
            errors.append(type_error)
        if data is None:
            errors.extend(self._check_enum(s, data, path))
            return errors
        kind = _json_kind(data)
        if kind == "string":
            errors.extend(self._check_string(s, data, path))
        elif kind in ("integer", "number"):
            errors.extend(self._check_number(s, data, path))
        elif kind == "array":
            errors.extend(self._check_array(s, data, path))
        errors.extend(self._check_enum(s, data, path))
        if kind == "object":
            errors.extend(self._check_object(s, data, path))
        return errors

    def _check_type(self, s: _Schema, data: Any, path: str) -> _FieldError | None:
        kind = _json_kind(data)
        # A whole float such as 2.0 is an integer to go-openapi.
        float_int = kind == "number" and s.type == "integer" and abs(data) <= 2**53 and data.is_integer()
        if not s.type or kind == s.type or float_int or (kind == "integer" and s.type == "number"):
            return None
        detail = f"{path} in body must be of type {s.type}: {_quote(kind)}"
        return _FieldError("FieldValueTypeInvalid", self._field(path), kind, detail)

    def _check_string(self, s: _Schema, data: str, path: str) -> list[_FieldError]:
        # go-openapi stops at the first failing string constraint.
        if s.max_length is not None and len(data) > s.max_length:
            return [_too_long(self._field(path), s.max_length)]
        if s.min_length is not None and len(data) < s.min_length:
            detail = f"{path} in body should be at least {s.min_length} chars long"
            return [_invalid(self._field(path), data, detail)]
        if s.pattern is not None and s.pattern_regex.search(data) is None:
            return [_invalid(self._field(path), data, f"{path} in body should match '{s.pattern}'")]
        return []

    def _check_number(self, s: _Schema, data: int | float, path: str) -> list[_FieldError]:
        errors = []
        if s.minimum is not None and (data <= s.minimum if s.exclusive_minimum else data < s.minimum):
            relation = "greater than" if s.exclusive_minimum else "greater than or equal to"
            errors.append(self._bound_error(path, data, relation, s.minimum))
        if s.maximum is not None and (data >= s.maximum if s.exclusive_maximum else data > s.maximum):
            relation = "less than" if s.exclusive_maximum else "less than or equal to"
            errors.append(self._bound_error(path, data, relation, s.maximum))
        return errors

    def _bound_error(self, path: str, data: int | float, relation: str, bound: float) -> _FieldError:
        # An integer is checked against a whole bound as an integer, which Go prints as one (1000000, not 1e+06).
        shown = str(int(bound)) if isinstance(data, int) and bound.is_integer() else format_go_float(bound)
        return _invalid(self._field(path), data, f"{path} in body should be {relation} {shown}")

    def _check_array(self, s: _Schema, data: list[Any], path: str) -> list[_FieldError]:
        errors: list[_FieldError] = []
        if s.items is not None:
            for i, item in enumerate(data):
                errors.extend(self.validate(s.items, item, f"{path}[{i}]"))
        if s.min_items is not None and len(data) < s.min_items:
            detail = f"{path} in body should have at least {s.min_items} items"
            errors.append(_invalid(self._field(path), len(data), detail))
        if s.max_items is not None and len(data) > s.max_items:
            errors.append(_too_many(self._field(path), len(data), s.max_items))
        return errors

    def _check_enum(self, s: _Schema, data: Any, path: str) -> list[_FieldError]:
        # reflect.DeepEqual on decoded JSON: 1 and 1.0 differ, as do true and 1.
        if not s.enum or any(_json(data) == _json(allowed) for allowed in s.enum):
            return []
        return [_not_supported(self._field(path), data, s.enum)]

    def _check_object(self, s: _Schema, data: Mapping[str, Any], path: str) -> list[_FieldError]:
        errors: list[_FieldError] = []
        if s.max_properties is not None and len(data) > s.max_properties:
            errors.append(_too_many(self._field(path), len(data), s.max_properties))
        if s.additional_properties is not None:
            for key, value in data.items():
                if key not in s.properties:
                    errors.extend(self.validate(s.additional_properties, value, f"{path}.{key}"))
        for name, prop in s.properties.items():
            if name in data:
                errors.extend(self.validate(prop, data[name], f"{path}.{name}" if path else name))
        for name in s.required:
            if name not in data:
                errors.append(_required(self._field(f"{path}.{name}")))
        return errors


# ------------------------------------------------------ Other structural checks: the name, list sets and maps
def _validate_name(meta: Mapping[str, Any], old_meta: Mapping[str, Any] | None) -> list[_FieldError]:
    """ValidateObjectMeta's name rules (labels, annotations and finalizers are not validated)."""
    name = meta.get("name", "")
    if old_meta is not None:
        same = name == old_meta.get("name", "")
        return [] if same else [_invalid("metadata.name", name, "field is immutable")]
    if not name:
        return [_required("metadata.name", "name or generateName is required")]
    if not DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
        return [_invalid("metadata.name", name, DNS_SUBDOMAIN_MESSAGE)]
    return []


def _validate_lists(value: Any, s: _Schema | None, path: str | None) -> list[_FieldError]:
    """listtype.ValidateListSetsAndMaps: items of set lists and keys of map lists must be unique."""
    if s is None or not s.lists_below:
        return []
    errors: list[_FieldError] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if key in s.properties:
                errors.extend(_validate_lists(child, s.properties[key], _child(path, key)))
            elif s.additional_properties is not None:
                errors.extend(_validate_lists(child, s.additional_properties, _key(path, key)))
    elif isinstance(value, list):
        if s.list_type == "set":
            errors.extend(_duplicate(_index(path, i), value[i]) for i in _repeated(value))
        elif s.list_type == "map":
            errors.extend(_validate_map_list(value, s, path))
        for i, item in enumerate(value):
            errors.extend(_validate_lists(item, s.items, _index(path, i)))
    return errors


def _repeated(values: Sequence[Any]) -> list[int]:
    """Indices of the second occurrence of each repeated value."""
    seen: dict[Any, int] = {}
    repeated = []
    for i, value in enumerate(values):
        key = "<omitted>" if value is _OMIT else _json(value)  # 1 and 1.0 stay distinct, as in Go
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            repeated.append(i)
    return repeated


def _validate_map_list(items: list[Any], s: _Schema, path: str | None) -> list[_FieldError]:
    for i, item in enumerate(items):
        if item is not None and not isinstance(item, Mapping):
            return [_invalid(_index(path, i), item, "must be an object for an array of list-type map")]
    keys = [(item or {}).get(s.list_map_key, _OMIT) for item in items]
    shown = [{} if key is _OMIT else {s.list_map_key: key} for key in keys]
    return [_duplicate(_index(path, i), shown[i]) for i in _repeated(keys)]


# --------------------------------------------------------------------------------------- CEL validation rules
@dataclass(eq=False, slots=True)
class _Rule:
    program: CelProgram
    rule: str
    message: str
    field_path: str  # normalised, "" when the error goes to the rule's own node

    @property
    def described(self) -> str:
        """How kube-apiserver names the rule in errors: its message, else its text."""
        return self.message or self.rule.strip()


@dataclass(eq=False, slots=True)
class _CelNode:
    """The rules of one schema node and of the nodes below it (only branches that hold rules)."""

    schema: _Schema  # types `self`
    rules: list[_Rule]
    resource_root: bool
    properties: dict[str, _CelNode]
    items: _CelNode | None
    additional_properties: _CelNode | None


_CEL_RESERVED = frozenset(
    {
        "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
        "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
    }
)  # fmt: skip
_CEL_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}


def _escape_cel_name(name: str) -> str | None:
    """The name a property has in CEL (cel.Escape), or None when CEL cannot reach it."""
    if not name or name[0].isdigit():
        return None
    if name in _CEL_RESERVED:
        return f"__{name}__"
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", name):
        return None
    return re.sub(r"__|[-./]", lambda m: _CEL_ESCAPES[m.group(0)], name)


def _cel_type_name(s: _Schema) -> str:
    if s.type == "object":
        return "map" if s.additional_properties is not None and not s.properties else "object"
    return {"integer": "int", "number": "double", "boolean": "bool", "array": "list"}.get(
        s.type, s.type or "dyn"
    )


class _CelCompiler:
    """Builds the tree of CEL rules of a schema, reporting invalid rules as CRD validation errors."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def build(
        self, rules_from: _Schema, typed_by: _Schema, resource_root: bool, uncorrelatable: str | None
    ) -> _CelNode | None:
        rules = []
        for raw in rules_from.raw_rules:
            rule = self._rule(raw, typed_by, resource_root, uncorrelatable)
            if rule is not None:
                rules.append(rule)
        properties: dict[str, _CelNode] = {}
        for name, child in rules_from.properties.items():
            typed_child = typed_by.properties.get(name)
            if typed_child is not None:
                node = self.build(child, typed_child, False, uncorrelatable)
                if node is not None:
                    properties[name] = node
        items = None
        if rules_from.items is not None and typed_by.items is not None:
            # List items are not matched with their previous version (no oldSelf there; map lists would allow it).
            items = self.build(rules_from.items, typed_by.items, False, uncorrelatable or typed_by.crd_path)
        additional = None
        if rules_from.additional_properties is not None and typed_by.additional_properties is not None:
            extra = typed_by.additional_properties
            additional = self.build(rules_from.additional_properties, extra, False, uncorrelatable)
        if not (rules or properties or items or additional):
            return None
        return _CelNode(typed_by, rules, resource_root, properties, items, additional)

    def _fail(self, path: str, value: Any, detail: str) -> None:
        self.errors.append(_invalid(path, value, detail).text())

    def _rule(
        self, raw: _RawRule, s: _Schema, resource_root: bool, uncorrelatable: str | None
    ) -> _Rule | None:
        field_path = ""
        if raw.field_path:
            try:
                field_path = _normalise_field_path(raw.field_path, s)
            except ValueError:
                self._fail(f"{raw.crd_path}.fieldPath", raw.field_path, "must be a valid path")
        program = self._compile(raw.rule, s, resource_root, f"{raw.crd_path}.rule", "compilation failed")
        if program is None:
            return None
        if program.uses_old_self and uncorrelatable is not None:
            self._fail(
                f"{raw.crd_path}.rule",
                raw.rule,
                f"oldSelf cannot be used on the uncorrelatable portion of the schema within {uncorrelatable}",
            )
        return _Rule(program, raw.rule, raw.message.strip(), field_path)

    def _compile(
        self, source: str, s: _Schema, resource_root: bool, path: str, label: str
    ) -> CelProgram | None:
        try:
            program = compile_cel(source)
            for selection in program.selections:
                _check_selection(s, resource_root, selection.names, selection.line, selection.column)
        except CelCompileError as error:
            self._fail(path, source, f"{label}: {error}")
            return None
        return program


def _check_selection(s: _Schema, resource_root: bool, names: Sequence[str], line: int, column: int) -> None:
    """cel-go's type check of `self.a.b`: every selected field must be declared (escaped names)."""
    current, root = s, resource_root
    for name in names:
        if root and name in ("apiVersion", "kind"):
            current, root = _STRING_SCHEMA, False
            continue
        if root and name == "metadata":
            current, root = _METADATA_SCHEMA, False
            continue
        if current.type == "object" and (current.properties or current.additional_properties is None):
            prop_name = current.cel_names.get(name)
            if prop_name is None:
                raise CelCompileError(f"ERROR: <input>:{line}:{column}: undefined field '{name}'")
            current, root = current.properties[prop_name], False
        elif current.type == "object" and current.additional_properties is not None:
            current, root = current.additional_properties, False
        else:
            kind = _cel_type_name(current)
            raise CelCompileError(
                f"ERROR: <input>:{line}:{column}: type '{kind}' does not support field selection"
            )


def _normalise_field_path(path: str, s: _Schema) -> str:
    """cel.ValidFieldPath for `.a.b` (the bracket form `['a']` is not supported), as a field.Path string."""
    if not path.startswith(".") or path.endswith("."):
        raise ValueError("does not refer to a valid field")
    result: str | None = None
    current = s
    for name in path[1:].split("."):
        if name in current.properties:
            result, current = _child(result, name), current.properties[name]
        elif current.additional_properties is not None and not current.properties and name:
            result, current = _key(result, name), current.additional_properties
        else:
            raise ValueError("does not refer to a valid field")
    return result or ""


class _CelValidator:
    """Runs the rule tree over an object (cel.Validator.Validate), with oldSelf on updates."""

    def __init__(self) -> None:
        self.errors: list[_FieldError] = []

    def run(self, node: _CelNode, value: Any, old: Any, path: str | None) -> None:
        if value is None:
            return  # rules see only present, non-null values
        if node.rules:
            self._evaluate(node, value, old, path)
        if isinstance(value, list) and node.items is not None:
            for i, item in enumerate(value):
                self.run(node.items, item, None, _index(path, i))  # list items have no oldSelf
        elif isinstance(value, dict):
            old_map = old if isinstance(old, Mapping) else {}
            # Declared properties in schema order (Kubernetes walks a Go map: any order), then map entries.
            children = [(key, n, _child(path, key)) for key, n in node.properties.items() if key in value]
            if node.additional_properties is not None:
                extra = node.additional_properties
                declared = node.schema.properties
                children += [(key, extra, _key(path, key)) for key in value if key not in declared]
            for key, child_node, child_path in children:
                self.run(child_node, value[key], old_map.get(key), child_path)

    def _evaluate(self, node: _CelNode, value: Any, old: Any, path: str | None) -> None:
        self_value = self._to_cel(value, node.schema, node.resource_root)
        old_value: Any = None
        for rule in node.rules:
            if rule.program.uses_old_self and old is None:
                continue  # transition rules need a previous value
            variables: dict[str, Any] = {"self": self_value}
            if rule.program.uses_old_self:
                if old_value is None:
                    old_value = self._to_cel(old, node.schema, node.resource_root)
                variables["oldSelf"] = old_value
            try:
                result = rule.program.evaluate(variables)
            except CelEvaluationError as error:
                detail = f"{error} evaluating rule: {rule.described}"
                self.errors.append(_invalid(_shown(path), node.schema.type, detail))
                continue
            if not isinstance(result, (bool, celtypes.BoolType)):
                detail = (
                    f"rule evaluated to {type(result).__name__}, not bool, evaluating rule: {rule.described}"
                )
                self.errors.append(_invalid(_shown(path), node.schema.type, detail))
            elif not result:
                target = _child(path, rule.field_path) if rule.field_path else _shown(path)
                detail = rule.message or f"failed rule: {rule.rule.strip()}"
                self.errors.append(_invalid(target, node.schema.type, detail))

    def _to_cel(self, value: Any, s: _Schema, resource_root: bool = False) -> Any:
        """A JSON value as CEL sees it under schema `s` (UnstructuredToVal)."""
        if value is None:
            return None
        if s.type == "object" and isinstance(value, Mapping):
            if resource_root or s.properties:
                return self._to_cel_object(value, s, resource_root)
            if s.additional_properties is not None:
                extra = s.additional_properties
                return celtypes.MapType(
                    {celtypes.StringType(k): self._to_cel(v, extra) for k, v in value.items()}
                )
            return celtypes.MapType({})
        if s.type == "array" and isinstance(value, list) and s.items is not None:
            items = [self._to_cel(v, s.items) for v in value]
            # Set lists compare in any order, as in Kubernetes; map lists compare as plain lists.
            return SetList(items) if s.list_type == "set" else celtypes.ListType(items)
        if s.type == "string" and isinstance(value, str):
            return celtypes.StringType(value)
        if s.type == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return celtypes.DoubleType(float(value))
        if s.type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not -(2**63) <= int(value) < 2**63:
                # JSON decodes it as a float in kube-apiserver; the schema walk reports the type error.
                return celtypes.DoubleType(float(value))
            return celtypes.IntType(int(value))
        if s.type == "boolean" and isinstance(value, bool):
            return celtypes.BoolType(value)
        return None  # a value of the wrong type: the schema walk reported it, and rules did not run

    def _to_cel_object(self, value: Mapping[str, Any], s: _Schema, resource_root: bool) -> Any:
        fields: dict[Any, Any] = {}
        for escaped, name in s.cel_names.items():
            if name in value:
                prop = s.properties[name]
                fields[celtypes.StringType(escaped)] = self._to_cel(value[name], prop)
        if resource_root:
            # apiVersion, kind, metadata.name and metadata.generateName are always visible at a resource root.
            for key in ("apiVersion", "kind"):
                if isinstance(value.get(key), str):
                    fields[celtypes.StringType(key)] = celtypes.StringType(value[key])
            metadata = value.get("metadata")
            if isinstance(metadata, Mapping):
                fields[celtypes.StringType("metadata")] = celtypes.MapType(
                    {
                        celtypes.StringType(k): celtypes.StringType(metadata[k])
                        for k in ("name", "generateName")
                        if isinstance(metadata.get(k), str)
                    }
                )
        return celtypes.MapType(fields)


# ------------------------------------------------------------------------------------------------- The engine
@dataclass(eq=False, slots=True)
class _Version:
    schema: _Schema | None
    cel: _CelNode | None


class CRDAdmission:
    """Admission for the custom resources of one CustomResourceDefinition (apiextensions.k8s.io/v1).

    Compiles schemas and CEL rules of every served version once; `admit` then prunes, defaults and
    validates an object as kube-apiserver does and raises AdmissionError listing every problem found.
    A CRD with invalid rules or schemas raises ValueError, naming what kube-apiserver would refuse.
    """

    def __init__(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        self.group: str = spec["group"]
        self.kind: str = spec["names"]["kind"]
        errors: list[str] = []
        if spec.get("preserveUnknownFields"):
            errors.append(_forbidden("spec.preserveUnknownFields", _UNSUPPORTED_DETAIL).text())
        if len(spec.get("versions", [])) > 1:  # ours have one; discovery then needs no version priorities
            errors.append(
                _forbidden("spec.versions", "more than one version is " + _UNSUPPORTED_DETAIL).text()
            )
        self._versions: dict[str, _Version] = {}
        for i, version in enumerate(spec.get("versions", [])):
            if version.get("served", True):
                self._versions[version["name"]] = self._compile_version(version, i, errors)
        if errors:
            name = _quote(crd.get("metadata", {}).get("name", ""))
            raise ValueError(
                f"CustomResourceDefinition.apiextensions.k8s.io {name} is invalid: {aggregate(errors)}"
            )

    @staticmethod
    def _compile_version(version: Mapping[str, Any], index: int, errors: list[str]) -> _Version:
        raw_schema = (version.get("schema") or {}).get("openAPIV3Schema")
        schema = cel = None
        if raw_schema is not None:
            crd_path = f"spec.versions[{index}].schema.openAPIV3Schema"
            schema = _compile_schema(raw_schema, crd_path, errors)
            _prune_defaults(schema)
            cel = _CelCompiler(errors).build(schema, schema, True, None)
        if "scale" in (version.get("subresources") or {}):
            scale = f"spec.versions[{index}].subresources.scale"
            errors.append(_forbidden(scale, _UNSUPPORTED_DETAIL).text())
        return _Version(schema, cel)

    def admit(
        self,
        obj: Mapping[str, Any],
        old: Mapping[str, Any] | None = None,
        *,
        version: str,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Return a new dict: pruned, defaulted and validated. Raise AdmissionError listing all causes found.

        `old` is the stored object on updates (None on create); `subresource="status"` validates a status
        update as the status strategy does. Call it where kube-apiserver validates: with a status subresource,
        after status (main resource) or everything but status (status writes) has been reset to the stored
        values.
        """
        served = self._versions[version]  # the server serves only these
        work: dict[str, Any] = _copy_json(obj)
        work.setdefault("apiVersion", f"{self.group}/{version}")
        work.setdefault("kind", self.kind)
        unknown = self._decode(work, served, version)
        if unknown:  # fieldValidation=Strict, whatever the client asked
            causes = [FieldCause(path, "FieldValueUnknown", f'unknown field "{path}"') for path in unknown]
            detail = "strict decoding error: " + ", ".join(c.message for c in causes)
            raise AdmissionError(causes, decoding_error=detail, version=version)
        _apply_defaults(work, served.schema)
        errors = self._validate(work, old, served, subresource)
        if errors:
            raise AdmissionError([e.cause() for e in errors], version=version)
        return work

    def _decode(self, work: dict[str, Any], served: _Version, version: str) -> list[str]:
        """Prune and coerce as the CR codec does; return the unknown fields' paths in kube-apiserver's order."""
        unknown_meta: list[str] = []
        unknown_fields: list[str] = []
        if work.get("metadata") is not None:
            work["metadata"] = _decode_object_meta(work["metadata"], unknown_meta, version)
        _prune(work, served.schema, "", unknown_fields, resource_root=True)
        _prune_nulls(work, served.schema)
        return unknown_meta + sorted(unknown_fields)

    @staticmethod
    def _validate(
        obj: Obj, old: Mapping[str, Any] | None, served: _Version, subresource: str | None
    ) -> list[_FieldError]:
        # apiVersion and kind need no check: admit() fills them in and the server refuses bodies that differ.
        old_meta = (old.get("metadata") or {}) if old is not None else None
        errors = _validate_name(obj.get("metadata") or {}, old_meta)
        schema = served.schema
        if subresource == "status":
            # The status strategy validates only the status against the schema, under the path "status".
            status_schema = schema.properties.get("status") if schema is not None else None
            if status_schema is not None and "status" in obj:
                errors.extend(_SchemaValidator("status").validate(status_schema, obj["status"], ""))
        elif schema is not None:
            errors.extend(_SchemaValidator(None).validate(schema, obj, ""))
        errors.extend(_validate_lists(obj, schema, None))
        if served.cel is not None:
            if any(e.reason in _BLOCKING_ERRORS for e in errors):
                detail = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
                errors.append(_invalid(_NIL_PATH, None, detail))
            else:
                validator = _CelValidator()
                validator.run(served.cel, obj, old, None)
                errors.extend(validator.errors)
        return errors


def _prune_defaults(s: _Schema) -> None:
    """structuraldefaulting.PruneDefaults: defaults lose the fields their schema does not declare."""
    if s.has_default:
        s.default = _copy_json(s.default)
        _prune(s.default, s, "", [])
    for child in (*s.properties.values(), s.additional_properties, s.items):
        if child is not None:
            _prune_defaults(child)
