"""Many FineTuneJob lifecycles at once: each has a seeded scenario, and one level-based loop plays the job
controller and kubelet for all of them, whatever the operator is doing (or whether it runs at all)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kubetune.reconcile import conditions as c
from tests.integration.harness import Api
from tests.integration.test_finetunejob_operator import _job
from tests.reconcile.world import FINISH_OK, TRAINING_OK, VALIDATION_OK

REJECTED = {"stage": "validate", "ok": False, "reason": "InvalidDataset", "message": "line 3: broken JSON"}
# scenario -> (phase, Failed reason or None) it must end in
EXPECTED = {
    "succeeds": ("Succeeded", None),
    "rejected": ("Failed", "InvalidDataset"),
    "training-fails": ("Failed", c.BACKOFF_LIMIT_EXCEEDED),
}
# scenario -> the stages whose child Job the operator creates (and the test finishes, once each)
STAGES = {
    "succeeds": ["finish", "train", "validate"],
    "rejected": ["validate"],
    "training-fails": ["train", "validate"],
}


@dataclass
class Fleet:
    api: Api
    scenarios: dict[str, str]  # FineTuneJob name -> scenario
    child_uids: dict[str, str] = field(default_factory=dict)  # child Job name -> first uid seen
    recreated: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, api: Api, prefix: str, count: int, rng: random.Random) -> Fleet:
        weights = {"succeeds": 6, "rejected": 2, "training-fails": 2}
        scenarios = {
            f"{prefix}-{i:02d}": rng.choices(list(weights), list(weights.values()))[0] for i in range(count)
        }
        return cls(api, scenarios)

    def submit(self, names: list[str]) -> None:
        for name in names:
            self.api.create(_job(name, **{"spec.backoffLimit": 0}))

    def steps(self) -> int:
        """How many child Jobs the test finishes over every lifecycle: fixed by the scenarios, not by timing."""
        return sum(len(STAGES[s]) for s in self.scenarios.values())

    def play(self, after_step: Callable[[], None] = lambda: None) -> None:
        """One pass of the job controller: finish every child Job of ours that is not finished yet, calling
        `after_step` after each (a lifecycle step the test itself played)."""
        for job in self.api.list("Job", "app.kubernetes.io/managed-by=kubetune"):
            meta = job["metadata"]
            owner = meta["labels"].get("kubetune.dev/finetunejob")
            if owner not in self.scenarios or meta.get("deletionTimestamp"):
                continue
            first = self.child_uids.setdefault(meta["name"], meta["uid"])
            if first != meta["uid"] and meta["name"] not in self.recreated:
                self.recreated.append(meta["name"])  # a second Job of the same stage: a duplicate
            if meta["uid"] in self.finished or job["spec"].get("suspend"):
                continue
            stage = meta["name"].rsplit("-", 1)[1]
            scenario = self.scenarios[owner]
            if stage == "validate" and scenario == "rejected":
                self.api.finish_job(meta["name"], REJECTED, ok=False, reason="PodFailurePolicy")
            elif stage == "validate":
                self.api.finish_job(meta["name"], VALIDATION_OK)
            elif stage == "train" and scenario == "training-fails":
                self.api.finish_job(meta["name"], None, ok=False)
            elif stage == "train":
                self.api.finish_job(meta["name"], TRAINING_OK)
            else:
                self.api.finish_job(meta["name"], FINISH_OK)
            self.finished.add(meta["uid"])
            after_step()

    def outcome(self, name: str) -> tuple[str | None, str | None]:
        status = self.api.status(name)
        failed = next((x for x in status.get("conditions") or [] if x["type"] == c.FAILED), {})
        return status.get("phase"), failed.get("reason") if failed.get("status") == "True" else None

    def settled(self) -> bool:
        return all(self.outcome(name)[0] in ("Succeeded", "Failed") for name in self.scenarios)

    def check(self) -> None:
        """Every job in its scenario's terminal state, each stage's Job created once, one ConfigMap each."""
        wrong = {name: (self.outcome(name), EXPECTED[s]) for name, s in self.scenarios.items()
                 if self.outcome(name) != EXPECTED[s]}  # fmt: skip
        assert not wrong, f"jobs in the wrong state (got, wanted): {wrong}"
        assert not self.recreated, f"child Jobs created twice: {self.recreated}"
        for name, scenario in self.scenarios.items():
            jobs = sorted(
                j["metadata"]["name"] for j in self.api.list("Job", f"kubetune.dev/finetunejob={name}")
            )
            assert jobs == [f"{name}-{stage}" for stage in STAGES[scenario]], (name, jobs)
            assert len(self.api.list("ConfigMap", f"kubetune.dev/finetunejob={name}")) == 1, name
