"""The GPU memory estimate: hand-computed numbers for Llama-3-8B, and monotonic properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune_trainer.estimate import (
    CUDA_CONTEXT_BYTES,
    GIB,
    Architecture,
    activation_bytes,
    adapter_params,
    estimate_memory,
    gpu_memory_bytes,
    weight_bytes,
)

# meta-llama/Meta-Llama-3-8B config.json (the fields that matter).
LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}

# Per layer: q 4096x4096, k 4096x1024, v 4096x1024, o 4096x4096, gate/up 4096x14336, down 14336x4096.
LINEAR_PER_LAYER = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336  # 218,103,808
LINEAR = 32 * LINEAR_PER_LAYER  # 6,979,321,856
EMBEDDINGS = 2 * 128256 * 4096  # embed_tokens + lm_head = 1,050,673,152
NORMS = 32 * 2 * 4096 + 4096  # 266,240
TOTAL = LINEAR + EMBEDDINGS + NORMS  # 8,030,261,248: "8B"


def test_llama3_8b_parameter_count() -> None:
    arch = Architecture.from_config(LLAMA3_8B)
    assert arch.linear_params == LINEAR == 6_979_321_856
    assert arch.embedding_params == EMBEDDINGS
    assert arch.total_params == TOTAL == 8_030_261_248


def test_llama3_8b_weights_by_method() -> None:
    arch = Architecture.from_config(LLAMA3_8B)
    assert weight_bytes(arch, "lora") == weight_bytes(arch, "full") == 2 * TOTAL  # bf16: 16.06 GB
    # QLoRA: NF4 + double quant = 4 + 8/64 + 32/(64*256) = 4.126953125 bits per quantised weight,
    # embeddings/lm_head/norms stay bf16.
    expected = math.ceil(LINEAR * 4.126953125 / 8) + 2 * (EMBEDDINGS + NORMS)
    assert weight_bytes(arch, "qlora") == expected == 5_702_295_552
    assert weight_bytes(arch, "qlora") == pytest.approx(8.03e9 * 4.127 / 8 + 2 * EMBEDDINGS, rel=0.1)


def test_llama3_8b_lora_adapter_params_match_peft() -> None:
    arch = Architecture.from_config(LLAMA3_8B)
    # r * (in + out) per module: q 16*8192, k 16*5120, v 16*5120, o 16*8192, gate/up/down 16*18432.
    per_layer = 16 * (8192 + 5120 + 5120 + 8192 + 3 * 18432)
    assert adapter_params(arch, 16, ["all-linear"]) == 32 * per_layer == 41_943_040  # PEFT prints this
    assert adapter_params(arch, 16, ["q_proj", "v_proj"]) == 32 * 16 * (8192 + 5120) == 6_815_744
    assert adapter_params(arch, 8, ["model.layers.*.self_attn.q_proj"]) == 32 * 8 * 8192
    assert adapter_params(arch, 16, ["nothing_here"]) == 0


def test_llama3_8b_activations_hand_computed() -> None:
    arch = Architecture.from_config(LLAMA3_8B)
    per_layer = 12 * 4096 + 4 * 1024 + 8 * 14336  # 167,936 bytes per token per layer
    assert arch.layer_activation_bytes_per_token() == per_layer
    tokens = 4 * 2048
    assert activation_bytes(arch, tokens, gradient_checkpointing=False) == tokens * 32 * per_layer
    assert activation_bytes(arch, tokens, gradient_checkpointing=True) == tokens * (32 * 2 * 4096 + per_layer)


def test_llama3_8b_qlora_breakdown_and_fit() -> None:
    est = estimate_memory(
        LLAMA3_8B, method="qlora", batch_size=1, seq_length=2048, lora_r=16, lora_dropout=0.0,
        gpus=1, gpu_product="NVIDIA-H100-80GB-HBM3",
    )  # fmt: skip
    b = est.breakdown
    trainable = 41_943_040
    assert est.trainable_params == trainable
    assert b["weights"] == 5_702_295_552
    assert (b["adapter"], b["gradients"], b["optimizer"]) == (4 * trainable, 4 * trainable, 8 * trainable)
    lora_extra = 7 * 2 * 16  # lora_A outputs of the 7 adapted modules, no dropout copies
    assert b["activations"] == 2048 * (32 * 2 * 4096 + 167_936 + lora_extra)
    assert b["logits"] == 2048 * 10 * 128256
    assert b["dequantBuffer"] == 2 * 4096 * 14336
    subtotal = sum(v for k, v in b.items() if k != "overhead")
    assert b["overhead"] == CUDA_CONTEXT_BYTES + int(0.10 * subtotal)
    assert est.gpu_memory_bytes == sum(b.values())
    assert 8 * GIB < est.gpu_memory_bytes < 14 * GIB  # QLoRA 8B at 2k tokens: ~10 GiB, as commonly reported
    assert est.fits_on_requested_gpus is True
    assert est.to_status() == {
        "gpuMemoryBytes": est.gpu_memory_bytes,
        "gpuMemoryBytesPerGpu": est.gpu_memory_bytes,
        "fitsOnRequestedGpus": True,
    }


def _estimate(method: str, **kw: Any) -> int:
    base = {"batch_size": 4, "seq_length": 2048}
    return estimate_memory(LLAMA3_8B, method=method, **{**base, **kw}).gpu_memory_bytes


def test_methods_are_ordered_qlora_lora_full() -> None:
    assert _estimate("qlora") < _estimate("lora") < _estimate("full")
    # Full fine-tuning of 8B needs 16 bytes/param for weights+grads+Adam alone: ~120 GiB.
    assert _estimate("full") > 16 * TOTAL
    # DPO runs chosen and rejected together: twice the activations of LoRA SFT.
    assert _estimate("dpo") > _estimate("lora")


def test_gradient_checkpointing_lowers_activations() -> None:
    on = estimate_memory(LLAMA3_8B, method="lora", batch_size=4, seq_length=2048, gradient_checkpointing=True)
    off = estimate_memory(
        LLAMA3_8B, method="lora", batch_size=4, seq_length=2048, gradient_checkpointing=False
    )
    assert on.breakdown["activations"] < off.breakdown["activations"] / 10
    assert on.gpu_memory_bytes < off.gpu_memory_bytes


def test_full_fine_tuning_shards_over_gpus_but_lora_does_not() -> None:
    one = estimate_memory(LLAMA3_8B, method="full", batch_size=1, seq_length=1024, gpus=1)
    eight = estimate_memory(LLAMA3_8B, method="full", batch_size=1, seq_length=1024, gpus=8)
    assert eight.gpu_memory_bytes == one.gpu_memory_bytes
    assert eight.gpu_memory_bytes_per_gpu < one.gpu_memory_bytes_per_gpu / 4
    sharded = 16 * TOTAL // 8  # bf16 weights + bf16 grads + fp32 master/m/v, split 8 ways
    assert eight.gpu_memory_bytes_per_gpu > sharded
    two_nodes = estimate_memory(LLAMA3_8B, method="full", batch_size=1, seq_length=1024, gpus=8, nodes=2)
    assert two_nodes.gpu_memory_bytes_per_gpu < eight.gpu_memory_bytes_per_gpu
    lora = estimate_memory(LLAMA3_8B, method="lora", batch_size=1, seq_length=1024, gpus=8)
    assert lora.gpu_memory_bytes_per_gpu == lora.gpu_memory_bytes


@pytest.mark.parametrize(
    ("product", "gib"),
    [
        ("NVIDIA-A100-SXM4-40GB", 40),
        ("NVIDIA-A100-PCIE-40GB", 40),
        ("NVIDIA-A100-SXM4-80GB", 80),
        ("NVIDIA-A100-80GB-PCIe", 80),
        ("NVIDIA-H100-80GB-HBM3", 79.6),
        ("NVIDIA-H200", 140.4),
        ("NVIDIA-L4", 22.5),
        ("NVIDIA-L40S", 45),
        ("NVIDIA-A10G", 22.5),
        ("Tesla-T4", 15),
    ],
)
def test_known_gpu_products(product: str, gib: float) -> None:
    size = gpu_memory_bytes(product)
    assert size is not None
    assert size / GIB == pytest.approx(gib, abs=0.1)


def test_fit_verdicts() -> None:
    full_on_a100_40 = estimate_memory(
        LLAMA3_8B, method="full", batch_size=1, seq_length=512, gpu_product="NVIDIA-A100-SXM4-40GB"
    )
    assert full_on_a100_40.fits_on_requested_gpus is False
    qlora_on_t4 = estimate_memory(
        LLAMA3_8B, method="qlora", batch_size=1, seq_length=512, gpu_product="Tesla-T4"
    )
    assert qlora_on_t4.fits_on_requested_gpus is True
    unknown = estimate_memory(LLAMA3_8B, method="lora", batch_size=1, seq_length=512, gpu_product="Acme-X1")
    assert unknown.fits_on_requested_gpus is None
    assert any("unknown GPU product" in n for n in unknown.notes)
    unset = estimate_memory(LLAMA3_8B, method="lora", batch_size=1, seq_length=512)
    assert unset.fits_on_requested_gpus is None
    cpu = estimate_memory(LLAMA3_8B, method="lora", batch_size=1, seq_length=512, gpus=0)
    assert cpu.fits_on_requested_gpus is None


def test_tied_embeddings_mixture_of_experts_and_nested_text_config() -> None:
    tied = Architecture.from_config({**LLAMA3_8B, "tie_word_embeddings": True})
    assert tied.total_params == TOTAL - 128256 * 4096
    mixtral = Architecture.from_config(
        {**LLAMA3_8B, "vocab_size": 32000, "num_local_experts": 8, "intermediate_size": 14336}
    )
    # Mixtral 8x7B: ~46.7B parameters.
    assert mixtral.total_params == pytest.approx(46.7e9, rel=0.01)
    nested = Architecture.from_config({"model_type": "llava", "text_config": LLAMA3_8B, "vocab_size": 128256})
    assert nested.total_params == TOTAL


configs = st.builds(
    lambda h64, layers, heads_pow, kv_div, mult, vocab64: {
        "hidden_size": 64 * h64 * 2**heads_pow,
        "num_hidden_layers": layers,
        "num_attention_heads": 2**heads_pow,
        "num_key_value_heads": 2**heads_pow // kv_div,
        "intermediate_size": 64 * h64 * 2**heads_pow * mult,
        "vocab_size": 64 * vocab64,
    },
    # Hidden sizes from 1024 and 2+ layers: below that (and at 512 with 8k-token rows), a rank-16 adapter is as large as the model, one
    # layer gains nothing from checkpointing, and 4-bit saves less than its dequantisation buffer, in the
    # estimate as in reality.
    st.integers(16, 32),
    st.integers(2, 48),
    st.integers(0, 5),
    st.sampled_from([1, 2, 4]),
    st.integers(2, 4),
    st.integers(10, 2000),
)


@settings(max_examples=60, deadline=None, derandomize=True)  # the same examples on every CI run
@given(config=configs, batch=st.integers(1, 16), seq=st.integers(16, 8192))
def test_monotonic_properties(config: dict[str, Any], batch: int, seq: int) -> None:
    if config["num_key_value_heads"] == 0:
        config["num_key_value_heads"] = 1

    def total(method: str, **kw: Any) -> int:
        args = {"batch_size": batch, "seq_length": seq, **kw}
        return estimate_memory(config, method=method, **args).gpu_memory_bytes

    # Weights and optimizer states order the methods; with huge token counts on a small model LoRA's dropout
    # activations can outweigh full fine-tuning's extra states, so compare at a modest token count.
    assert total("qlora", batch_size=1, seq_length=128) < total("lora", batch_size=1, seq_length=128)
    assert total("lora", batch_size=1, seq_length=128) < total("full", batch_size=1, seq_length=128)
    assert total("lora", gradient_checkpointing=True) <= total("lora", gradient_checkpointing=False)
    assert total("lora", batch_size=batch + 1) > total("lora")
    assert total("lora", seq_length=seq + 1) > total("lora")
    assert total("lora", lora_r=32) > total("lora", lora_r=8)
