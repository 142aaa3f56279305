"""The storage layer over S3 (moto over real HTTP), pvc:// and local paths."""

from __future__ import annotations

import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from kubetune_trainer import storage
from tests.trainer.conftest import S3Helper


@pytest.mark.parametrize("kind", ["s3", "pvc", "local"])
def test_round_trip_every_operation(kind: str, s3: S3Helper, pvc_root: Path, tmp_path: Path) -> None:
    base = {"s3": "s3://artifacts/job", "pvc": "pvc://claim/job", "local": str(tmp_path / "local" / "job")}[
        kind
    ]
    storage.write_text(f"{base}/a.txt", "héllo")
    storage.write_bytes(f"{base}/sub/b.bin", b"\x00\x01")
    assert storage.read_text(f"{base}/a.txt") == "héllo"
    assert storage.read_bytes(f"{base}/sub/b.bin") == b"\x00\x01"
    assert storage.exists(f"{base}/a.txt")
    assert storage.exists(f"{base}/")
    assert not storage.exists(f"{base}/missing.txt")
    assert not storage.exists(f"{base}-nothing/")
    assert storage.list_prefix(f"{base}/") == [f"{base}/a.txt", f"{base}/sub/b.bin"]
    with storage.open_read(f"{base}/a.txt") as stream:
        assert stream.readline() == "héllo".encode()

    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "x.json").write_text("{}")
    (src / "deep" / "er" / "y.txt").write_text("y")
    written = storage.upload_dir(src, f"{base}/up/")
    assert written == [f"{base}/up/deep/er/y.txt", f"{base}/up/x.json"]
    out = storage.download_dir(f"{base}/up", tmp_path / f"down-{kind}")
    assert (out / "deep" / "er" / "y.txt").read_text() == "y"
    assert (out / "x.json").read_text() == "{}"

    storage.upload_file(src / "x.json", f"{base}/single.json")
    assert storage.download_file(f"{base}/single.json", tmp_path / "single.json").read_text() == "{}"


def test_pvc_maps_under_root_and_refuses_traversal(pvc_root: Path) -> None:
    assert storage.local_path("pvc://models/llama/config.json") == pvc_root / "models/llama/config.json"
    with pytest.raises(storage.StorageError, match=r"\.\."):
        storage.local_path("pvc://models/../../etc/passwd")
    with pytest.raises(storage.StorageError, match="unsupported"):
        storage.local_path("gs://bucket/key")


def test_pvc_inputs_are_read_in_place_at_the_claims_mount(pvc_root: Path, tmp_path: Path) -> None:
    """The operator mounts pvc://CLAIM read-only at /mnt/pvc/CLAIM (KUBETUNE_PVC_ROOT here) and passes the
    URI unchanged: the dataset and the model are read from there, never copied."""
    from kubetune_trainer.stages.validate import fetch_model_metadata
    from kubetune_trainer.training.model import fetch_model

    data = pvc_root / "datasets" / "support" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"messages": []}\n')
    model = pvc_root / "model-store" / "llama"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")

    assert storage.read_text("pvc://datasets/support/train.jsonl") == '{"messages": []}\n'
    with storage.open_read("pvc://datasets/support/train.jsonl") as stream:
        assert stream.read() == b'{"messages": []}\n'
    assert storage.list_prefix("pvc://model-store/llama/") == ["pvc://model-store/llama/config.json"]
    assert fetch_model("pvc://model-store/llama", cache_root=tmp_path / "cache") == model
    assert fetch_model_metadata("pvc://model-store/llama", tmp_path / "meta") == (model, None)
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "meta").exists()


def test_s3_missing_object_names_the_uri_not_the_credentials(
    s3: S3Helper, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kubetune_trainer")
    with pytest.raises(storage.StorageError) as info:
        storage.read_bytes("s3://data/nope.jsonl")
    assert "s3://data/nope.jsonl" in str(info.value)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in str(info.value)
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_client_honours_env_endpoint_and_attempts(s3: S3Helper, monkeypatch: pytest.MonkeyPatch) -> None:
    client = storage.s3_client()
    assert client.meta.endpoint_url == s3.endpoint
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.retries["total_max_attempts"] == 1
    # The S3-specific variable wins over the generic one (the AWS SDK convention).
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert storage.s3_client().meta.endpoint_url == "http://127.0.0.1:1"


def test_large_object_streams_in_bounded_chunks_and_uploads_multipart(
    s3: S3Helper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with big.open("wb") as out:
        for _ in range(20):
            out.write(block)
    monkeypatch.setattr(storage, "MULTIPART_CHUNK_BYTES", 5 * 1024 * 1024)  # S3's minimum part size
    storage.upload_file(big, "s3://artifacts/big.bin")
    head = s3.client.head_object(Bucket="artifacts", Key="big.bin")
    assert head["ContentLength"] == 20 * len(block)
    assert head["ETag"].strip('"').endswith("-4"), "expected a 4-part multipart upload"
    downloaded = storage.download_file("s3://artifacts/big.bin", tmp_path / "back.bin")
    assert downloaded.read_bytes() == big.read_bytes()

    # moto serves from this same process, so tracemalloc would count its copy of the object too: check
    # instead that the reader never asks the HTTP body for more than one buffer at a time.
    requested: list[int] = []
    original = storage._StreamingBodyReader.readinto

    def recording_readinto(self: storage._StreamingBodyReader, buffer: memoryview) -> int:
        requested.append(len(buffer))
        return original(self, buffer)

    monkeypatch.setattr(storage._StreamingBodyReader, "readinto", recording_readinto)
    total = 0
    with storage.open_read("s3://artifacts/big.bin") as stream:
        while chunk := stream.read(256 * 1024):
            total += len(chunk)
    assert total == 20 * len(block)
    assert len(requested) >= 20
    assert max(requested) <= storage.READ_BUFFER_BYTES


def test_local_stream_memory_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(16 * 1024 * 1024))
    tracemalloc.start()
    total = 0
    with storage.open_read(str(big)) as stream:
        while chunk := stream.read(256 * 1024):
            total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 16 * 1024 * 1024
    assert peak < 4 * 1024 * 1024, f"streaming read held {peak} bytes"
