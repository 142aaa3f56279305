"""A content-addressed model cache that pods share: `ROOT/<key>/` holds one complete download of a model.

ROOT is `$KUBETUNE_MODEL_CACHE` (the operator sets it to /cache/models when the resource has spec.cache: a
user's PersistentVolumeClaim, shared by every stage, retry, node and replica, or a volume per pod), else the
pod's own work directory. Only models are cached: datasets and checkpoints change and are always read from
storage.

- The key is the sha256 of the source URI and, for `s3://` prefixes, of the listing's names, sizes and ETags
  (one LIST request): a model overwritten at the same prefix gets a new key, never a stale copy. `hf://ORG/NAME@REV`
  is keyed by its URI: pin a commit for a model that must not move.
- A download goes into `ROOT/.partial-<key>-XXXX/`, is checked against the listing (every file, every
  size), gets its completion marker, and is then renamed to `ROOT/<key>/` in one step: a crashed download
  never looks complete, and a reader never sees half a model.
- Pods that want the same model at once take `ROOT/.<key>.lock` (flock): the first downloads, the others wait
  and then find it complete. Where the filesystem has no working locks, two pods may both download; the
  rename still lets exactly one win and the other discards its copy.
- Nothing is ever deleted but our own partial downloads (a crashed pod's, removed under the lock) and the
  loser's copy of a race. Old versions stay until the claim's owner removes them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetune_trainer import storage

log = logging.getLogger(__name__)

MODEL_CACHE_ENV = "KUBETUNE_MODEL_CACHE"  # kubetune.render.pod.MODEL_CACHE_ENV
COMPLETE_MARKER = ".kubetune-complete"
PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class CachedModel:
    path: Path
    hit: bool  # found complete: nothing was downloaded
    objects: int  # files downloaded now (0 on a hit)
    bytes: int


def shared_root() -> Path | None:
    """The cache the operator mounted for spec.cache, or None."""
    value = os.environ.get(MODEL_CACHE_ENV)
    return Path(value) if value else None


def cacheable(uri: str) -> bool:
    """Sources copied into the pod: s3:// prefixes and hf:// repositories (pvc:// is read in place)."""
    return storage.is_s3(uri) or uri.startswith("hf://")


def _key(uri: str, listing: list[storage.ObjectInfo]) -> str:
    digest = hashlib.sha256(uri.encode())
    for info in listing:
        digest.update(f"\n{info.relative}\t{info.size}\t{info.tag}".encode())
    return digest.hexdigest()


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def fetch(uri: str, root: Path) -> CachedModel:
    """The model at `uri` as a complete directory under `root`, downloaded unless it is there already."""
    if storage.is_s3(uri):
        prefix = uri if uri.endswith("/") else uri + "/"
        listing = storage.stat_prefix(prefix)
        if not listing:
            raise storage.StorageError(f"no model at {prefix}: the prefix holds no objects", not_found=True)
        key = _key(prefix, listing)
    elif uri.startswith("hf://"):
        prefix, listing = uri, []
        key = _key(uri, listing)
    else:
        raise storage.StorageError(f"only s3:// and hf:// models are cached, not {uri}")
    target = root / key
    if is_complete(target):
        log.info("model cache hit: %s at %s (nothing downloaded)", uri, target)
        return CachedModel(target, hit=True, objects=0, bytes=0)
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{key}.lock") as locked:
        if is_complete(target):  # another pod finished it while this one waited
            log.info("model cache hit after waiting: %s at %s (nothing downloaded)", uri, target)
            return CachedModel(target, hit=True, objects=0, bytes=0)
        if locked:
            _remove_partials(root, key)
        started = time.perf_counter()
        partial = Path(tempfile.mkdtemp(dir=root, prefix=f"{PARTIAL_PREFIX}{key[:16]}-"))
        try:
            objects, size = _download(prefix, listing, partial)
            (partial / COMPLETE_MARKER).write_text(
                json.dumps({"uri": uri, "objects": objects, "bytes": size}, sort_keys=True)
            )
            won = _publish(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    log.info(
        "model cache %s: %s, %d objects (%d bytes) in %.1fs at %s",
        "filled" if won else "filled by another pod first",
        uri,
        objects,
        size,
        time.perf_counter() - started,
        target,
    )
    return CachedModel(target, hit=False, objects=objects, bytes=size)


def _download(prefix: str, listing: list[storage.ObjectInfo], partial: Path) -> tuple[int, int]:
    if prefix.startswith("hf://"):
        storage.download_hf(prefix, partial)
        files = [p for p in partial.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)
    for info in listing:
        if ".." in Path(info.relative).parts:
            raise storage.StorageError(f"refusing {prefix}{info.relative}: its key climbs out of {prefix}")
        local = storage.download_file(prefix + info.relative, partial / info.relative)
        got = local.stat().st_size
        if got != info.size:
            raise storage.StorageError(
                f"downloading {prefix}{info.relative} gave {got} bytes, the listing said {info.size}"
            )
    return len(listing), sum(info.size for info in listing)


def _publish(partial: Path, target: Path) -> bool:
    """Rename the finished download into place; False when another pod's complete copy got there first."""
    try:
        partial.rename(target)
        return True
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not is_complete(target):
            raise
        shutil.rmtree(partial, ignore_errors=True)
        return False


def _remove_partials(root: Path, key: str) -> None:
    """A crashed pod's partial downloads of this model; only safe while holding the key's lock."""
    for stale in root.glob(f"{PARTIAL_PREFIX}{key[:16]}-*"):
        log.info("model cache: removing the partial download %s left by a stopped pod", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive flock on `path`, yielding True; False where the filesystem refuses locks."""
    import fcntl

    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.warning("model cache: %s cannot be locked (%s); downloading without a lock", path, error)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
