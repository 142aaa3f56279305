"""Property tests: hostile FineTuneJob and ModelDeployment specs against the CRD admission and the typed models.

- never a crash: admission raises only AdmissionError, the models only pydantic's ValidationError;
- every refusal names a field that exists in the input or in the schema;
- anything the CRD admits, the typed model accepts and the pure reconcile turns into a non-failed status with
  exec-form manifests (no spec can pass admission and then crash or fail the operator);
- the reverse (a spec the typed model accepts is admitted) holds for the examples and per-field rules, but the
  typed models do not mirror every cross-field CEL rule: test_models_mirror_the_cel_rules pins those gaps.

Shrinking is off: a failing example is printed as generated, so a failure costs seconds, not minutes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.reconcile.finetunejob import Create, reconcile
from kubetune.reconcile.modeldeployment import ServingObserved, reconcile_deployment
from kubetune.reconcile.observed import Observed
from kubetune.render import finetunejob as render_job
from kubetune.render.modeldeployment import ServingDefaults
from kubetune.render.pod import OperatorDefaults
from kubetune_sandbox.emulator.admission import AdmissionError, CRDAdmission
from tests.api.conftest import load_crd, load_example
from tests.hostile.strategies import from_schema, json_values, mutated, spec_schema

VERSION = "v1alpha1"
CRDS = {"FineTuneJob": load_crd("finetunejobs"), "ModelDeployment": load_crd("modeldeployments")}
ADMISSION = {kind: CRDAdmission(crd) for kind, crd in CRDS.items()}
MODELS = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec}
JOB_EXAMPLES = [load_example(p) for p in ("01-lora-basic/finetunejob.yaml", "02-qlora-kueue/finetunejob.yaml",
                                          "03-full-multinode/finetunejob.yaml", "04-dpo/finetunejob.yaml")]  # fmt: skip
DEPLOYMENT_EXAMPLES = [load_example(p) for p in ("05-serve-canary/modeldeployment.yaml",
                                                 "06-serve-model-uri-tgi/modeldeployment.yaml")]  # fmt: skip
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "dash", "zsh", "/usr/bin/env"}
NO_SHRINK = (Phase.explicit, Phase.generate)  # no reuse: nothing is read from, or saved to, a database
# Derandomized, without an example database: every run tests the same examples, whatever ran before.
BOUNDED = settings(max_examples=100, deadline=None, phases=NO_SHRINK, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


def wrap(kind: str, spec: Any, name: str = "hostile") -> dict[str, Any]:
    return {"apiVersion": f"kubetune.dev/{VERSION}", "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip


# -- refusals name a field ---------------------------------------------------------------------------------


def _segments(field_path: str) -> list[str]:
    """'spec.thresholds[perplexity].min' -> ['spec', 'thresholds', '[]', 'min'] (indices and map keys as '[]')."""
    out: list[str] = []
    for token in re.split(r"\.(?![^\[]*\])", field_path):
        name, *brackets = re.split(r"\[[^\]]*\]", token)
        if name:
            out.append(name)
        out.extend("[]" for _ in brackets)
    return out


def _in_schema(segments: list[str], schema: Mapping[str, Any]) -> bool:
    node: Mapping[str, Any] | None = schema
    for segment in segments:
        if node is None:
            return False
        if segment == "[]":
            node = node.get("items") or (node.get("additionalProperties") or None)
            continue
        properties = node.get("properties") or {}
        if segment in properties:
            node = properties[segment]
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = node["additionalProperties"]  # a map key written as a dotted segment
        else:
            return False
    return True


def _in_input(field_path: str, node: Any) -> bool:
    """Whether a field path leads through the input; keys may themselves contain dots ('spec.serve.a.b')."""
    if field_path == "":
        return True
    if field_path.startswith("["):
        return True  # the rest lies inside a list item or map value of the input
    if not isinstance(node, Mapping):
        return False
    for key, child in node.items():
        if not isinstance(key, str) or not field_path.startswith(key):
            continue
        rest = field_path[len(key) :]
        if rest == "" or rest.startswith("["):
            return True
        if rest.startswith(".") and _in_input(rest[1:], child):
            return True
    return False


def assert_names_fields(error: AdmissionError, obj: Mapping[str, Any], kind: str) -> None:
    root = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert error.causes, f"a refusal without causes: {error}"
    named = [cause for cause in error.causes if cause.field not in ("", "<nil>")]
    assert named, f"no cause names a field: {error.causes}"
    for cause in named:
        assert cause.field.split(".")[0].split("[")[0] in (
            "spec",
            "metadata",
            "apiVersion",
            "kind",
            "status",
        ), cause
        # The input first: unknown keys may hold dots and brackets that no path syntax escapes.
        in_input = _in_input(cause.field, obj)
        assert in_input or _in_schema(_segments(cause.field), root), (
            f"{cause.field}: in neither schema nor input"
        )
        assert cause.message, cause


# -- what an admitted object turns into --------------------------------------------------------------------


def assert_exec_form(manifests: list[Any]) -> None:
    """Every container runs an exec-form command list; no shell, no `sh -c`, anywhere."""
    text = json.dumps(manifests)
    assert "sh -c" not in text
    for manifest in manifests:
        for container in _containers(manifest):
            for key in ("command", "args"):
                value = container.get(key)
                if value is None:
                    continue
                assert isinstance(value, list) and all(isinstance(part, str) for part in value), container
                assert not (value and value[0] in SHELLS), f"{container['name']} runs a shell: {value}"
                assert "-c" not in value[:2], value


def _containers(value: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("containers", "initContainers") and isinstance(child, list):
                found += child
            else:
                found += _containers(child)
    elif isinstance(value, list):
        for child in value:
            found += _containers(child)
    return found


def run_operator_logic(kind: str, admitted: dict[str, Any]) -> None:
    """What the operator does with an admitted object: it must not crash, fail it as invalid, or shell out."""
    resource = {**admitted, "metadata": {**admitted["metadata"], "uid": "u-1", "generation": 1}}
    if kind == "FineTuneJob":
        outcome = reconcile(resource, Observed(now="2026-01-01T00:00:00Z"), OperatorDefaults())
        reasons = [c.get("reason") for c in outcome.status.get("conditions") or []]
        assert "InvalidSpec" not in reasons, outcome.status
        spec = FineTuneJobSpec.model_validate(admitted["spec"])
        owner = ResourceIdentity(name="hostile", namespace="default", uid="u-1", generation=1)
        manifests = [a.manifest for a in outcome.actions if isinstance(a, Create)]
        manifests += [render_job.training_job(owner, spec, OperatorDefaults(), "digest"),
                      render_job.finishing_job(owner, spec, OperatorDefaults(), "digest")]  # fmt: skip
    else:
        outcome = reconcile_deployment(
            resource, ServingObserved(now="2026-01-01T00:00:00Z"), ServingDefaults()
        )
        reasons = [c.get("reason") for c in outcome.status.get("conditions") or []]
        assert "InvalidSpec" not in reasons, outcome.status
        manifests = [a.manifest for a in outcome.actions if isinstance(a, Create)]
    assert_exec_form(manifests)


def check(kind: str, obj: dict[str, Any], *, reverse: bool = False) -> None:
    model = MODELS[kind]
    admitted: dict[str, Any] | None
    try:
        admitted = ADMISSION[kind].admit(obj, version=VERSION)
    except AdmissionError as error:
        assert_names_fields(error, obj, kind)
        admitted = None
    try:
        model.model_validate(obj["spec"])
        model_accepts = True
    except ValidationError as error:
        model_accepts = False
        # Each error names its field: by location, or (cross-field rules) in its message.
        assert all(e["loc"] or "spec." in e["msg"] for e in error.errors() if e["type"] != "model_type"), (
            error
        )
    if admitted is not None:
        # The important direction: admitted -> the typed model accepts -> the operator copes.
        model.model_validate(admitted["spec"])
        run_operator_logic(kind, admitted)
    if model_accepts and reverse:
        # The reverse: what the typed model accepts, serialised as the operator writes specs, is admitted.
        spec = model.model_validate(obj["spec"]).model_dump(by_alias=True, mode="json", exclude_none=True)
        ADMISSION[kind].admit(wrap(kind, spec), version=VERSION)


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment"])
@BOUNDED
@given(data=st.data())
def test_schema_shaped_specs(kind: str, data: st.DataObject) -> None:
    spec = data.draw(from_schema(spec_schema(CRDS[kind])), label="spec")
    check(kind, wrap(kind, spec))


@BOUNDED
@given(obj=st.sampled_from(JOB_EXAMPLES).flatmap(mutated))
def test_mutated_finetunejob_examples(obj: dict[str, Any]) -> None:
    check("FineTuneJob", obj)


@BOUNDED
@given(obj=st.sampled_from(DEPLOYMENT_EXAMPLES).flatmap(mutated))
def test_mutated_modeldeployment_examples(obj: dict[str, Any]) -> None:
    check("ModelDeployment", obj)


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment"])
@settings(max_examples=40, deadline=None, phases=NO_SHRINK, derandomize=True, database=None)
@given(spec=json_values)
def test_random_json_specs(kind: str, spec: Any) -> None:
    check(kind, wrap(kind, spec))


@pytest.mark.parametrize("example", [*JOB_EXAMPLES, *DEPLOYMENT_EXAMPLES], ids=lambda e: e["kind"])
def test_examples_pass_every_property(example: dict[str, Any]) -> None:
    check(example["kind"], example, reverse=True)


# Specs the CRD refuses (cross-field CEL rules) that the typed model accepts: harmless while admission runs
# first, but the models are meant to be the single source of truth. Each case flips to XPASS, failing this
# test, once the model mirrors its rule: then drop the case.
CROSS_FIELD_CASES = [
    ("FineTuneJob", {"dataset.evalSplit": None}),  # exactly one of evalSplit / evalUri
    ("FineTuneJob", {"output.uri": "s3://artifacts/run"}),  # a prefix must end with '/'
    ("ModelDeployment", {"source": {}}),
    ("ModelDeployment", {"source": {"checkpoint": "best"}}),
    ("ModelDeployment", {"source": {"modelUri": "s3://models/base/"}}),  # serve: adapter needs adapterUris
    ("ModelDeployment", {"source": {"fineTuneJobRef": {"name": "job"}, "adapterUris": ["s3://models/a/"]}}),
    ("ModelDeployment", {"replicas": 9, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}),
]


def _apply(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


@pytest.mark.parametrize(("kind", "changes"), CROSS_FIELD_CASES)
def test_models_mirror_the_cel_rules(kind: str, changes: dict[str, Any]) -> None:
    """What the CRD refuses, the typed model should refuse too."""
    example = (JOB_EXAMPLES if kind == "FineTuneJob" else DEPLOYMENT_EXAMPLES)[0]
    spec = _apply(example["spec"], changes)
    with pytest.raises(AdmissionError):
        ADMISSION[kind].admit(wrap(kind, spec), version=VERSION)
    with pytest.raises(ValidationError):
        MODELS[kind].model_validate(spec)


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment"])
def test_integer_overflow_is_a_refusal_not_a_crash(kind: str) -> None:
    """kube-apiserver decodes numbers beyond int64 as floats and answers 422 'must be of type integer'."""
    example = (JOB_EXAMPLES if kind == "FineTuneJob" else DEPLOYMENT_EXAMPLES)[0]
    obj = {**example, "spec": {**example["spec"], "resources": {"gpus": 2**63}}}
    with pytest.raises(AdmissionError) as refused:
        ADMISSION[kind].admit(obj, version=VERSION)
    assert any(cause.field == "spec.resources.gpus" for cause in refused.value.causes)
