"""The training environment and the model: device, scratch space, fetching and hashing the base model,
loading it (and its tokenizer) the way each method trains it, and wrapping it with LoRA adapters."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer import model_cache, storage
from kubetune_trainer.metrics import RankInfo

if TYPE_CHECKING:
    from kubetune.api.finetunejob import Dataset, TrainerSpec

log = logging.getLogger(__name__)

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
        return cls(cuda=False, bf16=cpu_has_fast_bf16(torch.cpu.get_capabilities()))


def cpu_has_fast_bf16(capabilities: Mapping[str, Any]) -> bool:
    """Whether the CPU does bf16 math in hardware (torch.cpu.get_capabilities(): x86 AVX512-BF16 or AMX,
    ARM BF16): elsewhere bf16 is emulated and slower than fp32."""
    return any(bool(capabilities.get(flag)) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


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


# Llama 3.1+ reserve this token for padding: it keeps padding distinct from EOS without a new embedding row.
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>",)


def load_tokenizer(model_dir: Path, dataset: Dataset | str | None = None) -> Any:
    """The base model's tokenizer with the job's chat template set (chat_templates.resolve: chatTemplate,
    chatTemplateName or the tokenizer's own), the template's missing special tokens added, and a pad token.

    `dataset` is spec.dataset. A plain string is the older call's chatTemplate text, kept while callers move
    to spec.dataset; None keeps the tokenizer's own template (a saved adapter's tokenizer already has the job's).
    save_pretrained writes the template and the added tokens, so every later stage reloads the same ones.
    """
    from transformers import AutoTokenizer

    from kubetune_trainer import chat_templates

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template: chat_templates.ChatTemplate | None
    if dataset is None:
        template = None
    elif isinstance(dataset, str):
        template = chat_templates.ChatTemplate(dataset, "spec.dataset.chatTemplate")
    else:
        template = chat_templates.resolve(dataset, tokenizer.chat_template)
    added = chat_templates.apply_to_tokenizer(tokenizer, template)
    if added:
        log.info("added %d special tokens for %s: %s", len(added), template and template.source, added)
    set_pad_token(tokenizer)
    return tokenizer


def set_pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without one a pad token, never a new token (that would add an embedding row).

    Padding is never attended to and never in the loss (labels come from the assistant mask, not from the
    pad id), so any existing id is correct: a reserved pad token when the vocabulary has one, else EOS."""
    if tokenizer.pad_token_id is not None:
        return
    vocabulary = tokenizer.get_vocab()
    reserved = next((token for token in RESERVED_PAD_TOKENS if token in vocabulary), None)
    fallback = reserved or tokenizer.eos_token or tokenizer.unk_token
    if fallback is None:
        raise ValueError("spec.baseModel: the tokenizer has no pad, EOS or unknown token to pad batches with")
    tokenizer.pad_token = fallback


ATTENTION_FIELD = "spec.hyperparameters.attentionImplementation"


def attention_implementation(device: Device, requested: str = "auto") -> str:
    """The attention kernel: the requested one, or for auto flash_attention_2 on a bf16 GPU when the image
    has flash-attn, else sdpa. A requested kernel that cannot run here is an error, never swapped."""
    if requested == "flash_attention_2":
        if not device.cuda:
            raise ValueError(f"{ATTENTION_FIELD} flash_attention_2 needs a CUDA GPU; this pod has none")
        problem = flash_attention_problem()
        if problem:
            raise ValueError(f"{ATTENTION_FIELD} flash_attention_2: {problem}")
        return requested
    if requested != "auto":
        return requested  # sdpa and eager are part of torch and transformers: they always run
    # FA2 needs Ampere or newer, which is also what bf16 support means on CUDA.
    if device.cuda and device.bf16 and flash_attention_problem() is None:
        return "flash_attention_2"  # varlen kernels: packed rows pay no attention across examples
    return "sdpa"


def flash_attention_problem() -> str | None:
    """Why transformers cannot use flash-attn 2 in this image, or None when it can."""
    try:
        import flash_attn  # noqa: F401
    except ImportError as error:
        return f"flash-attn does not import in this image ({error})"
    from transformers.utils.import_utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return "the installed flash-attn is not one this transformers can use (version or CUDA build)"
    return None


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


# The embedding rows are padded to this multiple: aligned lm_head matmuls on GPUs. Not a bitsandbytes need:
# 4-bit loading keeps the embeddings and lm_head unquantized (checked on CPU with a 669-row vocabulary).
EMBEDDING_ROW_MULTIPLE = 64


def resize_embeddings(model: Any, tokenizer: Any, *, mean_resizing: bool = True) -> int:
    """Grow the embeddings (and an untied lm_head) when the tokenizer has ids beyond their rows; returns the
    row count before. New rows are drawn around the old rows' mean and covariance (transformers'
    mean_resizing), so added tokens start as an average token. Reloading a saved adapter passes False: the
    adapter carries the trained rows, which replace whatever the resize drew."""
    rows = int(model.get_input_embeddings().weight.shape[0])
    if len(tokenizer) > rows:
        model.resize_token_embeddings(
            len(tokenizer), pad_to_multiple_of=EMBEDDING_ROW_MULTIPLE, mean_resizing=mean_resizing
        )
        log.info(
            "resized the embeddings from %d to %d rows for %d tokenizer ids",
            rows,
            model.get_input_embeddings().weight.shape[0],
            len(tokenizer),
        )
    return rows


def trainable_token_indices(
    model: Any, tokenizer: Any, spec: TrainerSpec, rows_before: int
) -> dict[str, list[int]] | None:
    """PEFT's trainable_token_indices for LoRA: the rows of a named chat template's special tokens and of any
    id the resize added, in the input embedding and (untied) lm_head, unless modules_to_save trains that
    layer in full. Every template token, not only the ones just added: a base model's rows for them are
    often untrained (Llama-3 base's <|eot_id|>, ids landing in a vocabulary's padding rows). Costs one merged
    copy of each wrapped matrix per forward pass."""
    from kubetune_trainer import chat_templates

    template = chat_templates.resolve(spec.dataset, None)
    ids = set(range(rows_before, len(tokenizer)))
    for token in template.special_tokens if template else ():
        ids.add(int(tokenizer.convert_tokens_to_ids(token)))
    if not ids:
        return None
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    layers = [embeddings]
    if head is not None and head.weight is not embeddings.weight:
        layers.append(head)  # tied: PEFT ties the lm_head to the embedding's trainable rows itself
    full = set(spec.lora.modules_to_save or []) if spec.lora else set()
    names = [name for name, module in model.named_modules() if any(module is layer for layer in layers)]
    wanted = {
        name: sorted(ids)
        for name in names
        if not any(name == saved or name.endswith(f".{saved}") for saved in full)
    }
    return wanted or None


def lora_config(spec: TrainerSpec, trainable_tokens: dict[str, list[int]] | None = None) -> Any:
    """PEFT's LoraConfig from spec.lora (rsLoRA, DoRA and modules_to_save included); trainable_tokens are
    embedding rows trained beside the adapters (trainable_token_indices)."""
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
        trainable_token_indices=trainable_tokens,
    )


