"""Stage `export`: the adapter, the merged model, quantized exports and the job's manifest.

- adapter (`artifacts.adapter`): written by train (safetensors, adapter_config.json naming the base by its
  URI, tokenizer and chat template, `kubetune_base.json`); export checks it and records its hashes.
- merged (`artifacts.merged`, when `output.merge` or `output.quantize`): the adapter folded into a
  full-precision copy of the base (`merge_and_unload`) after a compatibility check: an adapter trained on
  another base (other architecture, sizes, module names/shapes, or base weights whose hashes differ from those
  recorded at training time) is refused with an error naming the difference.
- quantized (`artifacts.exports`): bitsandbytes nf4 (double quant) safetensors of the merged model, loadable
  with `from_pretrained` on any bitsandbytes-capable machine. GGUF needs the `gguf` package (and llama.cpp's
  tensor naming/quantisers); when it is absent the requested GGUF formats are reported as skipped.
- manifest.json (`artifacts.manifest`): the TrainerConfig, hyperparameters, dataset sha256 (from the
  validation report), base model URI and file hashes, library versions, evaluation metrics, checkpoint
  history, and every output file with its sha256.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import storage
from kubetune_trainer.checkpoints import CheckpointStore, sha256_file

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = logging.getLogger(__name__)

STAGE = "export"
REASON_EXPORTED = "Exported"
REASON_INCOMPATIBLE = "IncompatibleAdapter"
EXIT_INVALID_INPUT = 2  # an incompatible adapter will not become compatible by retrying
NF4_FORMAT = "bnb-nf4"
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "safetensors",
    "tokenizers",
    "rouge-score",
    "sacrebleu",
    "kubetune",
)


class IncompatibleAdapterError(ValueError):
    """The adapter was not trained on this base model."""


# --------------------------------------------------------------------------------------- compatibility


def _adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(adapter_dir.glob("adapter_model*.safetensors")):
        with safe_open(str(path), "pt") as tensors:
            for key in tensors.keys():  # noqa: SIM118 - safe_open is not a dict
                shapes[key] = tuple(tensors.get_slice(key).get_shape())
    if not shapes:
        raise IncompatibleAdapterError(f"{adapter_dir} holds no adapter_model*.safetensors")
    return shapes


def _module_name(key: str) -> tuple[str, str] | None:
    """'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight' -> ('model.layers.0.mlp.up_proj', 'A')."""
    for side in ("A", "B"):
        marker = f".lora_{side}."
        if marker in key:
            name = key.split(marker, maxsplit=1)[0]
            return name.removeprefix("base_model.model."), side
    return None


def check_adapter_compatible(base_model: Any, base_dir: Path, adapter_dir: Path) -> None:
    """Refuse (IncompatibleAdapterError) an adapter whose base differs from this one; see the module doc."""
    from kubetune_trainer.stages.train import BASE_INFO_NAME
    from kubetune_trainer.training.model import base_fingerprint, hash_model_files

    problems: list[str] = []
    info_path = adapter_dir / BASE_INFO_NAME
    if info_path.exists():
        info = json.loads(info_path.read_text())
        trained_on = info.get("fingerprint") or {}
        here = base_fingerprint(base_dir)
        for key, value in trained_on.items():
            if here.get(key) != value:
                problems.append(
                    f"{key} {value} (adapter's base {info.get('uri')}) != {here.get(key)} (this base)"
                )
        recorded = info.get("files") or {}
        if recorded and not problems:
            actual = hash_model_files(base_dir)
            differing = sorted(f for f in recorded if actual.get(f) != recorded[f])
            if differing:
                problems.append(
                    f"base weights differ from the ones the adapter was trained on ({info.get('uri')}): "
                    + ", ".join(
                        f"{f} sha256 {recorded[f][:12]}… != {(actual.get(f) or 'missing')[:12]}…"
                        for f in differing[:3]
                    )
                )
    modules = dict(base_model.named_modules())
    for key, shape in sorted(_adapter_shapes(adapter_dir).items()):
        parsed = _module_name(key)
        if parsed is None:
            continue
        name, side = parsed
        module = modules.get(name)
        if module is None:
            problems.append(f"target module {name} does not exist in this base")
            continue
        in_features = getattr(module, "in_features", None)
        out_features = getattr(module, "out_features", None)
        if side == "A" and in_features is not None and shape[-1] != in_features:
            problems.append(f"{name}: adapter expects in_features {shape[-1]}, base has {in_features}")
        if side == "B" and out_features is not None and shape[0] != out_features:
            problems.append(f"{name}: adapter expects out_features {shape[0]}, base has {out_features}")
        if len(problems) >= 6:
            break
    if problems:
        raise IncompatibleAdapterError(
            "the adapter was not trained on this base model, refusing to merge: " + "; ".join(problems[:6])
        )


# ---------------------------------------------------------------------------------------------- merging


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """base + adapter -> one full-precision model (merge_and_unload), saved with the adapter's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.training.model import load_tokenizer

    config = json.loads((base_dir / "config.json").read_text())
    dtype = (
        torch.bfloat16
        if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
        else torch.float32
    )
    # Never merge into 4-bit weights (qlora): the merged model is built from the full-precision base.
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    check_adapter_compatible(base, base_dir, adapter_dir)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True  # serving wants the KV cache back
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_dir
    load_tokenizer(tokenizer_dir).save_pretrained(str(out_dir))
    return out_dir


