"""The model cache (kubetune_trainer.model_cache) against S3 over real HTTP, counting the requests the server
answered: a cached model costs one LIST and no GET, a crashed or racing download never looks complete, and a
model replaced at the same prefix is downloaded again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune_sandbox.cluster.seed import S3, S3Request
from kubetune_trainer import model_cache, storage

BUCKET = "models-bucket"
MODEL_URI = f"s3://{BUCKET}/llama/"
# A model directory as the cache sees it: names and bytes (the cache never parses them).
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "tokenizer.json": b"{}" * 100,
    "model.safetensors": os.urandom(300_000),
    "nested/extra.bin": b"x" * 1000,
}


@dataclass
class LoggedS3:
    server: S3
    client: Any

    def put_model(self, files: dict[str, bytes], uri: str = MODEL_URI) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        for name, data in files.items():
            self.client.put_object(Bucket=bucket, Key=prefix + name, Body=data)

    def mark(self) -> int:
        return len(self.server.requests())

    def since(self, mark: int) -> list[S3Request]:
        return self.server.requests()[mark:]

    def object_gets(self, mark: int, uri: str = MODEL_URI) -> int:
        return sum(request.is_object_get(uri) for request in self.since(mark))


@pytest.fixture(scope="module")
def logged_server() -> Iterator[S3]:
    server = S3().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3log(logged_server: S3, monkeypatch: pytest.MonkeyPatch) -> LoggedS3:
    request = urllib.request.Request(f"{logged_server.endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(model_cache.MODEL_CACHE_ENV, raising=False)
    monkeypatch.setenv(storage.STAGE_ENV, "test")  # restored after the test, whatever a stage sets it to
    for key, value in {**logged_server.environment(), "AWS_MAX_ATTEMPTS": "1",
                       "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    client = logged_server.client()
    client.create_bucket(Bucket=BUCKET)
    helper = LoggedS3(logged_server, client)
    helper.put_model(FILES)
    return helper


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != model_cache.COMPLETE_MARKER
    }


def test_the_first_fetch_downloads_every_object_and_the_second_none(s3log: LoggedS3, tmp_path: Path) -> None:
    root = tmp_path / "cache" / "models"
    mark = s3log.mark()
    first = model_cache.fetch(MODEL_URI, root)
    assert (first.hit, first.objects) == (False, len(FILES))
    assert s3log.object_gets(mark) == len(FILES)
    assert _tree(first.path) == FILES
    assert json.loads((first.path / model_cache.COMPLETE_MARKER).read_text())["objects"] == len(FILES)

    mark = s3log.mark()
    second = model_cache.fetch(MODEL_URI.rstrip("/"), root)  # the same prefix, written without the '/'
    assert (second.hit, second.objects, second.path) == (True, 0, first.path)
    requests = s3log.since(mark)
    assert s3log.object_gets(mark) == 0
    assert [(r.method, "list-type=2" in r.query) for r in requests] == [("GET", True)]  # one LIST


def test_a_model_replaced_at_the_same_prefix_is_downloaded_again(s3log: LoggedS3, tmp_path: Path) -> None:
    root = tmp_path / "models"
    old = model_cache.fetch(MODEL_URI, root)
    s3log.put_model({"model.safetensors": b"retrained weights"})
    mark = s3log.mark()
    new = model_cache.fetch(MODEL_URI, root)
    assert new.path != old.path and not new.hit
    assert s3log.object_gets(mark) == len(FILES)
    assert (new.path / "model.safetensors").read_bytes() == b"retrained weights"
    assert (old.path / "model.safetensors").read_bytes() == FILES["model.safetensors"]  # never deleted


def test_a_failed_download_leaves_nothing_that_looks_complete(
    s3log: LoggedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    real_download = storage.download_file
    calls = []

    def dies_on_the_third_object(uri: str, local_file: Any) -> Path:
        calls.append(uri)
        if len(calls) == 3:
            raise storage.StorageError(f"downloading {uri} failed: connection reset")
        return real_download(uri, local_file)

    monkeypatch.setattr(storage, "download_file", dies_on_the_third_object)
    with pytest.raises(storage.StorageError, match="connection reset"):
        model_cache.fetch(MODEL_URI, root)
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(storage, "download_file", real_download)
    mark = s3log.mark()
    assert model_cache.fetch(MODEL_URI, root).hit is False
    assert s3log.object_gets(mark) == len(FILES)


def test_a_killed_pods_partial_download_is_removed_and_never_used(s3log: LoggedS3, tmp_path: Path) -> None:
    root = tmp_path / "models"
    key = model_cache.fetch(MODEL_URI, root).path.name
    # What a SIGKILLed pod leaves: a partial directory (half the files, no marker), and no complete copy.
    (root / key).rename(root / f"{model_cache.PARTIAL_PREFIX}{key[:16]}-killed")
    (root / f"{model_cache.PARTIAL_PREFIX}{key[:16]}-killed" / model_cache.COMPLETE_MARKER).unlink()
    other = root / f"{model_cache.PARTIAL_PREFIX}{'0' * 16}-another-model"
    other.mkdir()
    mark = s3log.mark()
    fetched = model_cache.fetch(MODEL_URI, root)
    assert not fetched.hit and s3log.object_gets(mark) == len(FILES)
    assert _tree(fetched.path) == FILES
    partials = sorted(p.name for p in root.iterdir() if p.name.startswith(model_cache.PARTIAL_PREFIX))
    assert partials == [other.name]  # only this model's leftovers, removed under its lock


def test_a_truncated_object_fails_the_download(
    s3log: LoggedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_download = storage.download_file

    def truncating(uri: str, local_file: Any) -> Path:
        path = real_download(uri, local_file)
        if uri.endswith("model.safetensors"):
            with path.open("r+b") as handle:
                handle.truncate(10)
        return path

    monkeypatch.setattr(storage, "download_file", truncating)
    with pytest.raises(storage.StorageError, match="gave 10 bytes, the listing said 300000"):
        model_cache.fetch(MODEL_URI, tmp_path / "models")
    assert not any(model_cache.is_complete(p) for p in (tmp_path / "models").iterdir())


def test_a_race_lost_at_the_rename_keeps_the_winners_copy(tmp_path: Path) -> None:
    # Without working locks two pods can both download: the second rename finds a complete copy and yields.
    target = tmp_path / "key"
    winner, loser = tmp_path / ".partial-a", tmp_path / ".partial-b"
    for partial, content in ((winner, b"first"), (loser, b"second")):
        partial.mkdir()
        (partial / "w.bin").write_bytes(content)
        (partial / model_cache.COMPLETE_MARKER).write_text("{}")
    assert model_cache._publish(winner, target) is True
    assert model_cache._publish(loser, target) is False
    assert (target / "w.bin").read_bytes() == b"first" and not loser.exists()


_FETCH_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from kubetune_trainer import model_cache
result = model_cache.fetch(sys.argv[1], Path(sys.argv[2]))
print(json.dumps({"path": str(result.path), "hit": result.hit, "objects": result.objects}))
"""


