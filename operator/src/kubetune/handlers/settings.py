"""One typed configuration, read once from KUBETUNE_* environment variables; a bad value stops start-up."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from kubetune.adapters.kube import DEFAULT_BURST, DEFAULT_QPS
from kubetune.api.common import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, QUANTITY_PATTERN
from kubetune.api.trainer_contract import MAX_METRICS_PORT, MIN_METRICS_PORT
from kubetune.reconcile.leader import LEASE_NAME, LeaseTiming
from kubetune.render.modeldeployment import PROMETHEUS_URL, TGI_IMAGE, VLLM_IMAGE
from kubetune.render.pod import OperatorDefaults

TRAINING_GANGS = ("auto", "jobset", "job")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class LeaderElection:
    """Which Lease the replicas compete for, and as whom (the pod's name, from the downward API)."""

    namespace: str
    identity: str
    lease_name: str = LEASE_NAME
    timing: LeaseTiming = field(default_factory=LeaseTiming)


def _leader_election(env: dict[str, str]) -> LeaderElection | None:
    """KUBETUNE_LEADER_ELECTION: true (the chart), false, or auto (the default: on when POD_NAMESPACE says
    the operator runs in a pod, off for a local `kubetune operator`, which has no namespace of its own)."""
    mode = env.get("KUBETUNE_LEADER_ELECTION", "auto").lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"KUBETUNE_LEADER_ELECTION={mode!r} is not one of auto, true, false")
    namespace = env.get("POD_NAMESPACE", "")
    if mode == "false" or (mode == "auto" and not namespace):
        return None
    if not namespace:
        raise ConfigError("KUBETUNE_LEADER_ELECTION=true needs POD_NAMESPACE (the Lease's namespace)")
    if not re.fullmatch(DNS_LABEL_PATTERN, namespace) or len(namespace) > 63:
        raise ConfigError(f"POD_NAMESPACE={namespace!r} is not a namespace name")
    identity = env.get("POD_NAME") or env.get("HOSTNAME") or ""
    if not identity:
        raise ConfigError("leader election needs POD_NAME (or HOSTNAME): the identity that holds the Lease")
    lease_name = env.get("KUBETUNE_LEASE_NAME") or LEASE_NAME
    if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, lease_name) or len(lease_name) > 253:
        raise ConfigError(f"KUBETUNE_LEASE_NAME={lease_name!r} is not an object name")
    base = LeaseTiming()
    timing = LeaseTiming(
        duration_seconds=_int(
            env, "KUBETUNE_LEASE_DURATION_SECONDS", base.duration_seconds, low=2, high=3600
        ),
        renew_deadline_seconds=_int(
            env, "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS", base.renew_deadline_seconds, low=1, high=3600
        ),
        retry_period_seconds=_int(
            env, "KUBETUNE_LEASE_RETRY_PERIOD_SECONDS", base.retry_period_seconds, low=1, high=3600
        ),
    )
    if problems := timing.problems():
        raise ConfigError(
            "KUBETUNE_LEASE_DURATION_SECONDS / _RENEW_DEADLINE_SECONDS / _RETRY_PERIOD_SECONDS: "
            + "; ".join(problems)
        )
    return LeaderElection(namespace=namespace, identity=identity, lease_name=lease_name, timing=timing)


def _int(env: dict[str, str], name: str, default: int, *, low: int = 0, high: int = 1 << 31) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ConfigError(f"{name}={raw!r} is not an integer") from error
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} must lie in [{low}, {high}]")
    return value


def _json_list(
    env: dict[str, str], name: str, default: tuple[dict[str, Any], ...]
) -> tuple[dict[str, Any], ...]:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{name} must be a JSON list of objects")
    return tuple(value)


def _secret_names(env: dict[str, str], name: str) -> tuple[str, ...]:
    """`[{"name": "regcred"}, ...]` (the chart's toJson of a LocalObjectReference list) -> the names."""
    names = tuple(str(item.get("name", "")) for item in _json_list(env, name, ()))
    for secret in names:
        if not re.fullmatch(DNS_SUBDOMAIN_PATTERN, secret) or len(secret) > 253:
            raise ConfigError(f"{name}: {secret!r} is not a Secret name")
    return names


