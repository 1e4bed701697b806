"""Every kind of spec loads offline, and all agree on logits and fingerprints."""

from __future__ import annotations

import copy

import pytest
import torch
from modeltools import logits_of
from transformers import AutoModelForCausalLM

from transferlens.models import ModelHandle, load_model

ATOL = 1e-5  # fp32 rounding (the bridge runs eager attention, the reference sdpa)


@pytest.fixture(scope="module")
def reference(llama_files):
    return logits_of(llama_files["model"], llama_files["ids"])


def _fresh_hf(llama_files):
    return AutoModelForCausalLM.from_pretrained(llama_files["hf"]).eval()


def _check(handle: ModelHandle, llama_files, reference, *, same_weights=True):
    assert isinstance(handle, ModelHandle)
    assert handle.family == "llama"
    assert handle.n_layers == 2
    assert not handle.model.training
    got = logits_of(handle.model, llama_files["ids"])
    torch.testing.assert_close(got, reference, atol=ATOL, rtol=0)
    if same_weights:
        assert handle.fingerprint == llama_files["fingerprint"]


def test_reference_is_not_trivial(reference):
    # distributions that differ by position: agreement below is not agreement of constants
    assert reference.std(dim=-1).min() > 0.1
    assert (reference[0, 1:] - reference[0, :-1]).abs().max() > 0.5


def test_hf_folder(llama_files, reference):
    h = load_model(llama_files["hf"])
    assert h.source == "hf" and h.name == "hf"
    _check(h, llama_files, reference)
    assert h.tokenizer(["x"])["input_ids"] == llama_files["tok"](["x"])["input_ids"]


def test_transferlens_checkpoint(llama_files, reference):
    h = load_model(str(llama_files["pt"]))
    assert h.source == "checkpoint"
    assert h.provenance["method"] == "random-init" and h.provenance["seed"] == 3
    assert "torch" in h.provenance["versions"]
    _check(h, llama_files, reference)


def test_gguf_file(llama_files, reference):
    h = load_model(llama_files["gguf"])
    assert h.source == "gguf"
    _check(h, llama_files, reference)
    text = "Välj Format - Celler"
    assert h.tokenizer(text)["input_ids"] == llama_files["tok"](text)["input_ids"]


def test_gguf_q_k_permutation_matters(llama_files, reference, tmp_path, monkeypatch):
    # Written without llama.cpp's q/k permutation, the file gives other logits: the
    # agreement above depends on writing (and transformers undoing) the permutation.
    import gguf_writer

    monkeypatch.setattr(gguf_writer, "_permute", lambda w, n_head, n_kv: w)
    path = gguf_writer.write_llama_gguf(
        llama_files["model"], llama_files["tok"], tmp_path / "unpermuted.gguf"
    )
    got = logits_of(load_model(path).model, llama_files["ids"])
    assert (got - reference).abs().max() > 1e-2


def test_nn_module_with_tokenizer(llama_files, reference):
    model = _fresh_hf(llama_files)
    h = load_model(model, tokenizer=llama_files["tok"])
    assert h.source == "module" and h.model is model and h.tokenizer is llama_files["tok"]
    _check(h, llama_files, reference)


def test_handle_passes_through_and_dtype_resets_fingerprint(llama_files):
    h = load_model(_fresh_hf(llama_files), tokenizer=llama_files["tok"])
    fp32 = h.fingerprint
    assert load_model(h) is h
    load_model(h, dtype="float64")
    assert h.dtype == torch.float64
    assert h.fingerprint != fp32


def test_device_moves_the_model(llama_files):
    h = load_model(_fresh_hf(llama_files), tokenizer=llama_files["tok"], device="meta")
    assert h.device == torch.device("meta")
    assert all(p.is_meta for p in h.model.parameters())


def test_transformer_bridge(llama_files, reference):
    from transformer_lens.model_bridge.sources.transformers.source import boot

    hf = _fresh_hf(llama_files)
    bridge = boot(str(llama_files["hf"]), hf_model=hf, tokenizer=llama_files["tok"])
    h = load_model(bridge)
    assert h.source == "transformer_lens"
    assert h.model is hf
    _check(h, llama_files, reference)
    # the model's own tokenizer (from its folder), not the bridge's copy that forces a BOS
    text = "Choose Format - Cells"
    own = llama_files["tok"](text)["input_ids"]
    assert h.tokenizer(text)["input_ids"] == own and h.tokenizer is not bridge.tokenizer
    assert load_model(bridge, tokenizer=bridge.tokenizer).tokenizer is bridge.tokenizer
    # and the bridge itself computes the same logits (an independent forward)
    with torch.no_grad():
        torch.testing.assert_close(bridge(llama_files["ids"]), reference, atol=ATOL, rtol=0)


def test_nnsight_wrappers(llama_files, reference):
    import nnsight
    from nnsight.modeling.transformers import TransformersModel

    hf = _fresh_hf(llama_files)
    h = load_model(nnsight.NNsight(hf), tokenizer=llama_files["tok"])
    assert h.source == "nnsight" and h.model is hf
    _check(h, llama_files, reference)

    wrapped = TransformersModel(_fresh_hf(llama_files), tokenizer=llama_files["tok"])
    h = load_model(wrapped)
    assert h.model is wrapped._module and h.tokenizer is llama_files["tok"]
    _check(h, llama_files, reference)


