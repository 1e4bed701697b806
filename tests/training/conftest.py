"""Fixtures for the training tests.

Training-heavy fixtures run with one torch thread (set here, restored afterwards): on a shared
2-core machine, OpenMP threads that spin while waiting for a busy core make small-model
training many times slower, and one thread's CPU time is a stable measure of the work done.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def texts():
    """Small real samples of the corpus: train texts per language and held-out texts."""
    from transferlens.training.datasets import corpus_texts

    train = corpus_texts(["en", "de", "sv"], "train", max_texts=300, seed=0)
    held = corpus_texts(["en", "de", "sv"], "test", max_texts=8, seed=0)
    return SimpleNamespace(train=train, held=held)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """The ``tiny`` preset's base and Swedish-adapted models, trained once per session, with
    the CPU and wall-clock seconds the two runs took."""
    from transferlens.models import read_checkpoint
    from transferlens.training import train_pair

    out = tmp_path_factory.mktemp("pair")
    with one_thread():
        wall, cpu = time.perf_counter(), time.process_time()
        base, adapted = train_pair(out, preset="tiny", seed=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return SimpleNamespace(
        dir=out,
        base=base,
        adapted=adapted,
        wall_s=wall,
        cpu_s=cpu,
        base_metrics=read_checkpoint(base)["provenance"]["metrics"],
        adapted_metrics=read_checkpoint(adapted)["provenance"]["metrics"],
    )


@pytest.fixture(scope="session")
def micro_cfg():
    """``micro_cfg(**overrides)`` -> a PretrainConfig that trains in about a second (tests of
    mechanics, not of quality)."""
    from transferlens.training import PretrainConfig

    def make(**kw):
        base = dict(
            steps=6,
            batch_size=4,
            seq_len=32,
            vocab_size=320,
            n_layers=1,
            d_model=32,
            n_heads=2,
            d_ff=64,
            lr=3e-3,
            warmup_steps=2,
            eval_every=0,
            eval_texts=4,
            save_every=0,
            log_every=1,
        )
        base.update(kw)
        return PretrainConfig.from_dict(base)

    return make
