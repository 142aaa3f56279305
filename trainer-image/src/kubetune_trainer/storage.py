"""One small storage interface over local paths, `pvc://CLAIM/path` and `s3://bucket/key` URIs.

Every stage reads and writes through these functions, so a stage never cares where its data lives.

- `s3://` goes through boto3. The client is built from the standard environment (`AWS_ENDPOINT_URL_S3` or
  `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`),
  retries adaptively (`AWS_MAX_ATTEMPTS`, default 10; tests set 1 so a failure is not hidden behind a
  retry storm) and transfers large objects as concurrent multipart uploads/downloads.
- `pvc://CLAIM/path` is a PersistentVolumeClaim mounted at `$KUBETUNE_PVC_ROOT/CLAIM` (default `/mnt/pvc`).
- `file:///abs/path` and plain paths are local files.

Writes to local paths are atomic (temporary file + rename), so a reader never sees half a file. Nothing here
deletes objects: the trainer removes only what it wrote itself, and that code lives next to what wrote it.
Credentials are never logged; errors name the URI only.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

log = logging.getLogger(__name__)

DEFAULT_PVC_ROOT = "/mnt/pvc"
# 64 MiB parts and 8 threads: large enough that a multi-GB checkpoint is a few hundred requests, small
# enough that 8 in flight stay well under a pod's memory limit (boto3 buffers about a part per thread).
MULTIPART_CHUNK_BYTES = 64 * 1024 * 1024
MULTIPART_CONCURRENCY = 8
READ_BUFFER_BYTES = 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI, never credentials.

    `not_found` is True when the object, bucket or file does not exist (a user error, not worth a retry).
    """

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {uri}")
    return S3Location(bucket, key)


def local_path(uri: str) -> Path:
    """The filesystem path of a local, file:// or pvc:// URI."""
    if uri.startswith("pvc://"):
        claim, _, rest = uri[len("pvc://") :].partition("/")
        if not claim:
            raise StorageError(f"pvc URI without a claim: {uri}")
        root = Path(os.environ.get("KUBETUNE_PVC_ROOT", DEFAULT_PVC_ROOT))
        path = root / claim / rest
        # pvc:// is user input: refuse anything that climbs out of its claim's mount.
        if ".." in Path(rest).parts:
            raise StorageError(f"pvc URI must not contain '..': {uri}")
        return path
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise StorageError(f"unsupported URI scheme: {uri} (use s3://, pvc://, file:// or a path)")
    return Path(uri)


def join(prefix: str, *parts: str) -> str:
    """Join a URI prefix and relative parts with exactly one '/' between them."""
    out = prefix.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


# --------------------------------------------------------------------------------------------- S3 client


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


# The stage running (set by the entry point): requests carry it in their User-Agent (`app/kubetune-STAGE`),
# so a bucket's access log (and the sandbox's request log) tells which stage read what.
STAGE_ENV = "KUBETUNE_STAGE"


def s3_client() -> Any:
    """A boto3 S3 client for the current environment (cached per distinct environment)."""
    stage = _env(STAGE_ENV)
    return _cached_client(
        _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        _env("AWS_REGION", "AWS_DEFAULT_REGION", default="us-east-1"),
        _env("AWS_ACCESS_KEY_ID"),
        _env("AWS_SECRET_ACCESS_KEY"),
        _env("AWS_SESSION_TOKEN"),
        int(_env("AWS_MAX_ATTEMPTS", default="10") or "10"),
        _env("KUBETUNE_S3_ADDRESSING_STYLE"),
        _env("AWS_SDK_UA_APP_ID", default=f"kubetune-{stage}" if stage else None),
    )


@functools.lru_cache(maxsize=8)
def _cached_client(  # noqa: PLR0917 - positional so lru_cache keys on the whole environment
    endpoint: str | None,
    region: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    max_attempts: int,
    addressing_style: str | None,
    app_id: str | None = None,
) -> Any:
    import boto3
    from botocore.config import Config

    # S3-compatible stores (MinIO, Ceph, moto) behind a custom endpoint want path-style addressing.
    style = addressing_style or ("path" if endpoint else "auto")
    config = Config(
        # AWS_MAX_ATTEMPTS counts every attempt, as botocore's total_max_attempts does (max_attempts counts retries).
        retries={"mode": "adaptive", "total_max_attempts": max_attempts},
        s3={"addressing_style": style},
        max_pool_connections=MULTIPART_CONCURRENCY * 2,
        connect_timeout=10,
        read_timeout=120,
        user_agent_appid=app_id,
    )
    log.debug("s3 client: endpoint=%s region=%s max_attempts=%d", endpoint or "default", region, max_attempts)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        config=config,
    )


