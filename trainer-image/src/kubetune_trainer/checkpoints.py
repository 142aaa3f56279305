"""Checkpoints in object storage that are either complete or ignored.

Layout: `<artifacts.checkpoints>step-00000500/<files>` plus `_COMPLETE.json`, written LAST, listing every file
with its size and sha256. A checkpoint without that manifest (a pod killed mid-upload) does not exist as far
as resuming is concerned; a downloaded file whose hash differs from the manifest fails loudly.

Retention keeps the newest `keepLast` complete checkpoints plus the one with the lowest eval loss, and only
ever deletes checkpoints this job wrote (its manifest names the job's namespace/name/uid) under its own
prefix. Deleting removes the manifest first, so a reader never trusts a half-deleted checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer import storage

log = logging.getLogger(__name__)

MANIFEST_NAME = "_COMPLETE.json"
HISTORY_NAME = "history.json"
STEP_DIR = re.compile(r"^step-(\d{8})/$")
_HASH_CHUNK = 4 * 1024 * 1024


class CheckpointError(RuntimeError):
    """A checkpoint is unusable: missing files or contents that do not match its manifest."""


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    uri: str
    eval_loss: float | None = None
    time: str | None = None
    writer: str | None = None
    files: tuple[tuple[str, int, str], ...] = ()  # (relative path, size, sha256)

    def to_status(self) -> dict[str, Any]:
        from kubetune_trainer.metrics import format_number

        status: dict[str, Any] = {"step": self.step, "uri": self.uri}
        if self.eval_loss is not None:
            status["evalLoss"] = format_number(self.eval_loss)
        if self.time:
            status["time"] = self.time
        return status


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def delete_uri(uri: str) -> None:
    """Delete one object/file (storage.py deliberately has no delete; only checkpoint retention needs it)."""
    if storage.is_s3(uri):
        location = storage.parse_s3(uri)
        storage.s3_client().delete_object(Bucket=location.bucket, Key=location.key)
        return
    storage.local_path(uri).unlink(missing_ok=True)


class CheckpointStore:
    """The checkpoints of one job under one prefix."""

    def __init__(self, prefix: str, writer: str) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.writer = writer

    def uri_for(self, step: int) -> str:
        return f"{self.prefix}step-{step:08d}/"

    # ---------------------------------------------------------------------------------------- writing

    def save(self, local_dir: Path, step: int, eval_loss: float | None = None) -> CheckpointRecord:
        """Upload every file of local_dir, then the manifest; returns the now-complete record."""
        uri = self.uri_for(step)
        files: list[tuple[str, int, str]] = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            files.append((relative, path.stat().st_size, sha256_file(path)))
            storage.upload_file(path, uri + relative)
        record = CheckpointRecord(
            step=step,
            uri=uri,
            eval_loss=eval_loss,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            writer=self.writer,
            files=tuple(files),
        )
        manifest = {
            "step": step,
            "evalLoss": eval_loss,
            "time": record.time,
            "writer": self.writer,
            "files": [{"path": p, "size": s, "sha256": h} for p, s, h in files],
        }
        # The manifest goes last: until it exists, this checkpoint is invisible to resume and retention.
        storage.write_text(uri + MANIFEST_NAME, json.dumps(manifest, indent=1))
        log.info("checkpoint step %d complete at %s (%d files)", step, uri, len(files))
        return record

    # ---------------------------------------------------------------------------------------- reading

    def _read_manifest(self, uri: str) -> CheckpointRecord | None:
        try:
            data = json.loads(storage.read_text(uri + MANIFEST_NAME))
            files = tuple((f["path"], int(f["size"]), str(f["sha256"])) for f in data["files"])
            loss = data.get("evalLoss")
            return CheckpointRecord(
                step=int(data["step"]),
                uri=uri,
                eval_loss=float(loss) if loss is not None else None,
                time=data.get("time"),
                writer=data.get("writer"),
                files=files,
            )
        except (storage.StorageError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring checkpoint %s: unreadable manifest (%s)", uri, error)
            return None

    def complete(self) -> list[CheckpointRecord]:
        """Every complete checkpoint, oldest first."""
        step_dirs: set[str] = set()
        manifests: set[str] = set()
        for uri in storage.list_prefix(self.prefix):
            relative = uri[len(self.prefix) :]
            head, _, rest = relative.partition("/")
            if not STEP_DIR.match(head + "/"):
                continue
            step_dirs.add(head)
            if rest == MANIFEST_NAME:
                manifests.add(head)
        records = []
        for head in sorted(step_dirs):
            if head not in manifests:
                log.info("ignoring %s%s/: no %s (an interrupted upload)", self.prefix, head, MANIFEST_NAME)
                continue
            record = self._read_manifest(f"{self.prefix}{head}/")
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.step)

    def latest(self) -> CheckpointRecord | None:
        records = self.complete()
        return records[-1] if records else None

    def download(self, record: CheckpointRecord, local_dir: Path) -> Path:
        """Fetch exactly the manifest's files and verify their hashes."""
        local_dir.mkdir(parents=True, exist_ok=True)
        for relative, size, digest in record.files:
            if ".." in Path(relative).parts:
                raise CheckpointError(
                    f"{record.uri}: manifest path {relative!r} climbs out of the checkpoint"
                )
            target = storage.download_file(record.uri + relative, local_dir / relative)
            if target.stat().st_size != size or sha256_file(target) != digest:
                raise CheckpointError(f"{record.uri}{relative} does not match its manifest (size/sha256)")
        return local_dir

    # -------------------------------------------------------------------------------------- retention

    def retain(self, keep_last: int) -> list[CheckpointRecord]:
        """Delete this writer's complete checkpoints beyond the newest keep_last and the best; returns the kept."""
        records = self.complete()
        keep = {r.step for r in records[-keep_last:]}
        # A NaN loss (a diverged evaluation) is the worst, as the train stage counts it, never the best.
        scored = [r for r in records if r.eval_loss is not None and math.isfinite(r.eval_loss)]
        if scored:
            keep.add(min(scored, key=lambda r: (r.eval_loss, -r.step)).step)
        kept: list[CheckpointRecord] = []
        for record in records:
            if record.step in keep:
                kept.append(record)
            elif record.writer == self.writer and record.uri.startswith(self.prefix):
                self.delete(record)
            else:
                kept.append(record)  # not ours: leave it alone
        return kept

    def delete(self, record: CheckpointRecord) -> None:
        delete_uri(record.uri + MANIFEST_NAME)
        for relative, _, _ in record.files:
            delete_uri(record.uri + relative)
        log.info("deleted checkpoint step %d (%s)", record.step, record.uri)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        storage.write_text(self.prefix + HISTORY_NAME, json.dumps(history, indent=1))

    def read_history(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(storage.read_text(self.prefix + HISTORY_NAME))
        except (storage.StorageError, ValueError):
            return []
        return data if isinstance(data, list) else []