def quantize_nf4(model_dir: Path, out_dir: Path) -> Path:
    """bitsandbytes nf4 + double quant serialisation (works on CPU with bitsandbytes >= 0.45)."""
    import torch
    import transformers

    quantization: Any = transformers.BitsAndBytesConfig  # untyped in transformers
    device_map: dict[str, Any] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quantization(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        device_map=device_map,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, out_dir / name)
    return out_dir


def gguf_available() -> bool:
    try:
        import gguf  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- manifest


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_hashes(local_dir: Path) -> dict[str, str]:
    return {
        p.relative_to(local_dir).as_posix(): sha256_file(p)
        for p in sorted(local_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.read_text(uri))
    except (storage.StorageError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build_manifest(
    config: TrainerConfig,
    *,
    base_info: dict[str, Any],
    outputs: dict[str, Any],
    quantized: list[dict[str, Any]],
) -> dict[str, Any]:
    spec = config.spec
    report = _read_json(config.artifacts.validation_report) or {}
    evaluation = _read_json(config.artifacts.evaluation_report)
    history = CheckpointStore(config.artifacts.checkpoints, writer="").read_history()
    dataset = report.get("dataset") or {}
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneManifest",
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "job": config.job.model_dump(by_alias=True, mode="json"),
        "trainerConfig": config.model_dump(by_alias=True, mode="json", exclude_none=True),
        "method": spec.method,
        "hyperparameters": spec.hyperparameters.model_dump(by_alias=True, mode="json", exclude_none=True),
        "dataset": {
            "uri": spec.dataset.uri,
            "evalUri": spec.dataset.eval_uri,
            "sha256": dataset.get("sha256"),
            "format": dataset.get("format"),
            "rows": dataset.get("rows"),
            "evalRows": dataset.get("evalRows"),
            "validationReport": config.artifacts.validation_report,
        },
        "baseModel": base_info,
        "libraries": library_versions(),
        "evaluation": {k: evaluation.get(k) for k in ("metrics", "baseline", "passed", "failedThresholds")}
        if evaluation
        else None,
        "checkpoints": history,
        "outputs": outputs,
        "quantized": quantized,
    }


# ---------------------------------------------------------------------------------------------- stage


def run(config: TrainerConfig) -> dict[str, Any]:
    from kubetune_trainer.metrics import fit_summary
    from kubetune_trainer.stages.train import BASE_INFO_NAME
    from kubetune_trainer.training.model import base_fingerprint, fetch_model, hash_model_files

    spec = config.spec
    artifacts = config.artifacts
    warnings: list[str] = []
    outputs: dict[str, Any] = {}
    status_outputs: dict[str, Any] = {"manifestUri": artifacts.manifest}
    quantized: list[dict[str, Any]] = []
    base_dir = fetch_model(spec.base_model.uri)
    with tempfile.TemporaryDirectory(prefix="kubetune-export-") as scratch:
        work = Path(scratch)
        merged_dir: Path | None = None
        base_info: dict[str, Any] = {"uri": spec.base_model.uri}
        if spec.method == "full":
            merged_dir = storage.download_dir(artifacts.merged, work / "merged")
            outputs["merged"] = {"uri": artifacts.merged, "files": file_hashes(merged_dir)}
            status_outputs["mergedUri"] = artifacts.merged
        else:
            adapter_dir = storage.download_dir(artifacts.adapter, work / "adapter")
            if not (adapter_dir / "adapter_config.json").exists():
                raise FileNotFoundError(f"no adapter at {artifacts.adapter}: run the train stage first")
            outputs["adapter"] = {"uri": artifacts.adapter, "files": file_hashes(adapter_dir)}
            status_outputs["adapterUri"] = artifacts.adapter
            if (adapter_dir / BASE_INFO_NAME).exists():
                base_info = json.loads((adapter_dir / BASE_INFO_NAME).read_text())
            if spec.output.merge or spec.output.quantize:
                try:
                    merged_dir = merge_adapter(base_dir, adapter_dir, work / "merged")
                except IncompatibleAdapterError as error:
                    return {
                        "stage": STAGE,
                        "ok": False,
                        "reason": REASON_INCOMPATIBLE,
                        "message": str(error)[:1500],
                        "exitCode": EXIT_INVALID_INPUT,
                    }
                storage.upload_dir(merged_dir, artifacts.merged)
                outputs["merged"] = {"uri": artifacts.merged, "files": file_hashes(merged_dir)}
                status_outputs["mergedUri"] = artifacts.merged
        if not base_info.get("files"):
            base_info = {
                **base_info,
                "fingerprint": base_fingerprint(base_dir),
                "files": hash_model_files(base_dir),
            }

        if spec.output.quantize and merged_dir is not None:
            for fmt in spec.output.quantize:
                if fmt == NF4_FORMAT:
                    continue
                reason = (
                    "GGUF conversion is not built into this trainer image yet"
                    if gguf_available()
                    else "the gguf package is not installed in this trainer image"
                )
                quantized.append({"format": fmt, "status": "skipped", "reason": reason})
                warnings.append(f"{fmt} skipped: {reason}; exported {NF4_FORMAT} instead")
            nf4_dir = quantize_nf4(merged_dir, work / NF4_FORMAT)
            nf4_uri = storage.join(artifacts.exports, NF4_FORMAT) + "/"
            storage.upload_dir(nf4_dir, nf4_uri)
            quantized.append(
                {"format": NF4_FORMAT, "status": "ok", "uri": nf4_uri, "files": file_hashes(nf4_dir)}
            )
            status_outputs["quantizedUris"] = [nf4_uri]

    manifest = build_manifest(config, base_info=base_info, outputs=outputs, quantized=quantized)
    storage.write_text(artifacts.manifest, json.dumps(manifest, indent=2) + "\n")
    made = ", ".join(["adapter"] * ("adapter" in outputs) + ["merged"] * ("merged" in outputs))
    message = f"exported {made or 'nothing'}" + (
        f", {NF4_FORMAT}" if "quantizedUris" in status_outputs else ""
    )
    return fit_summary(
        {
            "stage": STAGE,
            "ok": True,
            "reason": REASON_EXPORTED,
            "message": message + f"; manifest at {artifacts.manifest}",
            "outputs": status_outputs,
            "warnings": warnings or None,
        }
    )