def test_two_pods_fetching_at_once_download_the_model_once(s3log: LoggedS3, tmp_path: Path) -> None:
    root = tmp_path / "shared" / "models"
    mark = s3log.mark()
    pods = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH_IN_A_PROCESS, MODEL_URI, str(root)],
            stdout=subprocess.PIPE,
            env={**os.environ, "KUBETUNE_STAGE": f"pod{index}"},
        )
        for index in range(2)
    ]
    results = [json.loads(pod.communicate(timeout=120)[0]) for pod in pods]
    assert all(pod.returncode == 0 for pod in pods)
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["objects"] for r in results) == [0, len(FILES)]  # one downloaded, the other waited
    gets = [r for r in s3log.since(mark) if r.is_object_get(MODEL_URI)]
    assert len(gets) == len(FILES) and len({r.stage for r in gets}) == 1
    assert _tree(Path(results[0]["path"])) == FILES


def test_stages_share_the_cache_named_by_the_environment(
    s3log: LoggedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation (a CPU pod) fills the shared cache; training's fetch_model then downloads nothing."""
    from kubetune_trainer.stages.validate import fetch_model_metadata
    from kubetune_trainer.training.model import fetch_model

    shared = tmp_path / "pvc" / "kubetune" / "models"
    monkeypatch.setenv(model_cache.MODEL_CACHE_ENV, str(shared))
    monkeypatch.setenv(storage.STAGE_ENV, "validate")
    mark = s3log.mark()
    model_dir, note = fetch_model_metadata(MODEL_URI, tmp_path / "meta")
    assert note is None and model_dir is not None and model_dir.parent == shared
    assert s3log.object_gets(mark) == len(FILES)
    monkeypatch.setenv(storage.STAGE_ENV, "train")
    mark = s3log.mark()
    assert fetch_model(MODEL_URI) == model_dir
    assert s3log.object_gets(mark) == 0
    assert {r.stage for r in s3log.since(mark)} == {"train"}  # the User-Agent names the stage


def test_without_a_shared_cache_validation_reads_metadata_only(s3log: LoggedS3, tmp_path: Path) -> None:
    from kubetune_trainer.stages.validate import fetch_model_metadata

    mark = s3log.mark()
    model_dir, _ = fetch_model_metadata(MODEL_URI, tmp_path / "meta")
    assert model_dir == tmp_path / "meta"
    fetched = {r.path.rsplit("/", 1)[-1] for r in s3log.since(mark) if r.is_object_get(MODEL_URI)}
    assert fetched == {"config.json", "tokenizer.json"}


def test_serving_fetch_links_the_cached_model_and_a_second_replica_downloads_nothing(
    s3log: LoggedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune_trainer.__main__ import main

    shared = tmp_path / "model-cache" / "models"
    monkeypatch.setenv(model_cache.MODEL_CACHE_ENV, str(shared))
    mark = s3log.mark()
    assert main(["fetch", MODEL_URI, str(tmp_path / "replica-1" / "base")]) == 0
    assert s3log.object_gets(mark) == len(FILES)
    assert {r.stage for r in s3log.since(mark)} == {"fetch"}
    mark = s3log.mark()
    assert main(["fetch", MODEL_URI, str(tmp_path / "replica-2" / "base")]) == 0
    assert s3log.object_gets(mark) == 0
    for replica in ("replica-1", "replica-2"):
        link = tmp_path / replica / "base"
        assert link.is_symlink() and link.resolve().parent == shared.resolve()
        assert _tree(link.resolve()) == FILES