def transfer_config() -> TransferConfig:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_CHUNK_BYTES,
        multipart_chunksize=MULTIPART_CHUNK_BYTES,
        max_concurrency=MULTIPART_CONCURRENCY,
        use_threads=True,
    )


_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _s3_error(action: str, uri: str, error: Exception) -> StorageError:
    # botocore's messages carry the operation and the status code, never the credentials.
    # Connection errors carry no response (botocore sets it to None).
    code = str(((getattr(error, "response", None) or {}).get("Error") or {}).get("Code", ""))
    return StorageError(f"{action} {uri} failed: {error}", not_found=code in _NOT_FOUND_CODES)


# ------------------------------------------------------------------------------------------ streaming read


class _StreamingBodyReader(io.RawIOBase):
    """A raw stream over a botocore StreamingBody, so io.BufferedReader/TextIOWrapper can wrap it."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_read(uri: str) -> BinaryIO:
    """A buffered binary stream; memory stays bounded by the buffer whatever the object's size."""
    if is_s3(uri):
        loc = parse_s3(uri)
        try:
            response = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)
        except Exception as error:
            raise _s3_error("reading", uri, error) from error
        raw = _StreamingBodyReader(response["Body"])
        return io.BufferedReader(raw, buffer_size=READ_BUFFER_BYTES)
    path = local_path(uri)
    try:
        return path.open("rb", buffering=READ_BUFFER_BYTES)
    except OSError as error:
        missing = isinstance(error, FileNotFoundError)
        raise StorageError(f"reading {uri} failed: {error.strerror or error}", not_found=missing) from error


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as stream:
        return stream.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


# ------------------------------------------------------------------------------------------------- write


