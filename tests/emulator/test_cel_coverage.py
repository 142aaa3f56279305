"""Every CEL rule of our CRDs compiles with the emulator's CEL, which has only what those rules use.

The emulator dropped Kubernetes' CEL extension libraries (strings, lists, sets, URLs, quantities,
optionals). If a model gains a rule that calls one, these tests fail naming the function and the rule,
instead of the emulator silently accepting what kube-apiserver would evaluate.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kubetune.api.crd import all_crds
from kubetune_sandbox.emulator.admission import CRDAdmission
from kubetune_sandbox.emulator.cel import CelCompileError, compile_cel, supported_functions

CRDS = all_crds()


def _rules(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    for i, rule in enumerate(schema.get("x-kubernetes-validations", ())):
        yield f"{path}.x-kubernetes-validations[{i}]", rule["rule"]
    for name, child in schema.get("properties", {}).items():
        yield from _rules(child, f"{path}.properties[{name}]")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _rules(schema[key], f"{path}.{key}")


def _crd_rules(crd: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{crd['metadata']['name']} {path}", rule)
        for version in crd["spec"]["versions"]
        for path, rule in _rules(version["schema"]["openAPIV3Schema"], version["name"])
    ]


def _functions_of_rule(where: str, rule: str) -> frozenset[str]:
    try:
        program = compile_cel(rule)
    except CelCompileError as error:
        pytest.fail(f"{where}: rule {rule!r} does not compile with the emulator's CEL: {error}")
    unknown = program.functions - supported_functions()
    assert not unknown, f"{where}: rule {rule!r} calls {sorted(unknown)}, which the emulator lacks"
    return program.functions


@pytest.mark.parametrize("crd", CRDS, ids=lambda crd: crd["metadata"]["name"])
def test_every_rule_of_our_crds_compiles_with_the_emulators_cel(crd: dict[str, Any]) -> None:
    rules = _crd_rules(crd)
    assert rules, "the CRD declares no CEL rules: did the walk miss them?"
    for where, rule in rules:
        _functions_of_rule(where, rule)
    CRDAdmission(crd)  # typed compilation: field names checked against the schema too


def test_our_crds_use_only_a_handful_of_cel_functions() -> None:
    used = frozenset().union(*(_functions_of_rule(w, r) for crd in CRDS for w, r in _crd_rules(crd)))
    # Documented in docs/testing.md; extend both (and the emulator) when a rule needs more.
    assert used <= {"all", "double", "endsWith", "exists", "has", "matches", "size"}, sorted(used)


@pytest.mark.parametrize(
    ("rule", "function"),
    [
        ("self.lowerAscii() == 'x'", "lowerAscii"),
        ("url(self) == url('https://x')", "url"),
        ("quantity(self) == quantity('1Gi')", "quantity"),
        ("sets.contains(['a'], [self])", "sets"),
        ("optional.of(self).hasValue()", "hasValue"),
        ("self.split('/').size() > 1", "split"),
    ],
)
def test_a_rule_calling_a_dropped_function_fails_naming_it(rule: str, function: str) -> None:
    with pytest.raises(CelCompileError, match=f"'{function}'"):
        compile_cel(rule)

    crd = copy.deepcopy(CRDS[0])
    properties = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    properties["probe"] = {"type": "string", "maxLength": 8, "x-kubernetes-validations": [{"rule": rule}]}
    with pytest.raises(
        ValueError, match=re.escape("properties[probe].x-kubernetes-validations[0].rule")
    ) as caught:
        CRDAdmission(crd)
    assert f"undeclared reference to '{function}'" in str(caught.value)
