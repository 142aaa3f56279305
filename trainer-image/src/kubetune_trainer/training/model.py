"""The training environment and the model: device, scratch space, fetching and hashing the base model,
loading it (and its tokenizer) the way each method trains it, and wrapping it with LoRA adapters."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import model_cache, storage
from kubetune_trainer.metrics import RankInfo

if TYPE_CHECKING:
    from kubetune.api.finetunejob import TrainerSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ----------------------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Device:
    cuda: bool
    bf16: bool  # bf16 autocast is fast here (GPU with bf16, or a CPU with AVX512-BF16/AMX)

    @classmethod
    def detect(cls) -> Device:
        import torch

        if torch.cuda.is_available():
            return cls(cuda=True, bf16=bool(torch.cuda.is_bf16_supported()))
        cpu_bf16 = False
        try:
            cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            cpu_bf16 = False
        return cls(cuda=False, bf16=cpu_bf16)


def work_root() -> Path:
    """Scratch space for models and checkpoints (an emptyDir in the pod); KUBETUNE_WORK_DIR overrides."""
    root = Path(os.environ.get("KUBETUNE_WORK_DIR") or Path(tempfile.gettempdir()) / "kubetune")
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_model(uri: str, cache_root: Path | None = None) -> Path:
    """A local directory holding the model at `uri`: pvc:// read in place; s3:// (and hf:// with spec.cache)
    from the model cache (model_cache), which is the resource's shared cache where the operator mounted one,
    else this pod's work directory (ranks on one node share it)."""
    shared = model_cache.shared_root()
    if uri.startswith("hf://") and shared is None:
        from huggingface_hub import snapshot_download

        name, _, revision = uri[len("hf://") :].partition("@")
        return Path(snapshot_download(name, revision=revision or None))
    if not model_cache.cacheable(uri):
        return storage.local_path(uri)
    return model_cache.fetch(uri, cache_root or shared or work_root() / "models").path


def hash_model_files(model_dir: Path) -> dict[str, str]:
    """sha256 of config.json and every weight file: the base model's identity for the manifest."""
    hashes: dict[str, str] = {}
    from kubetune_trainer.checkpoints import sha256_file

    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and (path.name == "config.json" or path.name.endswith(WEIGHT_SUFFIXES)):
            hashes[path.relative_to(model_dir).as_posix()] = sha256_file(path)
    return hashes


def base_fingerprint(model_dir: Path) -> dict[str, Any]:
    """The architecture facts an adapter depends on (export's compatibility check compares them)."""
    config = json.loads((model_dir / "config.json").read_text())
    text = config.get("text_config") or config
    return {
        "architectures": config.get("architectures"),
        "modelType": config.get("model_type"),
        "hiddenSize": text.get("hidden_size"),
        "intermediateSize": text.get("intermediate_size"),
        "numHiddenLayers": text.get("num_hidden_layers"),
        "numAttentionHeads": text.get("num_attention_heads"),
        "numKeyValueHeads": text.get("num_key_value_heads"),
        "vocabSize": text.get("vocab_size"),
    }


# ------------------------------------------------------------------------------------------ model loading


def load_tokenizer(model_dir: Path, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        # Padding is never attended to or trained on (labels -100), so any id works; EOS is conventional.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attention_implementation(device: Device, requested: str = "auto") -> str:
    """The attention kernel: the requested one, or for auto the fastest this pod can run. A requested kernel
    that cannot run here is an error, never swapped for another."""
    if requested == "flash_attention_2":
        if not device.cuda:
            raise ValueError(
                "spec.hyperparameters.attentionImplementation flash_attention_2 needs a CUDA GPU"
            )
        try:
            import flash_attn
        except ImportError as error:
            raise ValueError(
                "spec.hyperparameters.attentionImplementation flash_attention_2: flash-attn does not import"
                f" in this image ({error})"
            ) from error
    if requested != "auto":
        return requested
    if device.cuda:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"  # varlen kernels make packed rows free of wasted attention
        except ImportError:
            pass
    return "sdpa"


def disable_cpu_4bit_inference_packing(model: Any) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference (AVX512-BF16 path).

    After any inference pass (eval, generate) bitsandbytes 0.50 converts Linear4bit weights to a CPU-only
    packed layout in place; training afterwards silently gets wrong gradients. Returns the layers changed.
    """
    from bitsandbytes.nn.modules import Linear4bit

    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_base_model(
    model_dir: Path,
    *,
    method: str,
    device: Device,
    rank: RankInfo | None = None,
    quantize_4bit: bool | None = None,
    attention: str = "auto",
) -> Any:
    """The base model as the method trains it: 4-bit nf4 for qlora, bf16 frozen weights for LoRA on GPU,
    fp32 otherwise (full fine-tuning keeps fp32 master weights; autocast does the bf16 math)."""
    import torch
    from transformers import AutoModelForCausalLM

    rank = rank or RankInfo()
    four_bit = method == "qlora" if quantize_4bit is None else quantize_4bit
    kwargs: dict[str, Any] = {"attn_implementation": attention_implementation(device, attention)}
    if four_bit:
        import transformers

        quantization: Any = transformers.BitsAndBytesConfig  # untyped in transformers
        compute = torch.bfloat16 if device.cuda and device.bf16 else torch.float32
        kwargs["quantization_config"] = quantization(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": rank.local_rank} if device.cuda else {"": "cpu"}
        kwargs["dtype"] = compute
    elif device.cuda and device.bf16 and method != "full":
        kwargs["dtype"] = torch.bfloat16  # frozen base weights; adapters stay fp32 (PEFT upcasts them)
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    # Without a KV cache object transformers turns position-id resets into a block-diagonal mask; with one
    # (use_cache defaults to True, also in train mode) packed examples would attend to each other.
    model.config.use_cache = False
    if four_bit and not device.cuda:
        disable_cpu_4bit_inference_packing(model)
    return model


def lora_config(spec: TrainerSpec) -> Any:
    from peft import LoraConfig

    lora = spec.lora
    if lora is None:
        raise ValueError(f"method {spec.method} needs spec.lora")
    targets: str | list[str] = (
        "all-linear" if "all-linear" in lora.target_modules else list(lora.target_modules)
    )
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None,
    )


def prepare_trainable_model(base: Any, spec: TrainerSpec, device: Device) -> Any:
    """Wrap the base model for its method: LoRA/QLoRA adapters, or all weights trainable for full."""
    hyper = spec.hyperparameters
    if spec.method == "full":
        return base
    import peft

    if spec.method == "qlora":
        # Casts norms to fp32 and enables input grads; the Trainer enables gradient checkpointing itself.
        prepare: Any = peft.prepare_model_for_kbit_training  # untyped in peft
        base = prepare(base, use_gradient_checkpointing=False)
    model = peft.get_peft_model(base, lora_config(spec))
    if spec.method == "qlora" and not device.cuda:
        disable_cpu_4bit_inference_packing(model)
    if hyper.gradient_checkpointing:
        model.enable_input_require_grads()
    return model