@dataclass(frozen=True)
class OperatorConfig:
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    resync_seconds: int = 30
    metrics_port: int = 8080
    scrape_progress: bool = True
    namespaces: tuple[str, ...] = ()
    vllm_image: str = VLLM_IMAGE
    tgi_image: str = TGI_IMAGE
    prometheus_url: str = PROMETHEUS_URL  # what KEDA ScaledObjects query
    # The API client's token bucket (watches excluded): client-go's 5/10 would spend minutes on a resync
    # of 2,000 jobs; 50/100 still stays well inside API priority and fairness' default share for one client.
    api_qps: int = DEFAULT_QPS
    api_burst: int = DEFAULT_BURST
    # How a multi-node job restarts all its ranks together: as a JobSet, as the operator's own Indexed Job,
    # or (auto) as a JobSet where discovery finds JobSet's API.
    training_gang: str = "auto"
    # None: this process leads alone (a local run); else it waits for the Lease before reconciling anything.
    leader_election: LeaderElection | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        base = OperatorDefaults()
        defaults = OperatorDefaults(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", base.trainer_image),
            image_pull_policy=env.get("KUBETUNE_IMAGE_PULL_POLICY", base.image_pull_policy),
            gpu_tolerations=_json_list(env, "KUBETUNE_GPU_TOLERATIONS", base.gpu_tolerations),
            service_account_name=env.get("KUBETUNE_TRAINER_SERVICE_ACCOUNT", base.service_account_name),
            image_pull_secrets=_secret_names(env, "KUBETUNE_IMAGE_PULL_SECRETS"),
            validation_ephemeral_storage=env.get(
                "KUBETUNE_VALIDATION_EPHEMERAL_STORAGE", base.validation_ephemeral_storage
            ),
            # One setting for both ends: rendered into trainer pods and their config, and scraped there.
            trainer_metrics_port=_int(
                env,
                "KUBETUNE_TRAINER_METRICS_PORT",
                base.trainer_metrics_port,
                low=MIN_METRICS_PORT,
                high=MAX_METRICS_PORT,
            ),
        )
        if not re.fullmatch(QUANTITY_PATTERN, defaults.validation_ephemeral_storage):
            raise ConfigError(
                f"KUBETUNE_VALIDATION_EPHEMERAL_STORAGE={defaults.validation_ephemeral_storage!r} is not a quantity"
            )
        if defaults.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"KUBETUNE_IMAGE_PULL_POLICY={defaults.image_pull_policy!r} is not a pull policy"
            )
        namespaces = tuple(
            n.strip() for n in env.get("KUBETUNE_WATCH_NAMESPACES", "").split(",") if n.strip()
        )
        for namespace in namespaces:  # each gets its own child watches: no globs
            if not re.fullmatch(DNS_LABEL_PATTERN, namespace) or len(namespace) > 63:
                raise ConfigError(f"KUBETUNE_WATCH_NAMESPACES: {namespace!r} is not a namespace name")
        api_qps = _int(env, "KUBETUNE_API_QPS", DEFAULT_QPS, low=1, high=10_000)
        api_burst = _int(env, "KUBETUNE_API_BURST", DEFAULT_BURST, low=1, high=100_000)
        training_gang = env.get("KUBETUNE_TRAINING_GANG", "auto")
        if training_gang not in TRAINING_GANGS:
            raise ConfigError(
                f"KUBETUNE_TRAINING_GANG={training_gang!r} is not one of {', '.join(TRAINING_GANGS)}"
            )
        return cls(
            defaults=defaults,
            resync_seconds=_int(env, "KUBETUNE_RESYNC_SECONDS", 30, low=1, high=3600),
            metrics_port=_int(env, "KUBETUNE_METRICS_PORT", 8080, high=65535),
            scrape_progress=env.get("KUBETUNE_SCRAPE_PROGRESS", "true").lower() in ("1", "true", "yes"),
            namespaces=namespaces,
            vllm_image=env.get("KUBETUNE_VLLM_IMAGE", cls.vllm_image),
            tgi_image=env.get("KUBETUNE_TGI_IMAGE", cls.tgi_image),
            prometheus_url=env.get("KUBETUNE_PROMETHEUS_URL") or PROMETHEUS_URL,
            api_qps=api_qps,
            api_burst=api_burst,
            training_gang=training_gang,
            leader_election=_leader_election(env),
        )