def _atomic_local_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    if is_s3(uri):
        loc = parse_s3(uri)
        try:
            s3_client().upload_fileobj(io.BytesIO(data), loc.bucket, loc.key, Config=transfer_config())
        except Exception as error:
            raise _s3_error("writing", uri, error) from error
        return
    _atomic_local_write(local_path(uri), data)


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def upload_file(local_file: str | os.PathLike[str], uri: str) -> None:
    """Copy a local file to a URI (multipart for large files on S3)."""
    source = Path(local_file)
    if is_s3(uri):
        loc = parse_s3(uri)
        try:
            s3_client().upload_file(str(source), loc.bucket, loc.key, Config=transfer_config())
        except Exception as error:
            raise _s3_error("uploading to", uri, error) from error
        return
    target = local_path(uri)
    if target.resolve() == source.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_file(uri: str, local_file: str | os.PathLike[str]) -> Path:
    """Copy a URI to a local file (concurrent ranged GETs for large S3 objects); returns the path."""
    target = Path(local_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        loc = parse_s3(uri)
        try:
            s3_client().download_file(loc.bucket, loc.key, str(target), Config=transfer_config())
        except Exception as error:
            raise _s3_error("downloading", uri, error) from error
        return target
    source = local_path(uri)
    if source.resolve() != target.resolve():
        try:
            shutil.copyfile(source, target)
        except OSError as error:
            missing = isinstance(error, FileNotFoundError)
            raise StorageError(
                f"downloading {uri} failed: {error.strerror or error}", not_found=missing
            ) from error
    return target


# ------------------------------------------------------------------------------------------ listing, dirs


def exists(uri: str) -> bool:
    """True when the URI names an object/file, or (ending in '/') a non-empty prefix/directory."""
    if is_s3(uri):
        loc = parse_s3(uri)
        client = s3_client()
        if loc.key and not loc.key.endswith("/"):
            try:
                client.head_object(Bucket=loc.bucket, Key=loc.key)
                return True
            except Exception as error:
                wrapped = _s3_error("checking", uri, error)
                if wrapped.not_found:
                    return False
                raise wrapped from error
        return bool(_iter_s3_keys(loc, limit=1))
    path = local_path(uri)
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a prefix: its path relative to the prefix, its size and a version tag (the S3 ETag,
    or the local file's mtime), which change when the object is replaced."""

    relative: str
    size: int
    tag: str


def stat_prefix(uri_prefix: str) -> list[ObjectInfo]:
    """Every object under a prefix ('/' appended) with its size and tag, sorted: one LIST, no GET."""
    prefix = uri_prefix if uri_prefix.endswith("/") else uri_prefix + "/"
    if is_s3(prefix):
        loc = parse_s3(prefix)
        found: list[ObjectInfo] = []
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
            for page in pages:
                for item in page.get("Contents", []):
                    relative = item["Key"][len(loc.key) :]
                    if relative and not relative.endswith("/"):  # "directory marker" objects hold nothing
                        found.append(ObjectInfo(relative, int(item["Size"]), str(item.get("ETag", ""))))
        except Exception as error:
            raise _s3_error("listing", prefix, error) from error
        return sorted(found, key=lambda info: info.relative)
    root = local_path(prefix)
    return [
        ObjectInfo(path.relative_to(root).as_posix(), stat.st_size, str(stat.st_mtime_ns))
        for path in _iter_local_files(root)
        for stat in [path.stat()]
    ]


def _iter_s3_keys(loc: S3Location, limit: int | None = None) -> list[str]:
    client = s3_client()
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key):
            for item in page.get("Contents", []):
                keys.append(item["Key"])
                if limit is not None and len(keys) >= limit:
                    return keys
    except Exception as error:
        raise _s3_error("listing", loc.uri, error) from error
    return keys


def _iter_local_files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.endswith(".tmp"):
                yield path


def list_prefix(uri: str) -> list[str]:
    """Every object (recursively) under a prefix, as sorted URIs in the same scheme as `uri`.

    A prefix ending in '/' lists that "directory"; without it, S3 semantics apply (plain key prefix).
    """
    if is_s3(uri):
        loc = parse_s3(uri)
        return sorted(f"s3://{loc.bucket}/{key}" for key in _iter_s3_keys(loc))
    path = local_path(uri)
    prefix = uri.rstrip("/")
    if uri.endswith("/") or path.is_dir():
        return [prefix + "/" + p.relative_to(path).as_posix() for p in _iter_local_files(path)]
    # A plain prefix of file names in one directory, like S3's.
    parent, stem = path.parent, path.name
    base = prefix[: len(prefix) - len(stem)]
    if not parent.is_dir():
        return []
    out: list[str] = []
    for child in sorted(parent.iterdir()):
        if child.name.startswith(stem):
            for p in _iter_local_files(child):
                out.append(base + p.relative_to(parent).as_posix())
    return out


def upload_dir(local_dir: str | os.PathLike[str], uri_prefix: str) -> list[str]:
    """Upload every file under local_dir to uri_prefix, keeping relative paths; returns the URIs written."""
    root = Path(local_dir)
    written: list[str] = []
    for path in _iter_local_files(root):
        target = join(uri_prefix, path.relative_to(root).as_posix())
        upload_file(path, target)
        written.append(target)
    return written


def download_hf(uri: str, destination: str | Path) -> Path:
    """A whole Hugging Face Hub repository `hf://ORG/NAME[@revision]` into a local directory (the serving pods'
    fetch step: the pod needs the hub reachable, and `HF_TOKEN` for gated models, e.g. from the storage
    secret). Refuses plainly where the hub is switched off (HF_HUB_OFFLINE)."""
    if not uri.startswith("hf://") or not uri[len("hf://") :].partition("@")[0].strip("/"):
        raise StorageError(f"not an hf://ORG/NAME[@revision] URI: {uri}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise StorageError(f"{uri}: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE)")
    name, _, revision = uri[len("hf://") :].partition("@")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(name.strip("/"), revision=revision or None, local_dir=str(destination))
    except Exception as error:  # the hub's errors name the repository, never the token
        raise StorageError(f"{uri}: could not download from the Hugging Face Hub ({error})") from error
    return Path(path)


def download_dir(uri_prefix: str, local_dir: str | os.PathLike[str]) -> Path:
    """Download every object under uri_prefix into local_dir, keeping relative paths; returns local_dir."""
    root = Path(local_dir)
    root.mkdir(parents=True, exist_ok=True)
    prefix = uri_prefix if uri_prefix.endswith("/") else uri_prefix + "/"
    for uri in list_prefix(prefix):
        relative = uri[len(prefix) :]
        if not relative or relative.endswith("/"):
            continue  # S3 "directory marker" objects
        if ".." in Path(relative).parts:
            raise StorageError(f"refusing to download {uri}: its key climbs out of {prefix}")
        download_file(uri, root / relative)
    return root
