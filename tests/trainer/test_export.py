"""Export: the compatibility check before merging, merged == adapter outputs, nf4 export and the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.trainer.conftest import build_config

pytestmark = pytest.mark.usefixtures("torch_threads")

PROMPTS = [
    [{"role": "user", "content": "What is 3 + 4?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is 12 - 5?"}],
]


def make_adapter(base_dir: Path, out_dir: Path, *, base_uri: str, record_base: bool = True) -> Path:
    """A LoRA adapter with non-zero B (so it changes outputs), saved as the train stage saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.stages.train import (
        BASE_INFO_NAME,
        base_fingerprint,
        hash_model_files,
        load_tokenizer,
    )

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    )
    model.save_pretrained(str(out_dir))
    load_tokenizer(base_dir).save_pretrained(str(out_dir))
    if record_base:
        info = {
            "uri": base_uri,
            "fingerprint": base_fingerprint(base_dir),
            "files": hash_model_files(base_dir),
        }
        (out_dir / BASE_INFO_NAME).write_text(json.dumps(info))
    return out_dir


@pytest.fixture(scope="module")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different tiny model: other hidden size and depth."""
    from kubetune_trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other-base"), hidden_size=128, layers=2, heads=2, seed=3)


def test_merge_refuses_an_adapter_of_another_base(
    tiny_model_dir: Path, other_base: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.stages.export import IncompatibleAdapterError, merge_adapter

    foreign = make_adapter(other_base, tmp_path / "foreign", base_uri="s3://models/other/", record_base=False)
    with pytest.raises(
        IncompatibleAdapterError, match=r"gate_proj: adapter expects in_features 128, base has 256"
    ):
        merge_adapter(tiny_model_dir, foreign, tmp_path / "merged")

    recorded = make_adapter(other_base, tmp_path / "recorded", base_uri="s3://models/other/")
    with pytest.raises(
        IncompatibleAdapterError, match=r"hiddenSize 128 \(adapter's base s3://models/other/\) != 256"
    ):
        merge_adapter(tiny_model_dir, recorded, tmp_path / "merged")


def test_merge_refuses_same_shapes_with_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same architecture, different weights (say, base vs instruct): the recorded hashes catch it."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.stages.export import IncompatibleAdapterError, merge_adapter

    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin)
    model = AutoModelForCausalLM.from_pretrained(str(twin), dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.add_(0.01)
    model.save_pretrained(str(twin))
    adapter = make_adapter(twin, tmp_path / "adapter", base_uri="s3://models/twin/")
    with pytest.raises(IncompatibleAdapterError, match="base weights differ"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")


def test_merged_model_and_adapter_give_the_same_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Merged == base + adapter up to float rounding, and the adapter moves the logits far more than that.

    Logits, not greedy strings: which token wins (often EOS at once, for a briefly pretrained model) differs
    between CPUs, so equal greedy answers could be equally empty and prove nothing."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.stages.export import merge_adapter
    from kubetune_trainer.stages.train import load_tokenizer

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", base_uri="pvc://models/tiny")
    merged_dir = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged")
    tokenizer = load_tokenizer(merged_dir)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    texts.append("What is 3 + 4? 3 + 4 = 7.")
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            adapted = with_adapter(ids).logits
            # merge_and_unload matched within ~1e-5 when measured; 1e-4 leaves room for other kernels.
            torch.testing.assert_close(merged(ids).logits, adapted, atol=1e-4, rtol=1e-4, msg=text)
            # The adapter's effect (mean |change| ~0.5 when measured) must dwarf the merge's rounding.
            change = (adapted - plain(ids).logits).abs().mean().item()
        assert change > 0.05, f"the adapter must matter: mean |logit change| {change:.2e} for {text!r}"


def test_export_stage_writes_merged_nf4_and_a_complete_manifest(
    tiny_model_dir: Path, tiny_model_uri: str, pvc_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api.finetunejob import Output
    from kubetune_trainer import storage
    from kubetune_trainer.stages import export

    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(pvc_root / "work"))
    config = build_config(
        base_model=tiny_model_uri,
        dataset={"uri": "pvc://data/rows.jsonl"},
        output="pvc://out/job/",
        method="lora",
    )
    spec = config.spec.model_copy(
        update={"output": Output(uri="pvc://out/job/", merge=True, quantize=["gguf-q4_k_m"])}
    )
    config = config.model_copy(update={"spec": spec})
    make_adapter(tiny_model_dir, storage.local_path(config.artifacts.adapter), base_uri=tiny_model_uri)
    report = {"ok": True, "dataset": {"sha256": "ab" * 32, "rows": 100, "evalRows": 10, "format": "openai"}}
    storage.write_text(config.artifacts.validation_report, json.dumps(report))
    storage.write_text(
        config.artifacts.evaluation_report, json.dumps({"metrics": {"perplexity": "3.1"}, "passed": True})
    )
    storage.write_text(config.artifacts.checkpoints + "history.json", json.dumps([{"step": 10, "uri": "x"}]))

    summary = export.run(config)
    assert summary["ok"], summary
    nf4_uri = config.artifacts.exports + "bnb-nf4/"
    assert summary["outputs"] == {
        "adapterUri": config.artifacts.adapter,
        "mergedUri": config.artifacts.merged,
        "manifestUri": config.artifacts.manifest,
        "quantizedUris": [nf4_uri],
    }
    assert any("gguf-q4_k_m skipped" in w for w in summary["warnings"])

    manifest = json.loads(storage.read_text(config.artifacts.manifest))
    assert manifest["dataset"]["sha256"] == "ab" * 32
    assert manifest["baseModel"]["uri"] == tiny_model_uri
    assert set(manifest["baseModel"]["files"]) == {"config.json", "model.safetensors"}
    assert manifest["trainerConfig"]["spec"]["method"] == "lora"
    assert manifest["hyperparameters"]["learningRate"] == 2e-4
    assert {"torch", "transformers", "peft", "bitsandbytes", "python"} <= set(manifest["libraries"])
    assert manifest["evaluation"]["metrics"] == {"perplexity": "3.1"}
    assert manifest["checkpoints"] == [{"step": 10, "uri": "x"}]
    assert "adapter_model.safetensors" in manifest["outputs"]["adapter"]["files"]
    assert [q["status"] for q in manifest["quantized"]] == ["skipped", "ok"]

    from transformers import AutoModelForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(str(storage.local_path(nf4_uri)), device_map={"": "cpu"})
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
