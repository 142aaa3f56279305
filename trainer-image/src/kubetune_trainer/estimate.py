"""GPU memory estimate for a fine-tuning run, from the base model's config.json alone (no weights, no torch).

The estimate is an upper bound for the peak of one training step, in bytes, summed from:

    weights      16-bit: 2·P bytes. QLoRA: every linear layer inside the decoder blocks in NF4 with double
                 quantisation, 4.127 bits per weight (4 bits + an 8-bit absmax per 64-weight block
                 = 0.125 bits + one fp32 second-level scale per 256 blocks = 32/16384 ≈ 0.002 bits);
                 embeddings, lm_head and norms stay 16-bit (bitsandbytes never quantises them).
    adapter      LoRA: r·(in + out) parameters per targeted linear layer, kept in fp32 (PEFT upcasts
                 adapter weights): 4 bytes each. "all-linear" targets every linear layer except lm_head.
    gradients    LoRA: 4 bytes per adapter parameter. Full: 2 bytes per parameter (bf16 gradients).
    optimizer    AdamW: fp32 m and v = 8 bytes per trainable parameter; full fine-tuning adds an fp32 master
                 copy of the weights = 12 bytes per parameter (mixed precision as in the ZeRO paper).
    activations  Per token per decoder layer, bf16 (2 bytes) tensors saved for backward, adapted from
                 Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
                 §4.1, which counts 34·h bytes + 5·a·s attention-score bytes for a GPT layer) to a Llama
                 layer with SwiGLU and grouped-query attention, and fused (flash/SDPA) attention, so the
                 s² score term vanishes:
                     2 RMSNorm inputs                      4h
                     attention: normed input 2h, Q 2h, K and V 4·h_kv, attention output 2h
                                                           6h + 4·h_kv
                     MLP: normed input 2h, gate 2i, silu(gate) 2i, up 2i, silu(gate)·up 2i
                                                           2h + 8i
                     A_layer = 12h + 4·h_kv + 8i bytes per token          (h_kv = kv_heads · head_dim)
                 LoRA adds, per adapted module, 3·in bytes when dropout > 0 (the dropped-out input copy
                 and its mask) and 2·r bytes (lora_A's output).
                 Without gradient checkpointing: tokens · L · A_layer.
                 With it (HF checkpoints each decoder layer): tokens · (L · 2h + A_layer): only each layer's
                 input is kept, and one layer's activations are rebuilt at a time during backward.
    logits       tokens · 10·V bytes: bf16 logits (2V), their fp32 upcast for the loss (4V) and the fp32
                 log-softmax saved by cross-entropy (4V). Large for big vocabularies (128k → 1.3 MB/token).
    overhead     CUDA context and cuBLAS/NCCL workspaces (~512 MiB), plus 10% of the above for the caching
                 allocator's fragmentation; QLoRA adds one dequantised 16-bit copy of the largest linear
                 layer (bitsandbytes dequantises per layer in the forward and backward passes).

tokens = per-device batch size · sequence length (· 2 for DPO: chosen and rejected run in one forward).
Full fine-tuning on more than one GPU shards weights, gradients and optimizer states with FSDP/ZeRO-3:
those divide by the number of GPUs, plus two gathered layers (the one computing and the one prefetched).
LoRA/QLoRA on more than one GPU is data parallel: every GPU holds everything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.finetunejob import Lora

GIB = 1024**3
MIB = 1024**2
NF4_DOUBLE_QUANT_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # = 4.127
CUDA_CONTEXT_BYTES = 512 * MIB
FRAGMENTATION = 0.10
LOGIT_BYTES_PER_VOCAB = 2 + 4 + 4
DEFAULT_LORA = Lora()  # what spec.lora defaults to: the settings estimated when a caller names none

# nvidia.com/gpu.product label fragments -> usable memory as nvidia-smi reports it. Order matters: the first
# fragment found in the (lower-cased) label wins, so "l40s" precedes "l4" and "a100...80gb" precedes "a100".
GPU_MEMORY: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (("h200",), 143_771 * MIB, "NVIDIA H200 141GB"),
    (("h100",), 81_559 * MIB, "NVIDIA H100 80GB"),
    (("a100", "80gb"), 81_920 * MIB, "NVIDIA A100 80GB"),
    (("a100",), 40_960 * MIB, "NVIDIA A100 40GB"),
    (("l40s",), 46_068 * MIB, "NVIDIA L40S 48GB"),
    (("a10g",), 23_028 * MIB, "NVIDIA A10G 24GB"),
    (("l4",), 23_034 * MIB, "NVIDIA L4 24GB"),
    (("t4",), 15_360 * MIB, "NVIDIA T4 16GB"),
)


def gpu_memory_bytes(product: str | None) -> int | None:
    """Memory of a GPU from its `nvidia.com/gpu.product` label value, or None when unknown."""
    if not product:
        return None
    label = product.lower()
    for fragments, size, _name in GPU_MEMORY:
        if all(fragment in label for fragment in fragments):
            return size
    return None


# ----------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Linear:
    name: str  # module name within a decoder layer, e.g. "q_proj"
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Architecture:
    """The shapes that matter for memory, read from a transformers config.json (Llama-style decoders)."""

    vocab_size: int
    hidden_size: int
    layers: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    experts: int = 1
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        # Multimodal configs nest the language model's config.
        text = config.get("text_config")
        if isinstance(text, Mapping) and "hidden_size" in text:
            config = {**config, **text}
        hidden = int(_first(config, "hidden_size", "n_embd", "d_model"))
        heads = int(_first(config, "num_attention_heads", "n_head"))
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        intermediate = int(
            config.get("moe_intermediate_size")
            or config.get("intermediate_size")
            or config.get("n_inner")
            or 4 * hidden
        )
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            layers=int(_first(config, "num_hidden_layers", "n_layer")),
            intermediate_size=intermediate,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
            attention_bias=bool(config.get("attention_bias", False)),
        )

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    def layer_linears(self) -> list[Linear]:
        """The linear layers of one decoder block (MLP repeated per expert for mixture-of-experts)."""
        h, i = self.hidden_size, self.intermediate_size
        attention = [
            Linear("q_proj", h, self.q_dim),
            Linear("k_proj", h, self.kv_dim),
            Linear("v_proj", h, self.kv_dim),
            Linear("o_proj", self.q_dim, h),
        ]
        mlp = [Linear("gate_proj", h, i), Linear("up_proj", h, i), Linear("down_proj", i, h)]
        router = [Linear("gate", h, self.experts)] if self.experts > 1 else []
        return attention + mlp * self.experts + router

    @property
    def linear_params(self) -> int:
        """Parameters in decoder-block linear layers: the ones QLoRA quantises."""
        per_layer = sum(linear.params for linear in self.layer_linears())
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.layers * (per_layer + bias)

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus lm_head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return self.layers * 2 * self.hidden_size + self.hidden_size

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    def layer_activation_bytes_per_token(self) -> int:
        """A_layer = 12h + 4·h_kv + 8i bytes (see the module docstring)."""
        h, i = self.hidden_size, self.intermediate_size
        return 12 * h + 4 * self.kv_dim + 8 * i


def _first(config: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    raise KeyError(f"config.json has none of {', '.join(names)}")


def lora_targets(arch: Architecture, target_modules: list[str]) -> list[Linear]:
    """The per-layer linear layers a LoRA `target_modules` list adapts ("all-linear" = all but lm_head)."""
    linears = arch.layer_linears()
    if any(t in ("all-linear", "all_linear") for t in target_modules):
        return linears
    chosen: list[Linear] = []
    for linear in linears:
        for target in target_modules:
            # PEFT matches a name exactly at the end of the module path, or as a regex.
            if linear.name == target.split(".")[-1] or _regex_match(target, linear.name):
                chosen.append(linear)
                break
    return chosen


def _regex_match(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


# -------------------------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class MemoryEstimate:
    total_params: int
    trainable_params: int
    breakdown: dict[str, int]  # bytes, single device, unsharded
    gpu_memory_bytes: int  # what one GPU would need running the job alone
    gpu_memory_bytes_per_gpu: int  # what each requested GPU needs (sharded for full FSDP)
    gpus: int
    gpu_capacity_bytes: int | None
    fits_on_requested_gpus: bool | None
    notes: list[str] = field(default_factory=list)

    def to_status(self) -> dict[str, Any]:
        return {
            "gpuMemoryBytes": self.gpu_memory_bytes,
            "gpuMemoryBytesPerGpu": self.gpu_memory_bytes_per_gpu,
            "fitsOnRequestedGpus": self.fits_on_requested_gpus,
        }

    def to_report(self) -> dict[str, Any]:
        return {
            **self.to_status(),
            "totalParams": self.total_params,
            "trainableParams": self.trainable_params,
            "breakdownBytes": self.breakdown,
            "gpus": self.gpus,
            "gpuCapacityBytes": self.gpu_capacity_bytes,
            "notes": self.notes,
        }


def weight_bytes(arch: Architecture, method: str) -> int:
    if method == "qlora":
        quantised = math.ceil(arch.linear_params * NF4_DOUBLE_QUANT_BITS / 8)
        return quantised + 2 * (arch.embedding_params + arch.norm_params)
    return 2 * arch.total_params


def adapter_params(arch: Architecture, r: int, target_modules: list[str]) -> int:
    per_layer = sum(r * (t.in_features + t.out_features) for t in lora_targets(arch, target_modules))
    return arch.layers * per_layer


def activation_bytes(
    arch: Architecture,
    tokens: int,
    *,
    gradient_checkpointing: bool,
    lora_r: int | None = None,
    lora_dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> int:
    """Saved activations of the decoder layers for `tokens` tokens (see the module docstring)."""
    per_layer = arch.layer_activation_bytes_per_token()
    if lora_r is not None:
        for target in lora_targets(arch, target_modules or list(DEFAULT_LORA.target_modules)):
            per_layer += 2 * lora_r + (3 * target.in_features if lora_dropout > 0 else 0)
    if gradient_checkpointing:
        return tokens * (arch.layers * 2 * arch.hidden_size + per_layer)
    return tokens * arch.layers * per_layer


def estimate_memory(
    config: Mapping[str, Any],
    *,
    method: str,
    batch_size: int,
    seq_length: int,
    gradient_checkpointing: bool = True,
    lora_r: int = DEFAULT_LORA.r,
    lora_dropout: float = DEFAULT_LORA.dropout,
    target_modules: list[str] | None = None,
    gpus: int = 1,
    nodes: int = 1,
    gpu_product: str | None = None,
) -> MemoryEstimate:
    """Peak GPU memory of one training step; `config` is the base model's parsed config.json."""
    arch = Architecture.from_config(config)
    targets = target_modules or list(DEFAULT_LORA.target_modules)
    uses_lora = method in ("lora", "qlora", "dpo")
    notes: list[str] = []

    weights = weight_bytes(arch, method)
    if uses_lora:
        trainable = adapter_params(arch, lora_r, targets)
        if trainable == 0:
            notes.append(f"targetModules {targets} match no linear layer of this architecture")
        adapter, gradients, optimizer = 4 * trainable, 4 * trainable, 8 * trainable
    else:
        trainable = arch.total_params
        adapter, gradients, optimizer = 0, 2 * trainable, 12 * trainable

    tokens = batch_size * seq_length * (2 if method == "dpo" else 1)
    activations = activation_bytes(
        arch,
        tokens,
        gradient_checkpointing=gradient_checkpointing,
        lora_r=lora_r if uses_lora else None,
        lora_dropout=lora_dropout,
        target_modules=targets,
    )
    logits = tokens * LOGIT_BYTES_PER_VOCAB * arch.vocab_size
    dequant = 2 * max(linear.params for linear in arch.layer_linears()) if method == "qlora" else 0

    breakdown = {
        "weights": weights,
        "adapter": adapter,
        "gradients": gradients,
        "optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "dequantBuffer": dequant,
    }
    subtotal = sum(breakdown.values())
    breakdown["overhead"] = CUDA_CONTEXT_BYTES + int(FRAGMENTATION * subtotal)
    single = sum(breakdown.values())

    world = max(gpus, 0) * max(nodes, 1)
    per_gpu = single
    if method == "full" and world > 1:
        sharded = weights + gradients + optimizer
        largest_layer = 2 * (arch.linear_params // arch.layers + 2 * arch.hidden_size)
        unsharded = activations + logits + 2 * largest_layer
        per_gpu_sub = sharded // world + unsharded
        per_gpu = per_gpu_sub + CUDA_CONTEXT_BYTES + int(FRAGMENTATION * per_gpu_sub)
        notes.append(f"full fine-tuning sharded over {world} GPUs (FSDP/ZeRO-3)")
    elif world > 1:
        notes.append(f"{method} on {world} GPUs is data parallel: each GPU holds the whole model")

    capacity = gpu_memory_bytes(gpu_product)
    fits: bool | None
    if world == 0:
        fits = None
        notes.append("no GPUs requested (CPU run)")
    elif capacity is None:
        fits = None
        notes.append(
            f"unknown GPU product {gpu_product!r}: set spec.resources.gpuProduct to compare"
            if gpu_product
            else "spec.resources.gpuProduct is not set: cannot tell whether it fits"
        )
    else:
        fits = per_gpu <= capacity
    return MemoryEstimate(
        total_params=arch.total_params,
        trainable_params=trainable,
        breakdown=breakdown,
        gpu_memory_bytes=single,
        gpu_memory_bytes_per_gpu=per_gpu,
        gpus=world,
        gpu_capacity_bytes=capacity,
        fits_on_requested_gpus=fits,
        notes=notes,
    )


def human_bytes(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
