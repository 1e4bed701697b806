"""Tiny random-init models built offline (tests, notebooks, examples).

``tiny_model("llama")`` returns a :class:`ModelHandle` around a 2-layer model of the given
family with a small byte-level BPE tokenizer trained on a fixed multilingual sample, so it
runs anywhere without a model hub. Same seed -> same weights.
"""

from __future__ import annotations

from typing import Any

import torch

from .handle import ModelHandle
from .sitemap import SiteMap

__all__ = ["tiny_model", "tiny_tokenizer"]

_SAMPLE = [
    "The quick brown fox jumps over the lazy dog.",
    "Choose Format - Cells to open the dialog.",
    "Välj Format - Celler för att öppna dialogrutan.",
    "Vælg Formater - Celler for at åbne dialogen.",
    "Wählen Sie Format - Zellen, um den Dialog zu öffnen.",
    "Valitse Muotoilu - Solut avataksesi valintaikkunan.",
    "Inserts a new table into the document at the cursor position.",
    "Infogar en ny tabell i dokumentet vid markörens position.",
]


def tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained on a fixed sample.

    Special tokens: ``<|bos|>`` (id 0), ``<|eos|>`` (1), ``<|pad|>`` (2).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SAMPLE * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        model_max_length=64,
    )


def _config(family: str, vocab: int, n_layers: int, d_model: int, n_heads: int, n_ctx: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if family == "gpt2":
        return tf.GPT2Config(
            n_layer=n_layers,
            n_embd=d_model,
            n_head=n_heads,
            n_positions=n_ctx,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    if family == "llama":
        return tf.LlamaConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads // 2,
            max_position_embeddings=n_ctx,
            tie_word_embeddings=True,
            **common,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads // 2,
            head_dim=d_model // n_heads,
            max_position_embeddings=n_ctx,
            sliding_window=8,
            **common,
        )
    if family == "bert":
        return tf.BertConfig(
            num_hidden_layers=n_layers,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_attention_heads=n_heads,
            max_position_embeddings=n_ctx,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            vocab_size=vocab,
            pad_token_id=2,
        )
    raise ValueError(f"unknown tiny family {family!r}; use gpt2, llama, gemma3 or bert")


def tiny_model(
    family: str = "llama",
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_ctx: int = 64,
    tokenizer: Any = None,
) -> ModelHandle:
    """A random-init model of ``family`` (``gpt2``, ``llama``, ``gemma3``, ``bert``), eval mode.

    The random init is made larger than Hugging Face's default (std 0.02 -> 0.2) so that the
    tiny model's activations and next-token distributions are not nearly constant, which
    would make equality tests pass trivially.
    """
    import transformers as tf

    tok = tokenizer if tokenizer is not None else tiny_tokenizer()
    cfg = _config(family, len(tok), n_layers, d_model, n_heads, n_ctx)
    if hasattr(cfg, "initializer_range"):
        cfg.initializer_range = 0.2
    cls = {
        "gpt2": tf.GPT2LMHeadModel,
        "llama": tf.LlamaForCausalLM,
        "gemma3": tf.Gemma3ForCausalLM,
        "bert": tf.BertForMaskedLM,
    }[family]
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():  # non-trivial norm weights, so norms are not identities
            for name, p in model.named_parameters():
                if "norm" in name and p.ndim == 1:
                    p.add_(0.1 * torch.randn_like(p))
    model.eval()
    return ModelHandle(
        model=model,
        tokenizer=tok,
        sitemap=SiteMap(model),
        spec=f"<tiny-{family}>",
        source="module",
        name=f"tiny-{family}",
    )
