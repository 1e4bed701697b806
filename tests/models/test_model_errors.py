"""Bad input: one clear line, exit status 2 from the CLI, no traceback, nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from transferlens.cli import main
from transferlens.errors import CheckpointError
from transferlens.models import load_model, parse_site, save_checkpoint, site_hooks
from transferlens.models.checkpoint import FORMAT, FORMAT_VERSION


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_line_error(capsys, folder: Path, argv: list[str]) -> str:
    capsys.readouterr()
    before = _listing(folder)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert _listing(folder) == before
    return lines[0]


def cli_error(capsys, folder: Path, spec: str) -> str:
    """Run ``transferlens info SPEC`` and ``transferlens compare SPEC SPEC --out REPORT``
    (a command that writes a report folder); check exit 2, one line on stderr, the same
    message from both, and nothing written under ``folder``."""
    msg = _one_line_error(capsys, folder, ["info", spec])
    report = folder / "report"
    compare = ["compare", spec, spec, "--out", str(report)]
    assert _one_line_error(capsys, folder, compare) == msg
    assert not report.exists()
    return msg


def test_missing_path(capsys, tmp_path):
    msg = cli_error(capsys, tmp_path, str(tmp_path / "nope.pt"))
    assert "no such file" in msg
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "kind,content,expected",
    [
        ("text", b"step,loss\n1,2.5\n", "not a transferlens checkpoint (a text file)"),
        ("random", bytes(range(256)) * 64, "not a transferlens checkpoint (not a torch file)"),
        ("gguf", b"GGUF\x03\x00\x00\x00" + bytes(64), "give it the .gguf extension"),
    ],
)
def test_not_a_checkpoint(capsys, tmp_path, kind, content, expected):
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(content)
    assert expected in cli_error(capsys, tmp_path, str(path))
    with pytest.raises(CheckpointError):
        load_model(path)


def test_zip_that_is_not_a_torch_file(capsys, tmp_path):
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes/readme.txt", "hello")
    assert "a zip archive, but not a torch file" in cli_error(capsys, tmp_path, str(path))


class _RunsCode:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("looks_like_checkpoint", [False, True])
def test_pickle_that_would_run_code_is_refused(capsys, tmp_path, looks_like_checkpoint):
    sentinel = tmp_path / "SENTINEL"
    payload: dict = {"x": _RunsCode(sentinel)}
    if looks_like_checkpoint:
        payload.update(format=FORMAT, format_version=FORMAT_VERSION, config={}, tokenizer={})
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    assert not sentinel.exists()  # writing the payload runs nothing
    msg = cli_error(capsys, tmp_path, str(path))
    assert "refused to load" in msg and "run code" in msg
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not sentinel.exists()


def test_truncated_checkpoint(capsys, tmp_path, tiny):
    h = tiny("gpt2")
    full = save_checkpoint(tmp_path / "full.pt", h.model, h.tokenizer)
    cut = tmp_path / "cut.pt"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in cli_error(capsys, tmp_path, str(cut))


def test_corrupted_bytes_inside_checkpoint(tmp_path, tiny):
    h = tiny("gpt2")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip bits inside a tensor: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(path)


def _damage_zip_directory(data: bytearray, where: str) -> None:
    """Damage one field of a zip's directory (zipfile raises a different error for each)."""
    locator = data.rfind(b"PK\x06\x07")  # zip64 end of central directory locator
    first = data.find(b"PK\x01\x02")  # first central directory entry
    if where == "disk number":  # "zipfiles that span multiple disks are not supported"
        assert locator > 0  # torch writes zip64 records
        data[locator + 4] = 1
    elif where == "compression method":  # NotImplementedError
        data[first + 10] = 99
    else:  # a file name that is not UTF-8 although flagged so (UnicodeDecodeError)
        data[first + 9] |= 0x08  # general-purpose flag bit 11: names are UTF-8
        data[first + 46] = 0xFF  # the first byte of the name


@pytest.mark.parametrize("where", ["disk number", "compression method", "file name"])
def test_damaged_zip_directory_is_one_line(capsys, tmp_path, tiny, where):
    h = tiny("gpt2")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer)
    data = bytearray(path.read_bytes())
    _damage_zip_directory(data, where)
    path.write_bytes(bytes(data))
    msg = cli_error(capsys, tmp_path, str(path))
    assert "the checkpoint is corrupt (" in msg and msg.endswith("copy it again")


