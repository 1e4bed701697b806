"""The training loop: schedule, data order, accumulation, logging, divergence, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from transferlens.models import fingerprint, tiny_model
from transferlens.training import DivergenceError, PretrainConfig, lr_factor, run_loop
from transferlens.training.common import lm_collate, lm_loss
from transferlens.training.loop import batch_indices

pytestmark = pytest.mark.usefixtures("single_thread")


def _blocks(n=32, length=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(3, vocab, (n, length), generator=g))


def _model(tiny_tok, seed=0):
    model = tiny_model("llama", seed=seed, tokenizer=tiny_tok, n_layers=1).model
    model.train()
    return model


def _cfg(**kw):
    base = dict(
        steps=8,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        save_every=0,
        log_every=1,
        seq_len=16,
        cpu=True,
    )
    base.update(kw)
    return PretrainConfig.from_dict(base)


def test_lr_schedule_warmup_then_decay_to_min():
    cfg = PretrainConfig(steps=11, warmup_steps=4, min_lr_ratio=0.1, schedule="cosine")
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(0.1)
    # cosine midpoint is halfway between 1 and the floor
    assert lr_factor(7, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = PretrainConfig(steps=11, warmup_steps=4, min_lr_ratio=0.0, schedule="linear")
    assert lr_factor(7, lin) == pytest.approx(0.5)
    const = PretrainConfig(steps=11, warmup_steps=0, schedule="constant")
    assert {lr_factor(s, const) for s in range(11)} == {1.0}


def test_batch_indices_disjoint_across_ranks_and_cover_an_epoch():
    n, b, world = 50, 4, 3
    per_epoch = n // (b * world)
    seen = []
    for micro in range(per_epoch):
        parts = [batch_indices(micro, n, b, world, r, seed=1) for r in range(world)]
        for p in parts:
            assert len(p) == b
        seen += [i for p in parts for i in p]
    assert len(seen) == len(set(seen)) == per_epoch * b * world
    # the next epoch is a different permutation; the same seed gives the same order
    assert batch_indices(per_epoch, n, b, world, 0, 1) != batch_indices(0, n, b, world, 0, 1)
    assert batch_indices(5, n, b, world, 2, 1) == batch_indices(5, n, b, world, 2, 1)
    with pytest.raises(ValueError, match="too little data: 5 training examples"):
        batch_indices(0, 5, 4, 2, 0, 0)


def test_loop_trains_logs_and_restores_caller_rng(tiny_tok, tmp_path):
    model = _model(tiny_tok)
    data = _blocks(8)  # two batches: the model can memorise them
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    cfg = _cfg(steps=30, lr=1e-2, warmup_steps=3, log_every=5)
    res = run_loop(
        model, data, lm_collate, lm_loss, cfg, tmp_path / "run", eval_fn=lambda m: {"probe": 1.0}
    )
    assert torch.equal(torch.rand(3), expected_next)  # the loop forked the global RNG
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20, 25, 30]
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    for rec in lines:
        assert {"loss", "lr", "tokens_per_s", "grad_norm", "tokens"} <= set(rec)
        assert rec["lr"] == pytest.approx(cfg.lr * lr_factor(rec["step"] - 1, cfg))
    assert lines[-1]["eval/probe"] == 1.0 and res.eval == {"probe": 1.0}
    assert res.steps == 30 and res.tokens == 30 * 4 * 16
    assert not model.training


def test_gradient_accumulation_matches_the_large_batch(tiny_tok, tmp_path):
    data = _blocks(32)
    a, b = _model(tiny_tok), _model(tiny_tok)
    run_loop(a, data, lm_collate, lm_loss, _cfg(batch_size=4, grad_accum=1), tmp_path / "a")
    run_loop(b, data, lm_collate, lm_loss, _cfg(batch_size=2, grad_accum=2), tmp_path / "b")
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
    c = _model(tiny_tok)
    run_loop(c, data, lm_collate, lm_loss, _cfg(batch_size=2, grad_accum=1), tmp_path / "c")
    assert not torch.allclose(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_accumulated_sft_steps_average_over_all_response_tokens(tiny_tok, tmp_path):
    """SFT micro-batches hold different numbers of response tokens: with weight_fn the
    accumulated step equals the large batch's per-token mean; weighting the micro-batch means
    equally (the loop without weight_fn) does not."""
    from transferlens.analysis.behaviour import pad_examples
    from transferlens.training.sft import _response_tokens, _sft_loss

    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(16):
        n_resp = 1 + (i * 5) % 9  # 1..9 response tokens
        ids = torch.randint(3, 300, (4 + n_resp,), generator=g).tolist()
        pairs.append((ids[:4], ids[4:]))

    def collate(b):
        return pad_examples(b, 0)

    def train(batch_size, grad_accum, weight_fn, folder):
        model = _model(tiny_tok)
        cfg = _cfg(batch_size=batch_size, grad_accum=grad_accum, steps=4)
        run_loop(model, pairs, collate, _sft_loss, cfg, tmp_path / folder, weight_fn=weight_fn)
        return model

    big = train(4, 1, _response_tokens, "big")
    acc = train(2, 2, _response_tokens, "acc")
    for (name, pa), pb in zip(big.named_parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
    equal = train(2, 2, None, "equal")
    pairs_ = zip(big.parameters(), equal.parameters(), strict=True)
    gap = max((pa - pb).abs().max().item() for pa, pb in pairs_)
    assert gap > 1e-3


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_state(tiny_tok, tmp_path):
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss, stats = lm_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 5 else loss), stats

    model = _model(tiny_tok)
    with pytest.raises(
        DivergenceError,
        match=r"loss became nan at step 5; the last good state "
        r"is kept in .*state\.pt",
    ) as info:
        run_loop(model, _blocks(), lm_collate, poisoned, _cfg(save_every=2), tmp_path / "r")
    assert "\n" not in str(info.value)
    state = torch.load(tmp_path / "r" / "state.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _interrupt_at(call: int):
    """An LM loss that raises KeyboardInterrupt at its ``call``-th call (a killed run)."""
    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return lm_loss(model, batch)

    return loss


def _interrupted(tiny_tok, data, cfg, folder, call, seed=0):
    """A run killed at micro-batch ``call``, then resumed in the same folder."""
    with pytest.raises(KeyboardInterrupt):
        run_loop(_model(tiny_tok), data, lm_collate, _interrupt_at(call), cfg, folder)
    return run_loop(_model(tiny_tok, seed=seed), data, lm_collate, lm_loss, cfg, folder)


def test_interrupted_run_resumes_to_the_same_weights(tiny_tok, tmp_path):
    data = _blocks(40)
    cfg = _cfg(steps=10, save_every=3, batch_size=4)
    full = _model(tiny_tok)
    run_loop(full, data, lm_collate, lm_loss, cfg, tmp_path / "full")
    res = _interrupted(tiny_tok, data, cfg, tmp_path / "cut", call=8, seed=9)
    assert res.resumed_from == 6
    assert fingerprint(res.model) == fingerprint(full)
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 11))  # lines after the saved step were dropped and redone


def test_resumed_log_lines_equal_the_uninterrupted_ones(tiny_tok, tmp_path):
    # saved at step 3, between the log lines of steps 2 and 4: the line of step 4 averages
    # steps 3 and 4 in both runs
    data = _blocks(40)
    cfg = _cfg(steps=8, save_every=3, log_every=2, batch_size=4)
    run_loop(_model(tiny_tok), data, lm_collate, lm_loss, cfg, tmp_path / "full")
    res = _interrupted(tiny_tok, data, cfg, tmp_path / "cut", call=5)
    assert res.resumed_from == 3

    def lines(folder):
        text = (tmp_path / folder / "log.jsonl").read_text()
        return [(r["step"], r["loss"]) for r in map(json.loads, text.splitlines())]

    full, cut = lines("full"), lines("cut")
    assert [s for s, _ in cut] == [s for s, _ in full] == [2, 4, 6, 8]
    assert [loss for _, loss in cut] == pytest.approx([loss for _, loss in full], rel=1e-6)


def test_state_of_another_run_is_refused(tiny_tok, tmp_path):
    cfg = _cfg(steps=4, save_every=1)
    with pytest.raises(KeyboardInterrupt):
        run_loop(
            _model(tiny_tok),
            _blocks(),
            lm_collate,
            _interrupt_at(3),
            cfg,
            tmp_path / "r",
            run_key={"lr": 1},
        )
    with pytest.raises(ValueError, match="holds the saved state of a different run"):
        run_loop(
            _model(tiny_tok), _blocks(), lm_collate, lm_loss, cfg, tmp_path / "r", run_key={"lr": 2}
        )


def test_model_without_trainable_parameters_is_an_error(tiny_tok, tmp_path):
    model = _model(tiny_tok)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        run_loop(model, _blocks(), lm_collate, lm_loss, _cfg(), tmp_path / "r")
