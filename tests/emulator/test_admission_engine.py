"""The CRD admission engine against a synthetic CRD: what kube-apiserver would answer, field by field."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from kubetune_sandbox.emulator.admission import AdmissionError, CRDAdmission, FieldCause
from kubetune_sandbox.emulator.cel import CelCompileError, CelEvaluationError, compile_cel

GROUP, KIND, VERSION = "example.dev", "Widget", "v1"


def _string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def _rules(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["method", "dataset"],
    **_rules(
        {
            "rule": "self.method != 'qlora' || self.gpus > 0",
            "message": "qlora needs a GPU",
            "fieldPath": ".gpus",
        },
        {
            "rule": "!has(self.learningRate) || double(self.learningRate) < 1.0",
            "message": "learningRate must be < 1",
        },
    ),
    "properties": {
        "method": _string(
            enum=["lora", "qlora", "full"],
            **_rules({"rule": "self == oldSelf", "message": "method is immutable"}),
        ),
        "name": _string(minLength=2, maxLength=8, pattern="^[a-z]+$"),
        "replicas": {"type": "integer", "minimum": 1, "maximum": 16, "default": 1},
        "gpus": {"type": "integer", "minimum": 0, "default": 0},
        "warmup": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
        "learningRate": _string(pattern="^[0-9.eE+-]+$"),
        "dataset": {
            "type": "object",
            "required": ["uri"],
            "properties": {"uri": _string(maxLength=64), "format": _string(default="jsonl")},
        },
        "resources": {
            "type": "object",
            "default": {},
            "properties": {"cpu": _string(default="1"), "memory": _string(default="1Gi")},
        },
        "tags": {"type": "array", "maxItems": 3, "x-kubernetes-list-type": "set", "items": _string()},
        "stages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {"name": _string(), "epochs": {"type": "integer", "default": 1}},
            },
        },
        "tolerations": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["key"],
            "items": {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": _string(),
                    "seconds": {"type": "integer"},
                },
                **_rules(
                    {
                        "rule": "!has(self.seconds) || self.seconds >= 0",
                        "message": "seconds must not be negative",
                    }
                ),
            },
        },
        "thresholds": {
            "type": "object",
            "maxProperties": 2,
            "additionalProperties": {
                "type": "number",
                "default": 0.5,
                **_rules({"rule": "self <= 1.0", "message": "at most 1"}),
            },
        },
        "labels": {"type": "object", "additionalProperties": _string()},
    },
}

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"kind": KIND, "plural": "widgets", "singular": "widget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        **_rules(
                            {
                                "rule": "self.metadata.name.startsWith('w')",
                                "message": "name must start with w",
                            }
                        ),
                        "properties": {
                            "apiVersion": _string(),
                            "kind": _string(),
                            "metadata": {"type": "object"},
                            "spec": SPEC_SCHEMA,
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": _string(enum=["Pending", "Running", "Done"]),
                                    "replicas": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}

ENGINE = CRDAdmission(CRD)


def widget(**spec: Any) -> dict[str, Any]:
    base_spec: dict[str, Any] = {"method": "lora", "dataset": {"uri": "s3://bucket/data.jsonl"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "w1", "namespace": "default"},
        "spec": {**base_spec, **spec},
    }


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return ENGINE.admit(obj, old, version=VERSION, **options)


def refused(obj: dict[str, Any], old: dict[str, Any] | None = None, **options: Any) -> AdmissionError:
    with pytest.raises(AdmissionError) as caught:
        admit(obj, old, **options)
    return caught.value


def messages(error: AdmissionError) -> list[str]:
    return [cause.message for cause in error.causes]


def small(**spec: Any) -> dict[str, Any]:
    """An object for the CRDs of crd_with_rules."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "w1"}, "spec": spec}


