"""Loading the tokenizer and the model the way a job asks: the chat template and its tokens, the embedding
resize and the rows that train, rsLoRA/DoRA/modules_to_save, the attention kernel, the CPU bf16 probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec, TrainerSpec
from kubetune_trainer.training.model import (
    EMBEDDING_ROW_MULTIPLE,
    Device,
    attention_implementation,
    cpu_has_fast_bf16,
    load_base_model,
    load_tokenizer,
    lora_config,
    prepare_trainable_model,
    resize_embeddings,
    set_pad_token,
)

CPU = Device(cuda=False, bf16=False)
LLAMA3 = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]

pytestmark = pytest.mark.usefixtures("torch_threads")


def trainer_spec(*, method: str = "lora", lora: dict[str, Any] | None = None, **dataset: Any) -> TrainerSpec:
    raw: dict[str, Any] = {
        "baseModel": {"uri": "pvc://models/tiny"},
        "dataset": {"uri": "pvc://data/train.jsonl", "evalSplit": 0.1, **dataset},
        "method": method,
        "output": {"uri": "pvc://out/job/"},
    }
    if lora is not None:
        raw["lora"] = lora
    return FineTuneJobSpec.model_validate(raw).trainer_spec()


@pytest.fixture(scope="module")
def tight_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with exactly one embedding row per tokenizer id, so any added token needs a resize
    (the tiny model itself pads its vocabulary to a multiple of 64, where added ids would still fit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tight-model")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


# ----------------------------------------------------------------------------------------------- tokenizer


def test_named_template_tokens_are_added_and_saved_with_the_tokenizer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import trl.chat_template_utils as templates
    from transformers import AutoTokenizer

    spec = trainer_spec(chatTemplateName="llama3")
    plain = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer = load_tokenizer(tiny_model_dir, spec.dataset)

    assert tokenizer.chat_template == templates.llama3_training_chat_template
    assert len(tokenizer) == len(plain) + len(LLAMA3)
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.convert_tokens_to_ids(list(LLAMA3)) == tokenizer.convert_tokens_to_ids(list(LLAMA3))
    # Evaluate and export reload the saved tokenizer with the same spec: nothing is added twice.
    assert len(load_tokenizer(tmp_path, spec.dataset)) == len(tokenizer)


def test_older_calls_keep_working(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(str(tiny_model_dir)).chat_template
    assert load_tokenizer(tiny_model_dir).chat_template == own
    assert load_tokenizer(tiny_model_dir, "{{ messages }}").chat_template == "{{ messages }}"
    assert load_tokenizer(tiny_model_dir, trainer_spec().dataset).chat_template == own


def test_a_missing_pad_token_becomes_an_existing_token(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    size = len(tokenizer)
    tokenizer.pad_token = None
    set_pad_token(tokenizer)
    assert (tokenizer.pad_token, len(tokenizer)) == (tokenizer.eos_token, size)

    llama31 = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    llama31.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    llama31.pad_token = None
    set_pad_token(llama31)
    assert llama31.pad_token == "<|finetune_right_pad_id|>"  # keeps EOS distinct from padding


# ---------------------------------------------------------------------------------- resize and new rows


def _input_rows(model: Any, count: int) -> Any:
    import torch

    return model.get_input_embeddings()(torch.arange(count)[None])[0].detach().clone()


def _head_rows(model: Any, hidden: int) -> Any:
    import torch

    return model.get_output_embeddings()(torch.eye(hidden)).T.detach().clone()  # the lm_head weight in use


def test_llama3_resizes_the_embeddings_and_trains_only_the_template_rows(
    tight_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel

    spec = trainer_spec(chatTemplateName="llama3")
    tokenizer = load_tokenizer(tight_model_dir, spec.dataset)
    base = load_base_model(tight_model_dir, method="lora", device=CPU)
    rows_before, hidden = base.get_input_embeddings().weight.shape
    old_norms = base.get_input_embeddings().weight.detach().norm(dim=-1)
    assert len(tokenizer) == rows_before + len(LLAMA3)

    model = prepare_trainable_model(base, spec, CPU, tokenizer)

    rows = model.get_input_embeddings().weight.shape[0]
    assert (
        rows % EMBEDDING_ROW_MULTIPLE == 0
        and len(tokenizer) <= rows < len(tokenizer) + EMBEDDING_ROW_MULTIPLE
    )
    new_ids = tokenizer.convert_tokens_to_ids(list(LLAMA3))
    assert new_ids == list(range(rows_before, len(tokenizer)))
    # Mean-initialised: the new rows look like an average old row, neither zero nor far off.
    new_norms = _input_rows(model, len(tokenizer))[new_ids].norm(dim=-1)
    assert bool(((new_norms > old_norms.min() / 2) & (new_norms < old_norms.max() * 2)).all())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "trainable_tokens_delta" in name for name in trainable)
    assert model.peft_config["default"].trainable_token_indices == {
        "model.embed_tokens": new_ids,
        "lm_head": new_ids,
    }

    inputs_before, head_before = _input_rows(model, rows), _head_rows(model, hidden)
    batch = tokenizer.apply_chat_template(CHAT, return_dict=True, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    for before, after in (
        (inputs_before, _input_rows(model, rows)),
        (head_before, _head_rows(model, hidden)),
    ):
        changed = (after - before).abs().sum(dim=-1) > 0
        assert changed.nonzero().flatten().tolist() == new_ids  # the old rows stayed frozen

    # The saved adapter carries the rows; it loads onto a base resized the same way (what export must do).
    model.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        expected = model(**batch).logits
    fresh = load_base_model(tight_model_dir, method="lora", device=CPU)
    with pytest.raises((IndexError, RuntimeError)):
        PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))  # not resized: the new ids do not fit
    fresh = load_base_model(tight_model_dir, method="lora", device=CPU)
    assert resize_embeddings(fresh, tokenizer, mean_resizing=False) == rows_before
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)


def test_full_fine_tuning_resizes_and_trains_every_weight(tight_model_dir: Path) -> None:
    spec = trainer_spec(method="full", chatTemplateName="llama3")
    tokenizer = load_tokenizer(tight_model_dir, spec.dataset)
    model = prepare_trainable_model(
        load_base_model(tight_model_dir, method="full", device=CPU), spec, CPU, tokenizer
    )
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0]
    assert all(p.requires_grad for p in model.parameters())


def test_qlora_resizes_and_trains_the_template_rows(tight_model_dir: Path) -> None:
    spec = trainer_spec(method="qlora", chatTemplateName="llama3")
    tokenizer = load_tokenizer(tight_model_dir, spec.dataset)
    base = load_base_model(tight_model_dir, method="qlora", device=CPU)
    model = prepare_trainable_model(base, spec, CPU, tokenizer)
    assert model.get_input_embeddings().weight.shape[0] % EMBEDDING_ROW_MULTIPLE == 0
    batch = tokenizer.apply_chat_template(CHAT, return_dict=True, return_tensors="pt")
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    deltas = [p for name, p in model.named_parameters() if "trainable_tokens_delta" in name]
    assert len(deltas) == 2 and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in deltas)


def test_embeddings_in_modules_to_save_train_in_full_instead_of_by_row(tight_model_dir: Path) -> None:
    lora = {"r": 4, "alpha": 8, "modulesToSave": ["embed_tokens", "lm_head"]}
    spec = trainer_spec(chatTemplateName="llama3", lora=lora)
    tokenizer = load_tokenizer(tight_model_dir, spec.dataset)
    model = prepare_trainable_model(
        load_base_model(tight_model_dir, method="lora", device=CPU), spec, CPU, tokenizer
    )
    assert model.peft_config["default"].trainable_token_indices is None
    assert type(model.get_input_embeddings()).__name__ == "ModulesToSaveWrapper"


def test_no_named_template_means_no_trainable_rows(tiny_model_dir: Path) -> None:
    spec = trainer_spec()
    tokenizer = load_tokenizer(tiny_model_dir, spec.dataset)
    base = load_base_model(tiny_model_dir, method="lora", device=CPU)
    rows = base.get_input_embeddings().weight.shape[0]
    model = prepare_trainable_model(base, spec, CPU, tokenizer)
    assert model.peft_config["default"].trainable_token_indices is None
    assert model.get_input_embeddings().weight.shape[0] == rows  # the tokenizer fits: no resize


# -------------------------------------------------------------------------------- rsLoRA, DoRA, modules


def _q_proj(model: Any) -> Any:
    return model.base_model.model.model.layers[0].self_attn.q_proj


def test_rslora_scales_by_alpha_over_sqrt_r(tiny_model_dir: Path) -> None:
    for rslora, expected in ((False, 16 / 4), (True, 16 / 4**0.5)):
        spec = trainer_spec(lora={"r": 4, "alpha": 16, "useRslora": rslora})
        assert lora_config(spec).use_rslora is rslora
        model = prepare_trainable_model(load_base_model(tiny_model_dir, method="lora", device=CPU), spec, CPU)
        assert _q_proj(model).scaling["default"] == pytest.approx(expected)


def test_dora_adds_a_trainable_magnitude_vector(tiny_model_dir: Path) -> None:
    spec = trainer_spec(lora={"r": 4, "alpha": 8, "useDora": True})
    model = prepare_trainable_model(load_base_model(tiny_model_dir, method="lora", device=CPU), spec, CPU)
    assert model.peft_config["default"].use_dora is True
    magnitude = _q_proj(model).lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad and magnitude.shape == (_q_proj(model).base_layer.out_features,)
    plain = prepare_trainable_model(
        load_base_model(tiny_model_dir, method="lora", device=CPU), trainer_spec(), CPU
    )
    assert len(_q_proj(plain).lora_magnitude_vector) == 0


def test_modules_to_save_trains_a_copy_and_freezes_the_original(tiny_model_dir: Path) -> None:
    import torch

    spec = trainer_spec(lora={"r": 4, "alpha": 8, "modulesToSave": ["lm_head"]})
    model = prepare_trainable_model(load_base_model(tiny_model_dir, method="lora", device=CPU), spec, CPU)
    head = model.base_model.model.lm_head
    copy, original = head.modules_to_save["default"].weight, head.original_module.weight
    assert copy.requires_grad and not original.requires_grad and copy.data_ptr() != original.data_ptr()
    kept = original.detach().clone()
    optimizer = torch.optim.SGD([copy], lr=0.1)
    ids = torch.tensor([[1, 20, 30, 40]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert not torch.equal(copy, kept) and torch.equal(original, kept)


# ---------------------------------------------------------------------------------------------- attention


def _sdpa_calls(model: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[int, Any]:
    import torch

    real = torch.nn.functional.scaled_dot_product_attention
    calls = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 20, 30, 40]]), output_attentions=True)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", real)
    return len(calls), output


@pytest.mark.parametrize("requested", ["auto", "sdpa"])
def test_sdpa_runs_torch_scaled_dot_product_attention(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, requested: str
) -> None:
    assert attention_implementation(CPU, requested) == "sdpa"
    model = load_base_model(tiny_model_dir, method="lora", device=CPU, attention=requested).eval()
    calls, _ = _sdpa_calls(model, monkeypatch)
    assert calls == model.config.num_hidden_layers


def test_eager_runs_its_own_attention_and_returns_the_weights(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_base_model(tiny_model_dir, method="lora", device=CPU, attention="eager").eval()
    calls, output = _sdpa_calls(model, monkeypatch)
    assert calls == 0
    assert len(output.attentions) == model.config.num_hidden_layers and output.attentions[0].shape[-1] == 4


def test_flash_attention_that_cannot_run_fails_naming_the_field(tiny_model_dir: Path) -> None:
    field = r"spec\.hyperparameters\.attentionImplementation flash_attention_2"
    with pytest.raises(ValueError, match=field + ".*CUDA GPU"):
        load_base_model(tiny_model_dir, method="lora", device=CPU, attention="flash_attention_2")
    # A GPU pod whose image lacks flash-attn (this one has none): refused, never swapped for sdpa.
    with pytest.raises(ValueError, match=field + ".*flash-attn does not import"):
        attention_implementation(Device(cuda=True, bf16=True), "flash_attention_2")
    assert attention_implementation(Device(cuda=True, bf16=True), "auto") == "sdpa"


# ------------------------------------------------------------------------------------------------ device


@pytest.mark.parametrize(
    ("capabilities", "fast"),
    [
        ({"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": False}, False),
        ({"architecture": "x86_64", "avx512_bf16": True}, True),
        ({"architecture": "x86_64", "amx_bf16": True, "avx512_bf16": False}, True),
        ({"architecture": "aarch64", "neon": True, "bf16": True}, True),
        ({"architecture": "aarch64", "neon": True}, False),
    ],
)
def test_cpu_bf16_comes_from_the_cpu_capabilities(capabilities: dict[str, Any], fast: bool) -> None:
    assert cpu_has_fast_bf16(capabilities) is fast


def test_device_detect_reads_torchs_public_capabilities() -> None:
    import torch

    device = Device.detect()
    if not device.cuda:
        assert device.bf16 is cpu_has_fast_bf16(torch.cpu.get_capabilities())