def test_nnsight_lazy_model_is_dispatched(llama_files, reference):
    from nnsight.modeling.transformers import TransformersModel

    lazy = TransformersModel(
        str(llama_files["hf"]), task="text-generation", tokenizer=llama_files["tok"]
    )
    assert next(lazy._module.parameters()).is_meta
    h = load_model(lazy)
    assert not next(h.model.parameters()).is_meta
    _check(h, llama_files, reference)


@pytest.mark.parametrize("merge", [False, True])
def test_peft_folder(llama_files, reference, merge):
    h = load_model(llama_files["peft"], merge=merge)
    assert h.source == "peft"
    assert h.provenance["parent"]["fingerprint"] == llama_files["fingerprint"]
    assert h.provenance["merged"] is merge
    live = logits_of(llama_files["peft_model"], llama_files["ids"])
    assert (live - reference).abs().max() > 1e-2  # the adapter changes the model
    _check(h, llama_files, live, same_weights=False)
    assert h.fingerprint != llama_files["fingerprint"]
    assert ("lora_A" in " ".join(n for n, _ in h.model.named_parameters())) is not merge


def test_gguf_folder_with_one_file(llama_files, reference, tmp_path):
    import shutil

    shutil.copy(llama_files["gguf"], tmp_path / "m.gguf")
    _check(load_model(tmp_path), llama_files, reference)


def test_load_does_not_touch_process_wide_state(llama_files):
    from transformers.utils import logging as hf_logging

    state = (
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
        torch.get_num_threads(),
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
    )
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model(llama_files["pt"])
    load_model(llama_files["peft"])
    load_model(llama_files["hf"])
    load_model(llama_files["gguf"])
    torch.testing.assert_close(torch.rand(3), expected, atol=0, rtol=0)
    assert state == (
        torch.get_default_dtype(),
        torch.is_grad_enabled(),
        torch.get_num_threads(),
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_on_load_matches_from_pretrained_in_that_dtype(llama_files, dtype):
    """Converting at load time gives the model transformers builds in that dtype: weights in
    it, RoPE's computed inv_freq left in float32 (cast too, the angles drifted with position:
    logits off by > 1 at position 500 in bfloat16)."""
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    ref = AutoModelForCausalLM.from_pretrained(llama_files["hf"], dtype=dtype).eval()
    ids = torch.randint(3, 300, (1, 256), generator=torch.Generator().manual_seed(0))
    want = logits_of(ref, ids)
    for spec in (llama_files["pt"], llama_files["hf"]):
        h = load_model(spec, dtype=name)
        assert h.dtype == dtype
        assert h.model.model.rotary_emb.inv_freq.dtype == torch.float32
        torch.testing.assert_close(logits_of(h.model, ids), want, atol=0, rtol=0)


def test_peft_folder_whose_base_is_a_lora_checkpoint(tiny_tok, tmp_path):
    """A second adapter trained on a merged LoRA run: its base is loaded merged (it was left
    a PeftModel, refused as 'not the llama family layout', or an AttributeError)."""
    import copy
    import json

    from modeltools import lora_model
    from peft import get_peft_model_state_dict

    from transferlens.models import save_checkpoint, tiny_model

    base = tiny_model("llama", tokenizer=tiny_tok, seed=3)
    save_checkpoint(tmp_path / "base.pt", base.model, tiny_tok, {})
    first = lora_model(base.model, seed=1)
    adapter = {
        "state_dict": get_peft_model_state_dict(first),
        "peft_config": first.peft_config["default"].to_dict(),
        "parent": {"path": str(tmp_path / "base.pt"), "fingerprint": base.fingerprint},
    }
    save_checkpoint(tmp_path / "lora1.pt", first, tiny_tok, {}, adapter=adapter)
    second = lora_model(copy.deepcopy(first).merge_and_unload().eval(), seed=2)
    second.save_pretrained(tmp_path / "peft2")
    cfg_path = tmp_path / "peft2" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "lora1.pt")
    cfg_path.write_text(json.dumps(cfg))
    ids = torch.tensor([tiny_tok("Välj Format - Celler")["input_ids"]])
    want = logits_of(second, ids)
    for merge in (False, True):
        h = load_model(tmp_path / "peft2", merge=merge)
        torch.testing.assert_close(logits_of(h.model, ids), want, atol=1e-5, rtol=0)


def test_transformer_bridge_of_a_model_whose_tokenizer_adds_no_bos(tiny_tok, tmp_path):
    """Like GPT-2 or SmolLM2: the bridge's tokenizer copy prepends BOS, the model's own does
    not; the handle tokenises as the model does (its activations match the folder's)."""
    from tokenizers import processors
    from transformer_lens.model_bridge.sources.transformers.source import boot
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from transferlens.models import tiny_model

    bt = copy.deepcopy(tiny_tok.backend_tokenizer)
    bt.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no BOS
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bt, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tiny_model("llama", tokenizer=tok, seed=2).model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    own = AutoTokenizer.from_pretrained(tmp_path)
    bridge = boot(
        str(tmp_path),
        hf_model=AutoModelForCausalLM.from_pretrained(tmp_path).eval(),
        tokenizer=own,
    )
    text = "Choose Format - Cells"
    assert bridge.tokenizer(text)["input_ids"] != own(text)["input_ids"]  # BOS forced
    h = load_model(bridge)
    assert h.tokenizer(text)["input_ids"] == own(text)["input_ids"]
