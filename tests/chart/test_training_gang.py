"""operator.trainingGang: how multi-node jobs restart all their ranks, from the chart to the operator."""

from __future__ import annotations

import pytest

from kubetune.handlers.settings import OperatorConfig
from tests.chart.chartkit import env_of, manifests, one


def _config(values: dict) -> OperatorConfig:
    env = env_of(one(manifests(values), "Deployment")["spec"]["template"]["spec"]["containers"][0])
    return OperatorConfig.from_env(env)


@pytest.mark.parametrize("gang", ["auto", "jobset", "job"])
def test_the_chart_value_reaches_the_operator(gang: str) -> None:
    assert _config({"operator": {"trainingGang": gang}}).training_gang == gang


def test_auto_is_the_default_and_a_typo_is_refused_twice() -> None:
    assert _config({}).training_gang == "auto" == OperatorConfig.from_env({}).training_gang
    with pytest.raises(Exception, match="trainingGang"):
        manifests({"operator": {"trainingGang": "JobSet"}})
    with pytest.raises(ValueError, match="KUBETUNE_TRAINING_GANG='jobsets' is not one of auto, jobset, job"):
        OperatorConfig.from_env({"KUBETUNE_TRAINING_GANG": "jobsets"})


def test_the_chart_may_create_jobsets() -> None:
    (role,) = [m for m in manifests({}) if m["kind"] == "ClusterRole" and m["metadata"]["name"] == "kubetune"]
    (rule,) = [r for r in role["rules"] if "jobset.x-k8s.io" in r["apiGroups"]]
    assert rule["resources"] == ["jobsets"]
    assert {"get", "list", "watch", "create", "patch", "delete"} <= set(rule["verbs"])
