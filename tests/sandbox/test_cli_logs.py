"""`kubetune logs` reads pod logs through the API, which the sandbox serves from its kubelet's files: the
same code path as on a cluster, with no sandbox shortcut in the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.cli import user
from tests.sandbox.conftest import job_condition, job_pods, sh_job, wait_for

JOBS = "batch/v1/jobs"
LABELS = {"kubetune.dev/finetunejob": "talker", "kubetune.dev/stage": "train"}


@pytest.fixture(scope="module")
def kubeconfig(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = cluster.kubeconfig(tmp_path_factory.mktemp("cli") / "kubeconfig")
    return path


def _talker(cluster: Any, name: str, script: str) -> dict[str, Any]:
    body = sh_job(name, script)
    body["spec"]["template"]["metadata"] = {"labels": {**LABELS, "kubetune.dev/finetunejob": name}}
    cluster.create(JOBS, body, "default")
    return wait_for("its pod", lambda: next(iter(job_pods(cluster, name)), None))


def test_log_lines_reads_a_finished_pod_through_the_api(cluster: Any, kubeconfig: Path) -> None:
    _talker(cluster, "talker", 'echo "progress {\\"step\\": 1, \\"trainLoss\\": \\"2.5\\"}"; echo done')
    wait_for("Complete", lambda: job_condition(cluster, "talker", "Complete"))
    (pod,) = job_pods(cluster, "talker")
    assert "annotations" not in pod["metadata"] or not any(
        key.startswith("sandbox.") for key in pod["metadata"]["annotations"]
    )  # nothing in the pod points at this machine's files
    kube = user.Kube(str(kubeconfig), "default")
    lines = list(kube.log_lines(pod, "main", follow=False))
    assert lines == ['progress {"step": 1, "trainLoss": "2.5"}', "done"]
    assert user.losses_from_log(lines)["train"] == [(1, 2.5)]


def test_following_streams_a_running_pod_until_it_ends(cluster: Any, kubeconfig: Path) -> None:
    pod = _talker(cluster, "slow-talker", "echo one; sleep 1; echo two; sleep 1; echo three")
    kube = user.Kube(str(kubeconfig), "default")
    # Started right away: it may first wait for the container to start, then follows it to its end.
    assert list(kube.log_lines(pod, "main", follow=True)) == ["one", "two", "three"]


def test_the_logs_command_says_what_is_wrong_in_one_line(cluster: Any, kubeconfig: Path) -> None:
    kube = user.Kube(str(kubeconfig), "default")
    with pytest.raises(user.UserError, match=r'cannot read the log of pod gone: pods "gone" not found'):
        list(kube.log_lines({"metadata": {"name": "gone"}}, "main", follow=False))


def test_kubetune_logs_without_follow(cluster: Any, kubeconfig: Path) -> None:
    _talker(cluster, "cli-talker", "echo hello from the pod")
    wait_for("Complete", lambda: job_condition(cluster, "cli-talker", "Complete"))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]
    result = subprocess.run([sys.executable, "-m", "kubetune.cli.main", "logs", "cli-talker", "--no-follow"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the pod\n"
    assert "==> pod cli-talker-" in result.stderr
