"""`kubetune-trainer STAGE --config FILE`: the trainer image's entry point.

Stages: validate | train | evaluate | export | all | bench, and `schema` (prints the TrainerConfig JSON
schema, needs no config). Each stage lives in `kubetune_trainer.stages.<stage>` as
`run(config: TrainerConfig) -> dict`, imported only when asked for, so one stage's heavy dependencies never
slow another and a missing stage is a clear error.

A stage returns its summary: `{"stage", "ok", "reason", "message", ...status fields..., "warnings"}`, and
optionally `"exitCode"`. This module writes the summary (without exitCode), compacted below Kubernetes'
4096-byte limit, to the termination-message file (`$KUBETUNE_TERMINATION_LOG`, default
`/dev/termination-log`), which the operator reads back into the FineTuneJob's status. Exit codes: 0 success,
2 invalid input (the operator fails the Job at once, no retries), 1 anything else (retried).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

STAGES = ("validate", "train", "evaluate", "export", "all", "bench")
TERMINATION_LOG_DEFAULT = "/dev/termination-log"
TERMINATION_LIMIT = 4096
EXIT_OK, EXIT_ERROR, EXIT_INVALID_INPUT = 0, 1, 2

log = logging.getLogger("kubetune_trainer")


def compact_summary(summary: dict[str, Any], limit: int = TERMINATION_LIMIT) -> str:
    """JSON of the summary that fits in `limit` bytes: trims warnings, then the message, then drops extras."""
    data = {k: v for k, v in summary.items() if k != "exitCode" and v is not None}
    if isinstance(data.get("warnings"), list):
        data["warnings"] = [str(w)[:300] for w in data["warnings"][:8]]
    if isinstance(data.get("message"), str):
        data["message"] = data["message"][:1500]

    def encoded() -> str:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    text = encoded()
    while len(text.encode()) > limit and data.get("warnings"):
        data["warnings"] = data["warnings"][:-1]
        text = encoded()
    if len(text.encode()) > limit and isinstance(data.get("message"), str):
        data["message"] = data["message"][:300] + "…"
        text = encoded()
    essential = ("stage", "ok", "reason", "message", "dataset", "estimate")
    if len(text.encode()) > limit:
        data = {k: v for k, v in data.items() if k in essential}
        text = encoded()
    if len(text.encode()) > limit:
        data = {k: data[k] for k in ("stage", "ok", "reason") if k in data}
        text = encoded()
    return text


def write_termination_message(summary: dict[str, Any]) -> None:
    path = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG_DEFAULT))
    text = compact_summary(summary)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as error:
        log.warning("termination message not written (%s: %s); summary: %s", path, error.strerror, text)


def _print_schema() -> int:
    from kubetune.api.trainer_config import TrainerConfig

    json.dump(TrainerConfig.model_json_schema(by_alias=True), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def run_stage(stage: str, config_path: str) -> int:
    from pydantic import ValidationError

    from kubetune.api.trainer_config import TrainerConfig

    try:
        config = TrainerConfig.model_validate_json(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as error:
        message = f"config: {error}"[:1500]
        write_termination_message({"stage": stage, "ok": False, "reason": "InvalidSpec", "message": message})
        log.error("%s", message)
        return EXIT_INVALID_INPUT
    try:
        module = importlib.import_module(f"kubetune_trainer.stages.{stage}")
    except ModuleNotFoundError as error:
        if error.name != f"kubetune_trainer.stages.{stage}":
            raise
        message = (
            f"stage {stage!r} is not available in this trainer image (no kubetune_trainer.stages.{stage})"
        )
        write_termination_message(
            {"stage": stage, "ok": False, "reason": "StageUnavailable", "message": message}
        )
        log.error("%s", message)
        return EXIT_ERROR
    summary: dict[str, Any]
    try:
        summary = module.run(config)
    except Exception as error:
        log.exception("stage %s failed", stage)
        summary = {
            "stage": stage,
            "ok": False,
            "reason": type(error).__name__,
            "message": str(error)[:1500],
            "exitCode": EXIT_ERROR,
        }
    write_termination_message(summary)
    code = summary.get("exitCode")
    if isinstance(code, int):
        return code
    return EXIT_OK if summary.get("ok", True) else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=[*STAGES, "schema"])
    parser.add_argument("--config", help="path to the TrainerConfig JSON (trainer-config.json)")
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.stage == "schema":
        return _print_schema()
    if not args.config:
        parser.error(f"stage {args.stage} needs --config FILE")
    return run_stage(args.stage, args.config)


if __name__ == "__main__":
    raise SystemExit(main())
