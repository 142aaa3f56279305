"""`kubetune-trainer STAGE --config FILE`: the trainer image's entry point.

Stages: validate | train | evaluate | export | all | bench, and `schema` (prints the TrainerConfig JSON
schema, needs no config). Each stage lives in `kubetune_trainer.stages.<stage>` as
`run(config: TrainerConfig) -> dict`, imported only when asked for, so one stage's heavy dependencies never
slow another and a missing stage is a clear error.

A stage returns its summary: `{"stage", "ok", "reason", "message", ...status fields..., "warnings"}`, and
optionally `"exitCode"` (the shape is `kubetune.api.trainer_contract.TrainerSummary`). This module writes the summary (without exitCode), compacted below Kubernetes'
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
import time
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


# Set by `kubetune-trainer launch` for its workers: each writes its summary to DIR/LOCAL_RANK.json, and the
# launcher writes the one that tells the pod's outcome (rank 0's, or the failed worker's) as the message.
RANK_SUMMARIES_ENV = "KUBETUNE_RANK_SUMMARIES"


def termination_path() -> Path:
    """Where this process writes its summary: the termination log, or its rank's file under the launcher."""
    ranks, local_rank = os.environ.get(RANK_SUMMARIES_ENV), os.environ.get("LOCAL_RANK")
    if ranks and local_rank is not None:
        return Path(ranks) / f"{local_rank}.json"
    return Path(os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG_DEFAULT))


def write_termination_message(summary: dict[str, Any]) -> None:
    from kubetune.api.trainer_contract import summary_problems

    # A summary that departs from the contract is still written (the operator reads what it can), but said.
    for problem in summary_problems(summary):
        log.warning("summary does not fit the trainer contract (kubetune.api.trainer_contract): %s", problem)
    path = termination_path()
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


def execute_stage(stage: str, config_path: str) -> tuple[int, dict[str, Any]]:
    """Run one stage; (exit code, summary). Never raises: failures become summaries the operator can read."""
    from pydantic import ValidationError

    from kubetune.api.trainer_config import TrainerConfig

    try:
        config = TrainerConfig.model_validate_json(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as error:
        message = f"config: {error}"[:1500]
        log.error("%s", message)
        return EXIT_INVALID_INPUT, {"stage": stage, "ok": False, "reason": "InvalidSpec", "message": message}
    try:
        module = importlib.import_module(f"kubetune_trainer.stages.{stage}")
    except ModuleNotFoundError as error:
        if error.name != f"kubetune_trainer.stages.{stage}":
            raise
        message = (
            f"stage {stage!r} is not available in this trainer image (no kubetune_trainer.stages.{stage})"
        )
        log.error("%s", message)
        return EXIT_ERROR, {"stage": stage, "ok": False, "reason": "StageUnavailable", "message": message}
    summary: dict[str, Any]
    from kubetune_trainer.storage import STAGE_ENV

    os.environ[STAGE_ENV] = stage  # names the stage in its storage requests (storage.s3_client)
    try:
        summary = module.run(config)
    except Exception as error:
        log.exception("stage %s failed", stage)
        summary = {"stage": stage, "ok": False, "reason": type(error).__name__, "message": str(error)[:1500]}
        return EXIT_ERROR, summary
    code = summary.get("exitCode")
    if not isinstance(code, int):
        code = EXIT_OK if summary.get("ok", True) else EXIT_ERROR
    return code, summary


def run_stage(stage: str, config_path: str) -> int:
    code, summary = execute_stage(stage, config_path)
    write_termination_message(summary)
    return code


def run_stages(stages: list[str], config_path: str) -> int:
    """Several stages in one pod (e.g. `evaluate,export`): stop at the first failure; one termination message
    carries every stage's results, later stages' keys winning."""
    merged: dict[str, Any] = {}
    code = EXIT_OK
    for stage in stages:
        code, summary = execute_stage(stage, config_path)
        merged.update(summary)
        if code != EXIT_OK:
            break
    write_termination_message(merged)
    return code


def _fetch(argv: list[str]) -> int:
    """`kubetune-trainer fetch SRC DEST [SRC DEST ...]`: the serving pods' init step. A URI ending in '/' is a
    prefix (a model directory), anything else one file. With $KUBETUNE_MODEL_CACHE (spec.cache) directories
    are kept in the model cache and DEST becomes a link to them."""
    from kubetune_trainer import model_cache, storage

    if not argv or len(argv) % 2:
        print("usage: kubetune-trainer fetch SRC DEST [SRC DEST ...]", file=sys.stderr)
        return EXIT_INVALID_INPUT
    os.environ[storage.STAGE_ENV] = "fetch"
    shared = model_cache.shared_root()
    for source, destination in zip(argv[::2], argv[1::2], strict=True):
        started = time.perf_counter()
        if shared is not None and (source.startswith("hf://") or source.endswith("/")):
            # spec.cache: the model directory stays in the cache; DEST links to it (read-only for the runtime).
            cached = model_cache.fetch(source, shared)
            _link(cached.path, Path(destination))
        elif source.startswith("hf://"):
            storage.download_hf(source, destination)
        elif source.endswith("/"):
            storage.download_dir(source, destination)
        else:
            storage.download_file(source, Path(destination))
        log.info("fetched %s to %s in %.1fs", source, destination, time.perf_counter() - started)
    return EXIT_OK


def _link(target: Path, link: Path) -> None:
    """`link` -> `target`, replacing an older link (a restarted init container fetches again)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)


def _bench(argv: list[str]) -> int:
    from kubetune_trainer.bench import run_benchmark

    parser = argparse.ArgumentParser(prog="kubetune-trainer bench")
    parser.add_argument(
        "--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://svc:8000/v1"
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    summary = run_benchmark(
        args.endpoint,
        args.model,
        requests=args.requests,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
    )
    write_termination_message(summary)
    print(json.dumps(summary))
    return EXIT_OK if summary["ok"] else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if argv[:1] == ["fetch"]:
        return _fetch(argv[1:])
    if argv[:1] == ["launch"]:
        from kubetune_trainer.launch import launch

        return launch(argv[1:])
    if argv[:1] == ["bench"] and "--config" not in argv:
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="kubetune-trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "stage", help="one of " + ", ".join([*STAGES, "schema", "fetch"]) + "; or a comma list"
    )
    parser.add_argument("--config", help="path to the TrainerConfig JSON (trainer-config.json)")
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(args.log_level.upper())
    if args.stage == "schema":
        return _print_schema()
    stages = args.stage.split(",")
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        parser.error(f"unknown stage {unknown[0]!r}: choose from {', '.join(STAGES)}")
    if not args.config:
        parser.error(f"stage {args.stage} needs --config FILE")
    return run_stages(stages, args.config)


if __name__ == "__main__":
    raise SystemExit(main())