def _edit_config(path: Path, **changes) -> None:
    doc = torch.load(path, weights_only=True)
    doc["config"].update(changes)
    torch.save(doc, path)


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"intermediate_size": 48}, "shape mismatches (e.g. model.layers.0.mlp.gate_proj.weight"),
        ({"num_hidden_layers": 1}, "unexpected (e.g. model.layers.1."),
        ({"num_hidden_layers": 3}, "missing (e.g. model.layers.2."),
        ({"tie_word_embeddings": True}, "tied by the config but stored with different values"),
    ],
)
def test_weights_that_do_not_match_the_config(capsys, tmp_path, tiny_tok, changes, expected):
    from transferlens.models import tiny_model

    h = tiny_model("llama", tokenizer=tiny_tok)
    if "tie_word_embeddings" in changes:  # an untied model claimed to be tied
        h.model.config.tie_word_embeddings = False
        h.model.lm_head.weight = torch.nn.Parameter(h.model.lm_head.weight.detach().clone() + 1)
    path = save_checkpoint(tmp_path / "m.pt", h.model, tiny_tok)
    _edit_config(path, **changes)
    msg = cli_error(capsys, tmp_path, str(path))
    assert "weights do not match the config" in msg and expected in msg


def _unsupported_folder(folder: Path, kind: str, tok) -> Path:
    import transformers as tf

    if kind == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        )
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        cfg = tf.T5Config(
            vocab_size=len(tok),
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            decoder_start_token_id=0,
        )
        model = tf.T5ForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["gpt_neox", "t5"])
def test_unsupported_architecture(capsys, tmp_path, tiny_tok, kind):
    folder = _unsupported_folder(tmp_path / kind, kind, tiny_tok)
    msg = cli_error(capsys, tmp_path, str(folder))
    assert f"unsupported architecture '{kind}'" in msg
    for fam in ("gpt2", "llama", "gemma3", "bert"):
        assert fam in msg
    assert "add a FamilyTable entry to transferlens.models.sites.FAMILIES" in msg
    with pytest.raises(ValueError, match="supported families are"):
        load_model(folder)


def test_unsupported_architecture_in_a_checkpoint(capsys, tmp_path, tiny):
    h = tiny("llama")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer)
    _edit_config(path, model_type="gpt_neox")
    msg = cli_error(capsys, tmp_path, str(path))
    assert "unsupported architecture 'gpt_neox': supported families are gpt2" in msg
    assert "add a FamilyTable entry" in msg


def test_checkpoint_of_another_format_version(capsys, tmp_path, tiny):
    h = tiny("gpt2")
    path = save_checkpoint(tmp_path / "m.pt", h.model, h.tokenizer)
    doc = torch.load(path, weights_only=True)
    doc["format_version"] = FORMAT_VERSION + 1
    torch.save(doc, path)
    msg = cli_error(capsys, tmp_path, str(path))
    assert f"format version {FORMAT_VERSION + 1} is not supported" in msg


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["hf", "peft", "gguf"])
def test_truncated_weights_in_a_folder_or_gguf(capsys, tmp_path, llama_files, kind):
    if kind == "gguf":
        spec = tmp_path / "m.gguf"
        shutil.copy(llama_files["gguf"], spec)
        _cut(spec)
        expected = "the GGUF file is truncated or corrupt"
    else:
        spec = tmp_path / kind
        shutil.copytree(llama_files[kind], spec)
        weights = "model.safetensors" if kind == "hf" else "adapter_model.safetensors"
        _cut(spec / weights)
        expected = "a weights file is truncated or corrupt"
    assert expected in cli_error(capsys, tmp_path, str(spec))


@pytest.mark.parametrize("keep", [0.001, 0.01, 0.1, 0.999])
def test_gguf_cut_anywhere_is_one_line(capsys, tmp_path, llama_files, keep):
    # cut inside the header, the metadata, the tensor table and the last tensor's data: the
    # parser raises different errors there (a struct.error inside the metadata used to escape)
    spec = tmp_path / "m.gguf"
    data = llama_files["gguf"].read_bytes()
    spec.write_bytes(data[: int(len(data) * keep)])
    msg = cli_error(capsys, tmp_path, str(spec))
    assert msg.endswith(
        f"the GGUF file is truncated or corrupt (the parser stops inside its "
        f"{int(len(data) * keep)} bytes); copy it again or export it again"
    )