def prepare_trainable_model(base: Any, spec: TrainerSpec, device: Device, tokenizer: Any = None) -> Any:
    """Wrap the base model for its method: LoRA/QLoRA adapters, or all weights trainable for full.

    With the job's tokenizer, the embeddings first grow to hold its ids (resize_embeddings) and, for
    LoRA/QLoRA, the new and template-token rows train beside the adapters (full fine-tuning trains them
    anyway). A saved adapter then carries those rows; loading it needs a base resized the same way."""
    hyper = spec.hyperparameters
    rows_before = resize_embeddings(base, tokenizer) if tokenizer is not None else None
    if spec.method == "full":
        return base
    import peft

    tokens = (
        trainable_token_indices(base, tokenizer, spec, rows_before)
        if tokenizer is not None and rows_before is not None
        else None
    )
    if spec.method == "qlora":
        # Casts norms to fp32 and enables input grads; the Trainer enables gradient checkpointing itself.
        prepare: Any = peft.prepare_model_for_kbit_training  # untyped in peft
        base = prepare(base, use_gradient_checkpointing=False)
    model = peft.get_peft_model(base, lora_config(spec, tokens))
    if spec.method == "qlora" and not device.cuda:
        disable_cpu_4bit_inference_packing(model)
    if hyper.gradient_checkpointing:
        model.enable_input_require_grads()
    return model
