"""Training FLOPs per token and model FLOPs utilisation (MFU), for throughput reports.

Per token, with N the base model's parameters in matrix multiplies (embeddings excluded: they are lookups),
L layers, d the hidden size and S the attended context:

- full fine-tuning: 6N (forward 2N, backward 4N: input and weight gradients) + attention 12·L·d·S;
- LoRA/QLoRA: 4N (forward 2N, backward 2N: input gradients only, frozen weights get none) + 6·N_adapter +
  attention 12·L·d·S (attention has no weights: its backward always computes both input gradients).

These are model FLOPs: recomputation under gradient checkpointing is not counted, as MFU conventionally
excludes it. Peak FLOP/s are dense bf16 tensor-core numbers from the vendors' datasheets;
`KUBETUNE_PEAK_FLOPS` overrides them for other hardware.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# Dense bf16 (no sparsity), per GPU.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def matmul_params(config: Mapping[str, Any]) -> int:
    """Parameters of the decoder's linear layers plus the LM head (what costs 2 FLOPs per token each)."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    heads = int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    intermediate = int(text["intermediate_size"])
    vocab = int(text["vocab_size"])
    attention = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * intermediate  # gate, up, down (SwiGLU)
    return layers * (attention + mlp) + hidden * vocab


def attention_flops_per_token(config: Mapping[str, Any], context: float) -> float:
    text = config.get("text_config") or config
    return 12.0 * int(text["num_hidden_layers"]) * int(text["hidden_size"]) * context


def flops_per_token(config: Mapping[str, Any], *, method: str, adapter_params: int, context: float) -> float:
    base = matmul_params(config)
    attention = attention_flops_per_token(config, context)
    if method == "full":
        return 6.0 * base + attention
    return 4.0 * base + 6.0 * adapter_params + attention


def peak_flops(device_name: str) -> float | None:
    override = os.environ.get("KUBETUNE_PEAK_FLOPS")
    if override:
        return float(override)
    name = device_name.upper()
    for product, flops in PEAK_BF16_FLOPS.items():  # longest names first where they overlap ("L40S" vs "L4")
        if product in name and not (product == "L4" and "L40" in name):
            return flops
    return None


def mfu(tokens_per_second: float, flops_per_token_value: float, peak: float | None) -> float | None:
    return tokens_per_second * flops_per_token_value / peak if peak else None
