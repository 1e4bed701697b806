"""transferlens.jsonl: the JSON-lines reader behind every JSONL input."""

from __future__ import annotations

import pytest

from transferlens.jsonl import json_lines


def test_values_with_their_line_numbers_blank_lines_skipped(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n   \n"text"\n[1, 2]\n', encoding="utf-8")
    assert list(json_lines(p)) == [(1, {"a": 1}), (4, "text"), (5, [1, 2])]


def test_errors_name_the_file_and_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON \(") as e:
        list(json_lines(p))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: no such prompts file$"):
        list(json_lines(tmp_path / "nope.jsonl", "prompts file"))


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes('{"text": "ok"}\n{"text": "Göteborg"}\n'.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        list(json_lines(p, "training file"))
    assert str(e.value) == (f"{p}:2: not UTF-8 text (byte 0xf6); save the training file as UTF-8")


def test_only_newlines_end_a_line(tmp_path):
    # JSON strings may hold U+2028 and other separators raw; Windows line ends are fine
    p = tmp_path / "x.jsonl"
    p.write_bytes('{"text": "a\u2028b\x85c"}\r\n{"text": "d"}\n'.encode())
    assert list(json_lines(p)) == [(1, {"text": "a\u2028b\x85c"}), (2, {"text": "d"})]
