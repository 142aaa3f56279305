"""Names and URIs with path traversal or shell metacharacters: refused by admission, or, if admitted, never
passed to a shell and never resolved outside the job's own S3 prefix."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.api.common import ResourceIdentity
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_config import ArtifactLayout
from kubetune.render import finetunejob as render_job
from kubetune.render.pod import OperatorDefaults
from kubetune_sandbox.emulator.admission import AdmissionError
from kubetune_trainer import storage
from kubetune_trainer.checkpoints import CheckpointStore
from tests.hostile.strategies import HOSTILE_PIECES
from tests.hostile.test_spec_properties import ADMISSION, JOB_EXAMPLES, NO_SHRINK, VERSION, assert_exec_form

EXAMPLE = JOB_EXAMPLES[0]
URI_FIELDS = [("baseModel", "uri"), ("dataset", "uri"), ("output", "uri")]
LAYOUT_PATHS = ["validation_report", "prepared_data", "checkpoints", "adapter", "merged", "exports",
                "evaluation_report", "manifest"]  # fmt: skip


def _job(name: str = "hostile", **uris: str) -> dict[str, Any]:
    obj = json.loads(json.dumps(EXAMPLE))
    obj["metadata"]["name"] = name
    for (section, key), value in zip(URI_FIELDS, (uris.get(s) for s, _ in URI_FIELDS), strict=True):
        if value is not None:
            obj["spec"][section][key] = value
    return obj


@pytest.mark.parametrize("piece", HOSTILE_PIECES)
def test_hostile_names_are_refused_naming_metadata_name(piece: str) -> None:
    with pytest.raises(AdmissionError) as refused:
        ADMISSION["FineTuneJob"].admit(_job(name=f"bot{piece}x"), version=VERSION)
    assert any(cause.field == "metadata.name" for cause in refused.value.causes), refused.value.causes


def _under(path: str, prefix: str) -> bool:
    """`path` lies under `prefix`, with no '.'/'..' segment that a store or proxy could normalise away."""
    rest = path[len(prefix) :]
    return path.startswith(prefix) and not ({".", ".."} & set(PurePosixPath(rest).parts))


def check_confined(spec: FineTuneJobSpec) -> None:
    """Everything the job writes lies under spec.output.uri, and no URI ever appears in a command line."""
    root = spec.output.uri
    layout = ArtifactLayout(root=root)
    for name in LAYOUT_PATHS:
        assert _under(getattr(layout, name), root), (name, getattr(layout, name))
    assert _under(storage.join(layout.checkpoints, "step-00000001", "adapter_model.safetensors"), root)
    assert _under(CheckpointStore(layout.checkpoints, writer="x").uri_for(10**8 - 1), root)
    owner = ResourceIdentity(name="hostile", namespace="default", uid="uid", generation=1)
    manifests = [render_job.validation_job(owner, spec, OperatorDefaults(), "d"),
                 render_job.training_job(owner, spec, OperatorDefaults(), "d"),
                 render_job.finishing_job(owner, spec, OperatorDefaults(), "d")]  # fmt: skip
    assert_exec_form(manifests)
    commands = json.dumps([c.get("command", []) + c.get("args", []) for m in manifests
                           for c in m["spec"]["template"]["spec"]["containers"]])  # fmt: skip
    for uri in (spec.base_model.uri, spec.dataset.uri, root):
        assert uri not in commands  # URIs travel in the mounted config file, never on a command line


@settings(max_examples=150, deadline=None, phases=NO_SHRINK, derandomize=True, database=None)
@given(
    field=st.sampled_from(range(len(URI_FIELDS))),
    piece=st.sampled_from(HOSTILE_PIECES),
    position=st.floats(0, 1),
)
def test_hostile_uris_are_refused_or_confined(field: int, piece: str, position: float) -> None:
    section, key = URI_FIELDS[field]
    original = EXAMPLE["spec"][section][key]
    cut = 5 + round(position * (len(original) - 5))  # after "s3://"
    hostile = original[:cut] + piece + original[cut:]
    try:
        admitted = ADMISSION["FineTuneJob"].admit(_job(**{section: hostile}), version=VERSION)
    except AdmissionError as refused:
        assert any(cause.field.startswith(f"spec.{section}") for cause in refused.causes), refused.causes
        return
    assert not ({";", "$", "`", "\n", "\r", "|", "&", "\\", '"', " ", "\x00"} & set(hostile)), hostile
    check_confined(FineTuneJobSpec.model_validate(admitted["spec"]))


@pytest.mark.parametrize(
    "uri",
    [
        "s3://artifacts/a/..b/",
        "s3://artifacts/it's(1)/",
        "s3://artifacts/a*b=c+d@e,f:g!/",
        "pvc://claim/x.y/",
    ],
)
def test_admitted_odd_but_legal_uris_stay_confined(uri: str) -> None:
    """Quotes, parentheses and '*' are legal in S3 keys; they are admitted and harmless without a shell."""
    admitted = ADMISSION["FineTuneJob"].admit(_job(output=uri), version=VERSION)
    check_confined(FineTuneJobSpec.model_validate(admitted["spec"]))


@pytest.mark.parametrize("uri", ["s3://artifacts/a/../b/", "s3://artifacts/a/./b/", "s3://artifacts//b/",
                                 "pvc://claim/../etc/", "s3://artifacts/$(id)/", "s3://artifacts/a;b/"])  # fmt: skip
def test_traversal_and_metacharacters_in_output_are_refused(uri: str) -> None:
    with pytest.raises(AdmissionError) as refused:
        ADMISSION["FineTuneJob"].admit(_job(output=uri), version=VERSION)
    assert any(cause.field == "spec.output.uri" for cause in refused.value.causes)


def test_trainer_refuses_keys_that_climb_out_of_its_prefix(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted object whose key climbs ('../') is never downloaded outside the target folder."""
    source = tmp_path / "store" / "job"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "ok.txt").write_text("ok")
    listing = storage.list_prefix
    # What S3 could answer: a bucket may hold a key with '..' in it.
    monkeypatch.setattr(storage, "list_prefix", lambda uri: [*listing(uri), uri + "../escape.txt"])
    with pytest.raises(storage.StorageError, match="climbs out"):
        storage.download_dir(str(source), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