def test_gguf_describing_no_valid_model(capsys, tmp_path, llama_files):
    # an intact file whose metadata give 3 attention heads for a hidden size of 32:
    # transformers' config validation raises its own error class (used to escape)
    import gguf
    import numpy as np

    data = bytearray(llama_files["gguf"].read_bytes())
    reader = gguf.GGUFReader(llama_files["gguf"], "r")
    field = reader.fields["llama.attention.head_count"]
    value = field.parts[field.data[0]]
    at = value.ctypes.data - reader.data.ctypes.data
    data[at : at + value.nbytes] = np.array([3], value.dtype).tobytes()
    del reader, value, field
    spec = tmp_path / "m.gguf"
    spec.write_bytes(bytes(data))
    msg = cli_error(capsys, tmp_path, str(spec))
    assert "cannot read the GGUF metadata (" in msg
    assert "hidden size (32)" in msg  # the line after "... validation error:" says what failed


def test_not_a_gguf_file(capsys, tmp_path):
    spec = tmp_path / "weights.gguf"
    spec.write_bytes(b"PK\x03\x04 not a gguf file at all")
    msg = cli_error(capsys, tmp_path, str(spec))
    assert msg.endswith("not a GGUF file (it does not start with the bytes 'GGUF'); check the path")


def test_missing_path_that_could_be_a_hub_id_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    msg = cli_error(capsys, tmp_path, "models/base")
    assert "no such path, and HF_HUB_OFFLINE=1 forbids loading it as a hub id" in msg


def test_gguf_without_the_gguf_package(capsys, monkeypatch, llama_files, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    msg = cli_error(capsys, tmp_path, str(llama_files["gguf"]))
    assert "needs the 'gguf' package" in msg and "pip install gguf" in msg


def test_peft_folder_whose_base_is_missing(capsys, tmp_path, llama_files):
    folder = tmp_path / "adapter"
    shutil.copytree(llama_files["peft"], folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    msg = cli_error(capsys, tmp_path, str(folder))
    assert "base model" in msg and "is missing" in msg
    with pytest.raises(FileNotFoundError):
        load_model(folder)


def test_peft_config_that_is_not_an_object(capsys, tmp_path, llama_files):
    folder = tmp_path / "adapter"
    shutil.copytree(llama_files["peft"], folder)
    (folder / "adapter_config.json").write_text("[1, 2]")
    msg = cli_error(capsys, tmp_path, str(folder))
    assert msg.endswith("adapter_config.json is not a JSON object")


def test_folder_that_is_no_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in cli_error(capsys, tmp_path, str(tmp_path / "empty"))


def test_unknown_site_lists_valid_components(tiny):
    with pytest.raises(ValueError, match="resid_pre, resid_mid, resid_post") as e:
        parse_site("resid_foo.1")
    assert "unknown site 'resid_foo.1'" in str(e.value)
    bert = tiny("bert")
    with pytest.raises(ValueError, match="valid components: embed, resid_pre, resid_post$"):
        bert.sitemap.validate("resid_mid.0")
    llama = tiny("llama")
    with pytest.raises(ValueError, match=r"layer 5 out of range 0\.\.1"):
        llama.sitemap.validate("resid_post.5")
    with pytest.raises(ValueError, match=r"head 9 out of range 0\.\.3"):
        llama.sitemap.validate("head.1.9")
    for bad in ("resid_post", "embed.1", "attn_out.0.1"):
        with pytest.raises(ValueError):
            parse_site(bad)
    from transferlens.models import count_hooks

    n = count_hooks(llama.model)
    with (
        pytest.raises(ValueError, match="valid components"),
        site_hooks(bert.sitemap, {"embed": lambda x: None, "mlp_out.0": lambda x: None}),
    ):
        pass  # pragma: no cover - never entered
    assert count_hooks(bert.model) == 0 and count_hooks(llama.model) == n


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"intermediate_size": 48}, "wrong shape"),
        ({"num_hidden_layers": 1}, "e.g. unexpected model.layers.1."),
        ({"num_hidden_layers": 3}, "e.g. missing model.layers.2."),
    ],
)
def test_hf_folder_whose_weights_do_not_match_its_config(capsys, tmp_path, tiny, changes, expected):
    h = tiny("llama")
    folder = tmp_path / "hf"
    h.model.save_pretrained(folder)
    h.tokenizer.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    msg = cli_error(capsys, tmp_path, str(folder))
    assert "the weights do not match config.json" in msg and expected in msg
