"""The helper that quotes a library's error inside a one-line message."""

from transferlens.errors import first_line


def test_first_line_of_a_message():
    assert first_line(ValueError("bad header\nmore detail")) == "bad header"
    assert first_line(EOFError()) == "EOFError"
    assert first_line(OSError("  \n  ")) == "OSError"


def test_a_first_line_ending_in_a_colon_takes_the_next():
    e = ValueError("Class validation error for validator 'x':\n    ValueError: hidden size 32\n")
    assert first_line(e) == "Class validation error for validator 'x': ValueError: hidden size 32"
    assert first_line(ValueError("ends with a colon:")) == "ends with a colon:"
