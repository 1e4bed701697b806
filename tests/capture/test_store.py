"""The on-disk store: layout, memory-mapped reading, manifest, reuse, refusal, disk full."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from transferlens.capture import ActivationStore, StoreWriteError, capture
from transferlens.capture import writer as writer_mod
from transferlens.models import count_hooks, tiny_model

SITES = ["resid_post.0", "resid_post.1", "attn_out.1"]


def files_of(path):
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def many(records):
    out = []
    for k in range(4):
        for r in records:
            out.append(dict(r, id=f"{r['id']}-{k}"))
    return out


def test_layout_memmap_and_sharded_reading(tiny, many, tmp_path):
    h = tiny("gpt2")
    mem = capture(h, many, SITES, select="all", batch_size=4)
    st = capture(h, many, SITES, select="all", out=tmp_path / "s", batch_size=4, shard_rows=40)
    assert isinstance(st, ActivationStore)
    assert len(st.manifest["shards"]) > 2
    for site in SITES:
        a = st.read(site)
        assert all(isinstance(p, np.memmap) for p in a.parts)
        assert a.shape == (mem.n_rows, 32)
        full = mem.read(site)
        np.testing.assert_array_equal(np.asarray(a), full)
        np.testing.assert_array_equal(np.concatenate(list(st.iter_shards(site))), full)
        # indexing across shard borders
        b = len(a.parts[0])
        idx = np.array([b + 3, 0, b - 1, b, len(full) - 1, 5])
        np.testing.assert_array_equal(a[idx], full[idx])
        np.testing.assert_array_equal(a[b - 2 : b + 30], full[b - 2 : b + 30])
        np.testing.assert_array_equal(a[::7], full[::7])
        np.testing.assert_array_equal(a[-1], full[-1])
        np.testing.assert_array_equal(a[b - 1 : b + 1, 3:5], full[b - 1 : b + 1, 3:5])
        mask = np.arange(len(full)) % 3 == 0
        np.testing.assert_array_equal(a[mask], full[mask])
    assert st.n_rows == mem.n_rows
    assert st.rows.equals(mem.rows)
    rows = st.rows
    assert list(rows.columns[:6]) == [
        "example",
        "example_id",
        "language",
        "position",
        "token_id",
        "word",
    ]
    first = rows[rows["example"] == 0].iloc[0]
    assert first["example_id"] == "ex0-0" and first["language"] == "en"
    assert first["topic"] == "calc"
    names = set(files_of(tmp_path / "s"))
    assert {
        "manifest.json",
        "examples.jsonl",
        "rows/00000.npy",
        "acts/resid_post.0/00000.npy",
    } <= names
    assert not any(n.endswith(".tmp") for n in names)
    # each shard file is a plain .npy
    loaded = np.load(tmp_path / "s" / "acts" / "attn_out.1" / "00001.npy")
    np.testing.assert_array_equal(loaded, st.read("attn_out.1").parts[1])


def test_manifest_contents(tiny, records, tmp_path):
    h = tiny("llama")
    st = capture(
        h,
        records,
        "resid_post",
        select="mean",
        out=tmp_path / "s",
        dtype="float16",
        data_name="five records",
    )
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["complete"] is True
    assert m["model"]["fingerprint"] == h.fingerprint
    assert m["model"]["family"] == "llama"
    assert m["sites"] == ["resid_post.0", "resid_post.1"] == st.sites
    assert m["dtype"] == "float16"
    assert m["selection"] == {"select": "mean", "unit": "example", "exclude_special": True}
    tok = m["tokenization"]
    assert tok["padding_side"] == "right" and tok["max_length"] is None
    assert tok["context_length"] == 64 and len(tok["tokenizer_hash"]) == 64
    assert tok["truncated"]["count"] == 0
    assert m["data"]["n_examples"] == 5 and m["data"]["name"] == "five records"
    assert m["data"]["languages"] == {"da": 1, "en": 3, "sv": 1}
    assert len(m["data"]["sha256"]) == 64
    assert {"torch", "transformers", "numpy", "python", "transferlens"} <= set(m["versions"])
    assert m["finished"] == [s["index"] for s in m["shards"]]
    assert m["rows"] == 5 == st.n_rows
    assert m["bytes"] == 5 * (2 * 32 * 2 + 20)
    assert st.read("resid_post.1").dtype == np.float16


def test_bfloat16_reads_back_exactly(tiny, texts, tmp_path):
    h = tiny("gemma3")
    mem = capture(h, texts, SITES, select="all", dtype="bfloat16")
    st = capture(h, texts, SITES, select="all", dtype="bfloat16", out=tmp_path / "s", shard_rows=10)
    for site in SITES:
        t = st.tensor(site)
        assert t.dtype == torch.bfloat16
        assert torch.equal(t.view(torch.int16), mem.tensor(site).view(torch.int16))
        np.testing.assert_array_equal(np.asarray(st.read(site)), t.float().numpy())


def test_complete_store_is_reused_not_recomputed(tiny, texts, tmp_path, monkeypatch):
    h = tiny("gpt2")
    first = capture(h, texts, SITES, out=tmp_path / "s")
    before = files_of(tmp_path / "s")

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr("transferlens.capture.engine.CaptureEngine.run", boom)
    again = capture(h, texts, SITES, out=tmp_path / "s")
    assert files_of(tmp_path / "s") == before
    assert again.n_rows == first.n_rows


@pytest.mark.parametrize(
    "change, words",
    [
        ({"model": "other"}, "model"),
        ({"sites": ["resid_post.0"]}, "sites"),
        ({"select": "mean"}, "selection"),
        ({"dtype": "float16"}, "float16"),
        ({"data": "more"}, "data"),
        ({"padding_side": "left"}, "padding_side"),
    ],
)
def test_refuses_other_model_sites_selection_data(tiny, tiny_tok, texts, tmp_path, change, words):
    h = tiny("gpt2")
    capture(h, texts, SITES, out=tmp_path / "s")
    before = files_of(tmp_path / "s")
    kw = dict(select="all", dtype="float32", padding_side="right")
    model, sites, data = h, SITES, texts
    if "model" in change:
        model = tiny_model("gpt2", seed=1, tokenizer=tiny_tok)
    if "sites" in change:
        sites = change["sites"]
    if "data" in change:
        data = texts + ["one more example"]
    kw.update({k: v for k, v in change.items() if k in kw})
    with pytest.raises(ValueError, match=words) as e:
        capture(model, data, sites, out=tmp_path / "s", **kw)
    assert "refusing" in str(e.value) and "\n" not in str(e.value)
    assert files_of(tmp_path / "s") == before  # untouched
    new = capture(model, data, sites, out=tmp_path / "s", overwrite=True, **kw)
    assert new.sites == sites and new.manifest["model"]["fingerprint"] == model.fingerprint
    assert new.manifest["selection"]["select"] == kw["select"]


def test_out_folder_errors(tiny, texts, tmp_path):
    h = tiny("gpt2")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        capture(h, texts, SITES, out=tmp_path / "file")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an activation store"):
        capture(h, texts, SITES, out=tmp_path / "busy")
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore(tmp_path / "busy")


def _cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


_DAMAGE = {
    "manifest cut": (lambda d: _cut(d / "manifest.json", 0.5), "manifest.json is damaged ("),
    "manifest a list": (
        lambda d: (d / "manifest.json").write_text("[1]"),
        "is not a transferlens activation store manifest",
    ),
    "examples cut": (lambda d: _cut(d / "examples.jsonl", 0.5), "examples.jsonl:"),
    "examples gone": (lambda d: (d / "examples.jsonl").unlink(), "no such examples file"),
    "shard cut": (
        lambda d: _cut(d / "acts" / "resid_post.1" / "00000.npy", 0.5),
        "shard acts/resid_post.1/00000.npy is damaged (",
    ),
    "shard gone": (
        lambda d: (d / "acts" / "resid_post.1" / "00000.npy").unlink(),
        "shard acts/resid_post.1/00000.npy is missing",
    ),
    "shard of another shape": (
        lambda d: np.save(d / "acts" / "resid_post.1" / "00000.npy", np.zeros((3, 2), "f4")),
        "holds float32 (3, 2), the manifest says float32 (",
    ),
    "shard of objects": (
        lambda d: np.save(
            d / "acts" / "resid_post.1" / "00000.npy", np.array([{}], object), allow_pickle=True
        ),
        "is damaged (",
    ),
    "rows cut": (lambda d: _cut(d / "rows" / "00000.npy", 0.5), "shard rows/00000.npy is damaged"),
}


@pytest.mark.parametrize("how", sorted(_DAMAGE))
def test_a_damaged_store_says_what_and_how_to_fix_it(tiny, texts, tmp_path, how):
    out = tmp_path / "store"
    capture(tiny("gpt2"), texts, SITES, out=out)
    damage, expected = _DAMAGE[how]
    damage(out)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        store = ActivationStore(out)
        store.read("resid_post.1")
        store.rows  # noqa: B018 - reads the rows shards and the examples file
    msg = str(info.value)
    assert expected in msg and "\n" not in msg
    assert "run the capture again with overwrite=True (--overwrite)" in msg


def test_a_store_with_a_damaged_manifest_is_replaced_only_on_request(tiny, texts, tmp_path):
    h = tiny("gpt2")
    out = tmp_path / "store"
    capture(h, texts, SITES, out=out)
    _cut(out / "manifest.json", 0.5)
    with pytest.raises(ValueError, match="manifest.json is damaged; pass overwrite=True"):
        capture(h, texts, SITES, out=out)
    capture(h, texts, SITES, out=out, overwrite=True)
    assert ActivationStore(out).n_rows > 0


def _fail_after(monkeypatch, n_ok):
    calls = {"n": 0}
    real = writer_mod._write

    def write(f, buf):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, buf)

    monkeypatch.setattr(writer_mod, "_write", write)


def test_disk_full_keeps_store_consistent_and_resumable(tiny_tok, many, tmp_path, monkeypatch):
    h = tiny_model("llama", tokenizer=tiny_tok)
    h.model.train()  # restored after the failure
    kw = dict(select="all", batch_size=4, shard_rows=30)
    ref = capture(h, many, SITES, out=tmp_path / "ref", **kw)
    assert len(ref.manifest["shards"]) >= 3
    n_hooks = count_hooks(h.model)
    # 4 writes per batch (3 sites + rows); fail in the middle of the third shard
    shards = ref.manifest["shards"]
    _fail_after(monkeypatch, 4 * shards[2]["batches"][0] + 2)
    with pytest.raises(StoreWriteError, match="disk full") as e:
        capture(h, many, SITES, out=tmp_path / "s", **kw)
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert count_hooks(h.model) == n_hooks
    assert h.model.training
    monkeypatch.undo()
    path = tmp_path / "s"
    m = json.loads((path / "manifest.json").read_text())
    assert m["complete"] is False and m["finished"] == [0, 1]
    assert not list(path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(path)
    part = ActivationStore(path, allow_incomplete=True)
    n = shards[0]["rows"] + shards[1]["rows"]
    assert part.n_rows == n
    np.testing.assert_array_equal(
        np.asarray(part.read("attn_out.1")), np.asarray(ref.read("attn_out.1"))[:n]
    )
    capture(h, many, SITES, out=path, **kw)  # the same call resumes
    assert files_of(path) == files_of(tmp_path / "ref")


def test_no_space_is_checked_before_writing(tiny, texts, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(StoreWriteError, match="not enough disk space"):
        capture(tiny("gpt2"), texts, SITES, out=tmp_path / "s")
    assert not (tmp_path / "s" / "acts").exists() or not list((tmp_path / "s").rglob("*.npy"))