def crd_with_rules(*rules: dict[str, Any], properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small CRD whose spec carries the given rules."""
    crd = copy.deepcopy(CRD)
    spec = {
        "type": "object",
        "properties": properties or {"a": _string()},
        "x-kubernetes-validations": list(rules),
    }
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {"type": "object", "properties": {"spec": spec}}
    return crd


# ---------------------------------------------------------------------------------------------------------
# Defaulting and pruning
# ---------------------------------------------------------------------------------------------------------


def test_defaults_are_applied_to_absent_fields_recursively() -> None:
    admitted = admit(widget(stages=[{"name": "sft"}], thresholds={"perplexity": None, "rouge": 0.3}))

    spec = admitted["spec"]
    assert spec["replicas"] == 1
    assert spec["dataset"] == {"uri": "s3://bucket/data.jsonl", "format": "jsonl"}
    # A defaulted object is itself defaulted, as kube-apiserver does.
    assert spec["resources"] == {"cpu": "1", "memory": "1Gi"}
    assert spec["stages"] == [{"name": "sft", "epochs": 1}]
    # A null map value of a non-nullable schema with a default gets the default.
    assert spec["thresholds"] == {"perplexity": 0.5, "rouge": 0.3}


def test_nulls_are_defaulted_or_pruned() -> None:
    admitted = admit(widget(replicas=None, name=None))

    assert admitted["spec"]["replicas"] == 1  # has a default: defaulted
    assert "name" not in admitted["spec"]  # no default: pruned


def test_admit_returns_a_new_object_and_leaves_the_input_alone() -> None:
    obj = widget(resources={})
    before = copy.deepcopy(obj)

    admitted = admit(obj)

    assert obj == before
    assert admitted is not obj


def test_unknown_fields_refuse_the_request_under_strict() -> None:
    obj = widget(extra="x", dataset={"uri": "s3://b/k", "mirror": "x"}, stages=[{"name": "a", "bad": 1}])
    obj["metadata"]["bogus"] = 1

    error = refused(obj)

    assert error.code == 400
    assert [c.field for c in error.causes] == [
        "metadata.bogus",
        "spec.dataset.mirror",
        "spec.extra",
        "spec.stages[0].bad",
    ]
    assert error.causes[1] == FieldCause(
        "spec.dataset.mirror", "FieldValueUnknown", 'unknown field "spec.dataset.mirror"'
    )
    status = error.to_status(kind=KIND, group=GROUP, name="w1")
    assert status["code"] == 400 and status["reason"] == "BadRequest"
    assert status["message"] == (
        'Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown field "metadata.bogus", '
        'unknown field "spec.dataset.mirror", unknown field "spec.extra", unknown field "spec.stages[0].bad"'
    )


def test_strict_errors_of_a_patch_are_worded_as_kube_apiserver_words_them() -> None:
    error = refused(widget(extra="x"))

    status = error.to_status(kind=KIND, group=GROUP, name="w1", patched={"spec": {"extra": "x"}})

    assert status["code"] == 422
    assert status["message"] == (
        ' "" is invalid: patch: Invalid value: "{\\"spec\\":{\\"extra\\":\\"x\\"}}": '
        'strict decoding error: unknown field "spec.extra"'
    )


def test_malformed_metadata_cannot_be_decoded() -> None:
    obj = widget()
    obj["metadata"]["labels"] = ["team"]

    error = refused(obj)

    assert error.code == 400
    assert error.causes[0].field == "metadata.labels"
    assert "metadata.labels has the wrong type" in error.causes[0].message


# ---------------------------------------------------------------------------------------------------------
# OpenAPI schema validation
# ---------------------------------------------------------------------------------------------------------

SCHEMA_CASES = [
    pytest.param(
        {"method": "foo"},
        "spec.method",
        "FieldValueNotSupported",
        'spec.method: Unsupported value: "foo": supported values: "lora", "qlora", "full"',
        id="enum",
    ),
    pytest.param(
        {"dataset": {}},
        "spec.dataset.uri",
        "FieldValueRequired",
        "spec.dataset.uri: Required value",
        id="required",
    ),
    pytest.param(
        {"name": "Ab"},
        "spec.name",
        "FieldValueInvalid",
        "spec.name: Invalid value: \"Ab\": spec.name in body should match '^[a-z]+$'",
        id="pattern",
    ),
    pytest.param(
        {"name": "abcdefghi"},
        "spec.name",
        "FieldValueTooLong",
        "spec.name: Too long: may not be more than 8 bytes",
        id="maxLength",
    ),
    pytest.param(
        {"name": "a"},
        "spec.name",
        "FieldValueInvalid",
        'spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long',
        id="minLength",
    ),
    pytest.param(
        {"replicas": 0},
        "spec.replicas",
        "FieldValueInvalid",
        "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1",
        id="minimum",
    ),
    pytest.param(
        {"replicas": 17},
        "spec.replicas",
        "FieldValueInvalid",
        "spec.replicas: Invalid value: 17: spec.replicas in body should be less than or equal to 16",
        id="maximum",
    ),
    pytest.param(
        {"warmup": 0},
        "spec.warmup",
        "FieldValueInvalid",
        "spec.warmup: Invalid value: 0: spec.warmup in body should be greater than 0",
        id="exclusiveMinimum",
    ),
    pytest.param(
        {"replicas": "two"},
        "spec.replicas",
        "FieldValueTypeInvalid",
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"',
        id="type",
    ),
    pytest.param(
        {"gpus": True},
        "spec.gpus",
        "FieldValueTypeInvalid",
        'spec.gpus: Invalid value: "boolean": spec.gpus in body must be of type integer: "boolean"',
        id="boolean-is-not-integer",
    ),
    pytest.param(
        {"tags": ["a", "b", "c", "d"]},
        "spec.tags",
        "FieldValueTooMany",
        "spec.tags: Too many: 4: must have at most 3 items",
        id="maxItems",
    ),
    pytest.param(
        {"stages": []},
        "spec.stages",
        "FieldValueInvalid",
        "spec.stages: Invalid value: 0: spec.stages in body should have at least 1 items",
        id="minItems",
    ),
    pytest.param(
        {"thresholds": {"a": 0.1, "b": 0.2, "c": 0.3}},
        "spec.thresholds",
        "FieldValueTooMany",
        "spec.thresholds: Too many: 3: must have at most 2 items",
        id="maxProperties",
    ),
    pytest.param(
        {"labels": {"team": 1}},
        "spec.labels.team",
        "FieldValueTypeInvalid",
        'spec.labels.team: Invalid value: "integer": spec.labels.team in body must be of type string: "integer"',
        id="additionalProperties-value",
    ),
    pytest.param(
        {"stages": [{"name": "a", "epochs": "x"}]},
        "spec.stages[0].epochs",
        "FieldValueTypeInvalid",
        'spec.stages[0].epochs: Invalid value: "string": spec.stages[0].epochs in body must be of type integer: "string"',
        id="array-item",
    ),
    pytest.param(
        {"tags": ["a", "b", "a"]},
        "spec.tags[2]",
        "FieldValueDuplicate",
        'spec.tags[2]: Duplicate value: "a"',
        id="list-set",
    ),
    pytest.param(
        {"tolerations": [{"key": "gpu"}, {"key": "gpu", "seconds": 1}]},
        "spec.tolerations[1]",
        "FieldValueDuplicate",
        'spec.tolerations[1]: Duplicate value: {"key":"gpu"}',
        id="list-map",
    ),
]


@pytest.mark.parametrize(("spec", "field", "reason", "message"), SCHEMA_CASES)
def test_schema_violations_name_the_field(
    spec: dict[str, Any], field: str, reason: str, message: str
) -> None:
    error = refused(widget(**spec))

    assert error.code == 422
    assert FieldCause(field, reason, message) in error.causes, messages(error)


def test_an_invalid_object_reports_all_causes_at_once() -> None:
    error = refused(widget(method="qlora", name="A1", warmup=-1, replicas=99, learningRate="0.5e1"))

    assert messages(error) == [
        "spec.name: Invalid value: \"A1\": spec.name in body should match '^[a-z]+$'",
        "spec.replicas: Invalid value: 99: spec.replicas in body should be less than or equal to 16",
        "spec.warmup: Invalid value: -1: spec.warmup in body should be greater than 0",
        'spec.gpus: Invalid value: "object": qlora needs a GPU',
        'spec: Invalid value: "object": learningRate must be < 1',
    ]
    status = error.to_status(kind=KIND, group=GROUP, name="w1")
    assert status["message"] == f'Widget.example.dev "w1" is invalid: [{", ".join(messages(error))}]'
    assert status["details"]["causes"][0] == {
        "reason": "FieldValueInvalid",
        "message": "Invalid value: \"A1\": spec.name in body should match '^[a-z]+$'",
        "field": "spec.name",
    }


def test_status_of_a_single_cause_is_not_bracketed() -> None:
    error = refused(widget(method="foo"))
    # NotSupported blocks the CEL rules, which adds kube-apiserver's own note.
    assert messages(error)[-1] == (
        "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
        "correct the existing errors to complete validation"
    )

    single = refused(widget(name="A1"))
    status = single.to_status(kind=KIND, group=GROUP, name="w1")
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Widget.example.dev "w1" is invalid: spec.name: Invalid value: "A1": spec.name in body should match \'^[a-z]+$\'',
        "reason": "Invalid",
        "details": {
            "name": "w1",
            "group": GROUP,
            "kind": KIND,
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: \"A1\": spec.name in body should match '^[a-z]+$'",
                    "field": "spec.name",
                }
            ],
        },
        "code": 422,
    }


def test_null_array_items_are_type_errors() -> None:
    error = refused(widget(tags=["a", None]))

    assert (
        'spec.tags[1]: Invalid value: "null": spec.tags[1] in body must be of type string: "null"'
        in messages(error)
    )


# ---------------------------------------------------------------------------------------------------------
# CEL validation rules
# ---------------------------------------------------------------------------------------------------------


def test_rule_errors_use_the_field_path_and_the_schema_type() -> None:
    obj = widget(thresholds={"perplexity": 1.5}, tolerations=[{"key": "a"}, {"key": "b", "seconds": -1}])
    obj["metadata"]["name"] = "x1"

    error = refused(obj)

    assert messages(error) == [
        '<nil>: Invalid value: "object": name must start with w',  # a rule at the root has the nil path
        'spec.tolerations[1]: Invalid value: "object": seconds must not be negative',
        'spec.thresholds[perplexity]: Invalid value: "number": at most 1',  # map keys are in brackets
    ]


def test_rule_without_message_reports_the_rule() -> None:
    engine = CRDAdmission(crd_with_rules({"rule": "self.a.size() > 3"}))

    with pytest.raises(AdmissionError) as caught:
        engine.admit(small(a="ab"), version=VERSION)

    assert messages(caught.value) == ['spec: Invalid value: "object": failed rule: self.a.size() > 3']


def test_a_rule_failing_at_runtime_is_a_field_error() -> None:
    engine = CRDAdmission(
        crd_with_rules(
            {"rule": "self.m['missing'] == 'x'", "message": "lookup"},
            {"rule": "int(self.a) > 0", "message": "conversion"},
            properties={"a": _string(), "m": {"type": "object", "additionalProperties": _string()}},
        )
    )

    with pytest.raises(AdmissionError) as caught:
        engine.admit(small(a="abc", m={}), version=VERSION)

    assert [c.field for c in caught.value.causes] == ["spec", "spec"]
    assert (
        messages(caught.value)[0]
        == 'spec: Invalid value: "object": no such key: missing evaluating rule: lookup'
    )
    assert messages(caught.value)[1].startswith('spec: Invalid value: "object": ')
    assert messages(caught.value)[1].endswith("evaluating rule: conversion")


def test_schema_typed_values_reach_cel() -> None:
    # A JSON integer in a `number` field is a double in CEL; a string holding "2e-4" parses as a double.
    engine = CRDAdmission(
        crd_with_rules(
            {"rule": "self.rate > 0.5 && type(self.rate) == double", "message": "rate"},
            {"rule": "double(self.lr) == 0.0002 && self.lr.matches('e-4$')", "message": "lr"},
            {
                "rule": "!has(self.missing) && self.tags == ['b', 'a']",
                "message": "set equality ignores order",
            },
            properties={
                "rate": {"type": "number"},
                "lr": _string(),
                "missing": _string(),
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": _string()},
            },
        )
    )

    admitted = engine.admit(small(rate=1, lr="2e-4", tags=["a", "b"]), version=VERSION)

    assert admitted["spec"]["rate"] == 1


def test_transition_rule_blocks_a_change_and_allows_an_unchanged_update() -> None:
    stored = admit(widget(tolerations=[{"key": "gpu"}]))

    unchanged = copy.deepcopy(stored)
    unchanged["spec"]["gpus"] = 2  # any other change is fine
    assert admit(unchanged, stored)["spec"]["gpus"] == 2

    changed = copy.deepcopy(stored)
    changed["spec"]["method"] = "full"
    assert messages(refused(changed, stored)) == ['spec.method: Invalid value: "string": method is immutable']


def test_transition_rules_do_not_run_on_create_or_without_an_old_value() -> None:
    stored = admit(widget())
    # A map-list item new in this update has no previous version: its transition rule does not run.
    update = copy.deepcopy(stored)
    update["spec"]["tolerations"] = [{"key": "new"}]

    assert admit(update, stored)["spec"]["tolerations"] == [{"key": "new"}]


def test_status_subresource_validates_status_and_compares_spec_with_old() -> None:
    stored = admit(widget())

    status_update = {**stored, "status": {"phase": "Lost"}}
    error = refused(status_update, stored, subresource="status")
    assert (
        messages(error)[0]
        == 'status.phase: Unsupported value: "Lost": supported values: "Pending", "Running", "Done"'
    )

    ok = admit({**stored, "status": {"phase": "Done", "replicas": 1}}, stored, subresource="status")
    assert ok["status"] == {"phase": "Done", "replicas": 1}

    # The whole object's rules still run; transition rules on spec compare with the stored object.
    tampered = {**stored, "spec": {**stored["spec"], "method": "full"}, "status": {"phase": "Done"}}
    assert messages(refused(tampered, stored, subresource="status")) == [
        'spec.method: Invalid value: "string": method is immutable'
    ]


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        pytest.param({"rule": "self.a =="}, "Syntax error", id="syntax"),
        pytest.param({"rule": "self.nope == 'x'"}, "undefined field 'nope'", id="undeclared-field"),
        pytest.param(
            {"rule": "self.a.frobnicate()"}, "undeclared reference to 'frobnicate'", id="unknown-function"
        ),
        pytest.param({"rule": "true", "fieldPath": ".nope"}, "must be a valid path", id="field-path"),
        pytest.param(
            {"rule": "true", "reason": "FieldValueForbidden"}, "reason: Forbidden: not supported", id="reason"
        ),
        pytest.param(
            {"rule": "self.a == 'x'", "optionalOldSelf": True}, "optionalOldSelf: Forbidden", id="optional"
        ),
        pytest.param(
            {"rule": "self.a == 'x'", "messageExpression": "'a is ' + self.a"},
            "messageExpression: Forbidden: not supported by the kubetune API emulator",
            id="messageExpression",
        ),
        pytest.param({"rule": "true", "fieldPath": "['a']"}, "must be a valid path", id="bracket-field-path"),
        pytest.param(
            {"rule": "self.a.lowerAscii() == 'x'"},
            "undeclared reference to 'lowerAscii'",
            id="strings-library",
        ),
        pytest.param({"rule": "isURL(self.a)"}, "undeclared reference to 'isURL'", id="urls-library"),
        pytest.param(
            {"rule": "quantity(self.a) == quantity('1')"},
            "undeclared reference to 'quantity'",
            id="quantity-library",
        ),
    ],
)
def test_a_crd_with_an_invalid_rule_is_refused(rule: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match="x-kubernetes-validations\\[0\\]") as caught:
        CRDAdmission(crd_with_rules(rule))

    assert error in str(caught.value)
    assert 'CustomResourceDefinition.apiextensions.k8s.io "widgets.example.dev" is invalid' in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("schema", "error"),
    [
        pytest.param(_string(format="date-time"), 'format: Unsupported value: "date-time"', id="format"),
        pytest.param({"type": "integer", "multipleOf": 8}, "multipleOf: Forbidden", id="multipleOf"),
        pytest.param(
            {"x-kubernetes-int-or-string": True}, "x-kubernetes-int-or-string: Forbidden", id="int-or-string"
        ),
        pytest.param(
            {"type": "object", "x-kubernetes-embedded-resource": True}, "embedded-resource", id="embedded"
        ),
        pytest.param(
            {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "preserve-unknown-fields",
            id="preserve",
        ),
        pytest.param({"anyOf": [{"minimum": 1}]}, "anyOf: Forbidden", id="anyOf"),
        pytest.param({"oneOf": [{"minimum": 1}]}, "oneOf: Forbidden", id="oneOf"),
        pytest.param(_string(nullable=True), "nullable: Forbidden", id="nullable"),
        pytest.param({"type": "object", "minProperties": 1}, "minProperties: Forbidden", id="minProperties"),
    ],
)
def test_a_crd_with_a_schema_feature_the_emulator_lacks_is_refused(
    schema: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=re.escape("properties[spec].properties[a]")) as caught:
        CRDAdmission(crd_with_rules(properties={"a": schema}))

    assert error in str(caught.value)
    assert "not supported by the kubetune API emulator" in str(caught.value) or "validates no formats" in str(
        caught.value
    )


def test_a_crd_with_a_scale_subresource_is_refused() -> None:
    crd = copy.deepcopy(CRD)
    crd["spec"]["versions"][0]["subresources"]["scale"] = {"specReplicasPath": ".spec.replicas"}

    with pytest.raises(ValueError, match=re.escape("subresources.scale: Forbidden")):
        CRDAdmission(crd)


def test_old_self_is_refused_where_items_cannot_be_correlated() -> None:
    items = {"type": "object", "properties": {"n": _string()}, **_rules({"rule": "self == oldSelf"})}

    with pytest.raises(
        ValueError, match="oldSelf cannot be used on the uncorrelatable portion of the schema"
    ):
        CRDAdmission(crd_with_rules(properties={"list": {"type": "array", "items": items}}))


# ---------------------------------------------------------------------------------------------------------
# The CEL library: what Kubernetes adds to CEL, evaluated the way rules are
# ---------------------------------------------------------------------------------------------------------

SELF = {"s": "Hello World", "l": [3, 1, 2], "m": {"k": "v"}, "n": 2.5, "i": 4, "lr": "2e-4"}


@pytest.mark.parametrize(
    "expression",
    [
        "size(self.s) == 11 && self.s.size() == 11 && size(self.l) == 3 && size(self.m) == 1",
        "self.s.matches('^H.*d$') && self.s.startsWith('He') && self.s.endsWith('ld') && self.s.contains('lo W')",
        "self.l.all(x, x > 0) && self.l.exists(x, x == 2) && self.l.exists_one(x, x == 3)",
        "self.l.map(x, x * 2) == [6, 2, 4] && self.l.filter(x, x > 1) == [3, 2]",
        "self.m.all(k, k == 'k') && has(self.m.k) && !has(self.m.z)",
        "double(self.lr) == 0.0002 && double('1.5') == 1.5 && int('12') == 12 && string(2.5) == '2.5'",
        "self.n > 2 && self.i < 4.5 && self.i == 4.0",  # cross-type numeric comparisons
        "type(self.s) == string && type(self.i) == int",
    ],
)
def test_kubernetes_cel_extensions(expression: str) -> None:
    engine = CRDAdmission(
        crd_with_rules(
            {"rule": expression},
            properties={
                "s": _string(),
                "l": {"type": "array", "items": {"type": "integer"}},
                "m": {"type": "object", "additionalProperties": _string()},
                "n": {"type": "number"},
                "i": {"type": "integer"},
                "lr": _string(),
            },
        )
    )

    engine.admit(small(**SELF), version=VERSION)  # raises if the rule is false or fails


@pytest.mark.parametrize(
    "expression",
    [
        "self.l.all(x, x > 1)",
        "self.l.exists(x, x > 3)",
        "self.l.exists_one(x, x > 1)",
        "self.l.filter(x, x > 1) == [3]",
        "self.s.matches('^world')",
        "self.n < 2",
        "has(self.m.z)",
    ],
)
def test_kubernetes_cel_extensions_can_be_false(expression: str) -> None:
    engine = CRDAdmission(
        crd_with_rules(
            {"rule": expression},
            properties={
                "s": _string(),
                "l": {"type": "array", "items": {"type": "integer"}},
                "m": {"type": "object", "additionalProperties": _string()},
                "n": {"type": "number"},
                "i": {"type": "integer"},
                "lr": _string(),
            },
        )
    )

    with pytest.raises(AdmissionError) as caught:
        engine.admit(small(**SELF), version=VERSION)

    assert messages(caught.value) == [f'spec: Invalid value: "object": failed rule: {expression}']


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("self.zz", "no such member in mapping: 'zz'"),
        ("self.l[7]", "index out of bounds: 7"),
        ("self.s.matches('[')", "error parsing regexp: missing ]: ["),
    ],
)
def test_cel_runtime_errors_name_the_key_index_or_pattern(expression: str, message: str) -> None:
    program = compile_cel(expression)
    cel_self = {"s": "x", "l": []}

    from celpy.adapter import json_to_cel

    with pytest.raises(CelEvaluationError) as caught:
        program.evaluate({"self": json_to_cel(cel_self)})

    assert str(caught.value) == message


def test_unsupported_cel_is_a_compile_error() -> None:
    with pytest.raises(CelCompileError, match="unsupported form of the all\\(\\) macro"):
        compile_cel("self.l.all(i, v, v > 0)")
    with pytest.raises(CelCompileError, match="undeclared reference to 'x'"):
        compile_cel("x == 1")
