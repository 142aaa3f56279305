"""`kubetune-trainer launch [TORCHRUN OPTIONS] -m kubetune_trainer train --config FILE`: torchrun, in-process.

The operator starts multi-process pods as `/opt/kubetune/bin/python -m kubetune_trainer launch ...`
(kubetune.render.finetunejob), not as the base image's `torchrun`, for three reasons:

- the interpreter is the trainer image's virtualenv, so every worker (`sys.executable -m kubetune_trainer`)
  imports kubetune_trainer and its pinned libraries; the base image's `torchrun` runs the base Python, which
  cannot see them;
- the pod exits with the first failed worker's exit code, where torchrun exits 1 for any failure: the Job's
  podFailurePolicy fails bad input (exit 2) at once instead of retrying it on every GPU. A SIGTERM to the
  launcher (preemption, suspend, drain) reaches the workers, which get `--shutdown-timeout` seconds to
  write their last checkpoint; the launcher then exits 128 + the signal, as a signalled process would;
- one summary reaches the termination message: each worker writes its own (RANK_SUMMARIES_ENV), and the
  launcher writes the failed worker's, else local rank 0's (the global rank 0 on the first node holds the
  outputs and checkpoints), instead of whichever worker finished last.

The options are torch.distributed.run's own (`python -m torch.distributed.run --help`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from kubetune_trainer.__main__ import RANK_SUMMARIES_ENV, TERMINATION_LOG_DEFAULT

log = logging.getLogger("kubetune_trainer.launch")

EXIT_ERROR = 1


def exit_code_of(code: int) -> int:
    """A worker's exit status as a shell reports it: a negative (signal) code becomes 128 + the signal."""
    if code < 0:
        return 128 - code
    return code if code > 0 else EXIT_ERROR


def _write_summary(summaries: Path, failed_local_rank: int | None) -> None:
    """Copy the deciding worker's summary (already compacted by the worker) to the termination log."""
    order = [failed_local_rank] if failed_local_rank is not None else []
    for local_rank in [*order, 0]:
        source = summaries / f"{local_rank}.json"
        if source.is_file():
            target = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG_DEFAULT))
            try:
                target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            except OSError as error:
                log.warning("termination message not written (%s: %s)", target, error.strerror)
            return


def launch(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(argv)
    summaries = Path(tempfile.mkdtemp(prefix="kubetune-ranks-"))
    os.environ[RANK_SUMMARIES_ENV] = str(summaries)  # the workers inherit it
    failed_local_rank: int | None = None
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        failed_local_rank = failure.local_rank
        code = exit_code_of(failure.exitcode)
        log.error("worker rank %s failed with exit code %s; exiting with %s", rank, failure.exitcode, code)
        return code
    except SignalException as error:
        log.warning("launcher stopped by %s", error.sigval.name)
        return 128 + int(error.sigval)
    finally:
        _write_summary(summaries, failed_local_rank)
        shutil.rmtree(summaries, ignore_errors=True)
    return 0
