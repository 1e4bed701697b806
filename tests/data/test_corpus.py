"""Tests for the help parser/cleaner (on a committed HTML fixture) and the bundled corpus."""

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import pytest

from transferlens.data import (
    KINDS,
    LANGUAGES,
    TOPICS,
    corpus_manifest,
    load_corpus,
    load_corpus_long,
)
from transferlens.data.helpparse import (
    AlignedEntry,
    align_paragraphs,
    assign_splits,
    clean_text,
    deduplicate,
    drop_untranslated,
    parse_help_html,
    topic_for_page,
)
from transferlens.data.langcheck import (
    CharTrigramModel,
    check_language,
    language_check_rate,
    untranslated_reason,
)

FIXTURE = Path(__file__).parent / "fixtures" / "help"
FIXTURE_LANGS = {"en": "en-US", "sv": "sv", "de": "de"}


# --------------------------------------------------------------------------- fixture pipeline


def _fixture_pages() -> dict[str, dict]:
    pages: dict[str, dict] = {}
    for lang, folder in FIXTURE_LANGS.items():
        base = FIXTURE / folder / "text"
        pages[lang] = {}
        for path in sorted(base.rglob("*.html")):
            page = path.relative_to(base).with_suffix("").as_posix()
            pages[lang][page] = parse_help_html(path.read_text(encoding="utf-8"), page)
    return pages


@pytest.fixture(scope="module")
def fixture_pages() -> dict[str, dict]:
    return _fixture_pages()


@pytest.fixture(scope="module")
def fixture_aligned(fixture_pages) -> list[AlignedEntry]:
    return align_paragraphs(fixture_pages, languages=tuple(FIXTURE_LANGS))


def _texts(pages, lang, page):
    return {p.pid: p.text for p in pages[lang][page]}


def test_parser_reads_only_translatable_paragraphs_of_the_content_area(fixture_pages):
    en = fixture_pages["en"]["swriter/guide/auto_off"]
    assert [p.pid for p in en] == [
        "hd_id3147812",
        "par_id3147833",
        "par_id999000001",
        "par_idN1081B",
        "par_idN10846",
        "hd_id3147251",
        "par_id3147274",
        "par_id3145596",
        "par_id3150101",
        "par_id3150102",
        "par_id3150103",
    ]
    # the empty paragraph, bookmarks, the debug footer and the script are not paragraphs
    every_text = " ".join(
        p.text for lang in fixture_pages.values() for ps in lang.values() for p in ps
    )
    assert "Title is" not in every_text and "not text" not in every_text
    assert "Help content debug info" not in every_text


def test_parser_kinds(fixture_pages):
    kinds = {p.pid: p.kind for p in fixture_pages["en"]["swriter/guide/auto_off"]}
    assert kinds["hd_id3147812"] == "heading"
    assert kinds["hd_id3147251"] == "heading"
    assert kinds["par_id3147833"] == "paragraph"
    assert kinds["par_idN1081B"] == "list_item"
    assert kinds["par_id3150101"] == "table_head"
    assert kinds["par_id3150102"] == "table_cell"
    assert kinds["par_id3150103"] == "note"
    assert set(kinds.values()) <= set(KINDS)


def test_markup_is_stripped_and_system_switch_keeps_default(fixture_pages):
    en = _texts(fixture_pages, "en", "swriter/guide/auto_off")
    de = _texts(fixture_pages, "de", "swriter/guide/auto_off")
    assert en["par_idN1081B"] == (
        "To quickly undo an automatic correction or completion, press Ctrl+Z."
    )
    assert de["par_idN1081B"].endswith("drücken Sie Strg+Z.")
    assert en["hd_id3147812"] == "Turning Off AutoCorrect"
    # <br>&nbsp; at the end of a table cell leaves no trailing space
    assert en["par_id3150102"] == "Undo the last automatic correction"
    for lang in fixture_pages.values():
        for paragraphs in lang.values():
            for p in paragraphs:
                assert "<" not in p.text and ">" not in p.text and "  " not in p.text
                assert p.text == p.text.strip()


def test_placeholders_are_replaced_by_the_product_name(fixture_pages):
    page = "swriter/guide/auto_off"
    intro = {lang: _texts(fixture_pages, lang, page)["par_id3147833"] for lang in FIXTURE_LANGS}
    assert intro["en"].startswith("By default, LibreOffice automatically corrects")  # %PRODUCTNAME
    assert intro["sv"].startswith("I LibreOffice autoformateras")  # $[officename]
    assert intro["de"].startswith("Standardmäßig korrigiert LibreOffice während")  # %PRDUCTNAME
    for text in intro.values():
        assert "%" not in text and "$[" not in text


def test_application_switch_prefers_the_page_module():
    html = (
        '<div id="DisplayArea"><p id="par_id1" class="paragraph">Choose '
        '<span class="switchinline"><span hidden="true" class="WRITER">Writer menu</span>'
        '<span hidden="true" class="CALC">Calc menu</span></span>.</p></div>'
    )
    assert parse_help_html(html, "scalc/01/x")[0].text == "Choose Calc menu."
    assert parse_help_html(html, "swriter/01/x")[0].text == "Choose Writer menu."
    # no matching case (shared page): the first case
    assert parse_help_html(html, "shared/01/x")[0].text == "Choose Writer menu."


def test_clean_text():
    assert clean_text("Start %PRODUCTNAME now") == "Start LibreOffice now"
    assert clean_text("i %PRODUCTNAM- dokumenter") == "i LibreOffice- dokumenter"
    assert clean_text("$[officename] $[officeversion]", product_version="7.4") == "LibreOffice 7.4"
    assert clean_text("Version %PRODUCTVERSION", product_version="9.9") == "Version 9.9"
    assert clean_text("%APPDATA%\\LibreOffice") == "%APPDATA%\\LibreOffice"
    assert clean_text("  Tab\u00adelle \u200b\n\t x\u00a0y ") == "Tabelle x y"
    decomposed = "Mo\u0308te"
    assert unicodedata.is_normalized("NFD", decomposed)
    assert clean_text(decomposed) == "Möte"


def test_alignment_keeps_paragraphs_present_in_every_language(fixture_aligned):
    ids = [e.id for e in fixture_aligned]
    assert len(ids) == len(set(ids)) == 15
    # missing in German, only on an English page, or empty: not aligned
    assert "swriter/guide/auto_off#par_id999000001" not in ids
    assert not any(i.startswith("scalc/") for i in ids)
    assert "swriter/guide/auto_off#par_id3154250" not in ids
    entry = next(e for e in fixture_aligned if e.id == "swriter/guide/auto_off#par_id3145596")
    assert entry.texts == {
        "en": "Click the Replace tab.",
        "sv": "Klicka på fliken Ersätt.",
        "de": "Klicken Sie auf das Register Ersetzung.",
    }
    assert entry.kind == "list_item" and entry.page == "swriter/guide/auto_off"


def test_topics(fixture_aligned):
    topics = {e.page: e.topic for e in fixture_aligned}
    assert topics == {
        "sdatabase/main": "other",
        "shared/01/06040000": "shared",
        "swriter/guide/auto_off": "swriter",
    }
    assert topic_for_page("smath/01/03090100") == "smath"
    assert topic_for_page("sbasic/shared/03030108") == "sbasic"


def test_untranslated_entries_are_dropped(fixture_aligned):
    kept, reasons = drop_untranslated(fixture_aligned)
    assert reasons == {"sv:copied": 1, "sv:identical": 1}
    kept_ids = {e.id for e in kept}
    assert "swriter/guide/auto_off#par_id3147274" not in kept_ids  # sv is the English text
    assert "swriter/guide/auto_off#par_idN10846" not in kept_ids  # sv is English, one word edited
    assert len(kept) == 13


def test_broken_embeds_are_dropped():
    entry = AlignedEntry(
        id="p#1",
        page="scalc/01/p",
        topic="scalc",
        kind="paragraph",
        texts={"en": "IMCOS, IMSIN", "sv": "[text/scalc/01/func_imcos.xhp#imcos_head not found]."},
    )
    kept, reasons = drop_untranslated([entry])
    assert kept == [] and reasons == {"sv:broken": 1}


def test_duplicates_collapse_to_the_first(fixture_aligned):
    kept, _ = drop_untranslated(fixture_aligned)
    unique = deduplicate(kept)
    assert len(unique) == 12
    ids = {e.id for e in unique}
    # "Click the Replace tab." occurs on two pages with the same translations
    assert "shared/01/06040000#par_id3150300" in ids
    assert "swriter/guide/auto_off#par_id3145596" not in ids
    assert len({tuple(sorted(e.texts.items())) for e in unique}) == len(unique)


# --------------------------------------------------------------------------- split


def _entry(i: int, **texts: str) -> AlignedEntry:
    return AlignedEntry(
        id=f"p/{i:05d}#x", page=f"p/{i:05d}", topic="shared", kind="paragraph", texts=texts
    )


def test_split_groups_entries_that_share_text_in_any_language():
    rng = random.Random(0)
    vocabulary = [f"word{k}" for k in range(150)]
    entries = [
        _entry(
            i,
            en=rng.choice(vocabulary),
            sv=rng.choice(vocabulary).upper() + f" {i}",
            de=rng.choice(vocabulary),
        )
        for i in range(120)
    ]
    # a chain across columns and case: 0.sv == 1.de (other case) and 1.en == 2.sv
    entries[0].texts["sv"] = "Delad Text"
    entries[1].texts["de"] = "delad text"
    entries[2].texts["sv"] = entries[1].texts["en"]
    assign_splits(entries)
    assert entries[0].split == entries[1].split == entries[2].split
    owner: dict[str, str] = {}
    for e in entries:
        for text in e.texts.values():
            key = text.casefold()
            assert owner.setdefault(key, e.split) == e.split, f"{text!r} is in both splits"


def test_split_fraction_and_determinism():
    entries = [_entry(i, en=f"text {i}", sv=f"text {i} sv") for i in range(5000)]
    stats = assign_splits(entries, test_fraction=0.2)
    assert stats == {"groups": 5000, "largest_group": 1}
    share = sum(e.split == "test" for e in entries) / len(entries)
    assert 0.18 < share < 0.22  # binomial sd is 0.0057
    again = [_entry(i, en=f"text {i}", sv=f"text {i} sv") for i in reversed(range(5000))]
    assign_splits(again)
    assert {e.id: e.split for e in again} == {e.id: e.split for e in entries}


# --------------------------------------------------------------------------- language check


def test_untranslated_reason_rules():
    assert untranslated_reason("Insert Table", "insert  table", "sv") == "identical"
    assert (
        untranslated_reason(
            "Click the Replace tab to edit the list.",
            "Click the Ersätt tab to edit the list.",
            "sv",
        )
        == "copied"
    )
    assert (
        untranslated_reason(
            "Opens the dialog.", "This is the dialog that you can use with it.", "sv"
        )
        == "english"
    )
    assert untranslated_reason("Insert Table", "Infoga tabell", "sv") is None
    assert untranslated_reason("Click the tab.", "Klicka på fliken och välj en rad.", "sv") is None
    # cell references are not the English word "a"
    assert untranslated_reason("=AVERAGE(A1:A50)", "=MEDEL(A1:A50) för data", "sv") is None


def test_check_language_and_trigram_model():
    assert check_language("Klicka på fliken och välj en rad.", "sv") == "pass"
    assert check_language("Click the tab and select a row.", "sv") == "fail"
    assert check_language("Infoga tabell", "sv") == "undecided"
    with pytest.raises(ValueError, match="unknown language"):
        check_language("x", "xx")
    model = CharTrigramModel().fit(
        {
            "sv": ["infoga tabell", "ta bort rad", "formatera celler"],
            "en": ["insert table", "delete row", "format cells"],
        }
    )
    assert model.predict("infoga rad") == "sv" and model.predict("insert row") == "en"
    with pytest.raises(ValueError, match="two labels"):
        CharTrigramModel().fit({"sv": ["x"]})
    with pytest.raises(ValueError, match="not fitted"):
        CharTrigramModel().predict("x")


# --------------------------------------------------------------------------- shipped corpus


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def rows(corpus) -> list[dict]:
    return corpus.to_list()


def test_shipped_counts_match_the_manifest(rows):
    manifest = corpus_manifest()
    counts = manifest["counts"]
    assert counts["kept"] == len(rows)
    assert 12_000 <= len(rows) <= 20_000
    assert 40_000 <= counts["aligned"] <= 80_000
    assert (
        counts["aligned"]
        - counts["dropped_broken"]
        - counts["dropped_untranslated"]
        - counts["dropped_duplicate"]
        == counts["kept"]
    )
    assert manifest["per_split"] == {
        s: sum(r["split"] == s for r in rows) for s in ("train", "test")
    }
    assert [p["package"] for p in manifest["packages"]] == [
        f"libreoffice-help-{'en-us' if lang == 'en' else lang}" for lang in LANGUAGES
    ]
    assert len({p["version"] for p in manifest["packages"]}) == 1


def test_corpus_ships_compressed_with_its_licence_notice():
    import tomllib
    from fnmatch import fnmatch
    from importlib import resources

    data = resources.files("transferlens.data")
    packed = data.joinpath("corpus.jsonl.gz").read_bytes()
    assert packed[:2] == b"\x1f\x8b" and 500_000 < len(packed) < 10_000_000  # a few MB, gzip
    notice = data.joinpath("CORPUS_LICENSE.txt").read_text(encoding="utf-8")
    assert "Mozilla Public License Version 2.0" in notice  # the full licence text
    for package in corpus_manifest()["packages"]:
        assert f"{package['package']} {package['version']}" in notice
    # the files are package data in the wheel, not only present in the source tree
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    shipped = [g for g in globs["transferlens"] if g.startswith("data/")]
    for name in ("corpus.jsonl.gz", "corpus_sources.json", "CORPUS_LICENSE.txt"):
        assert any(fnmatch(f"data/{name}", g) for g in shipped), name


def test_shipped_rows_are_well_formed(corpus, rows):
    assert corpus.column_names == ["id", "page", "topic", "kind", "split", *LANGUAGES]
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["topic"] for r in rows} == set(TOPICS)
    assert {r["kind"] for r in rows} <= set(KINDS)
    for r in rows:
        assert r["id"].split("#")[0] == r["page"] and r["topic"] == topic_for_page(r["page"])
        for lang in LANGUAGES:
            text = r[lang]
            assert text and text == text.strip()
            assert not re.search(r"%PRO?DUCTNAME|\$\[officename\]|class=\"|dir=\"auto\"", text)
    assert len({tuple(r[lang] for lang in LANGUAGES) for r in rows}) == len(rows)
    share = sum(r["split"] == "test" for r in rows) / len(rows)
    assert 0.17 < share < 0.23


@pytest.mark.slow
def test_shipped_rows_pass_the_cleaning_rules(rows):
    entries = [
        AlignedEntry(
            r["id"], r["page"], r["topic"], r["kind"], {lang: r[lang] for lang in LANGUAGES}
        )
        for r in rows
    ]
    kept, reasons = drop_untranslated(entries)
    assert reasons == {} and len(kept) == len(rows)
    assert len(deduplicate(kept)) == len(rows)


def test_shipped_split_is_disjoint_by_text_across_languages(rows):
    texts = {"train": set(), "test": set()}
    for r in rows:
        texts[r["split"]].update(" ".join(r[lang].casefold().split()) for lang in LANGUAGES)
    assert texts["train"] and texts["test"]
    assert not texts["train"] & texts["test"]


def test_shipped_split_is_reproducible(rows):
    # the build ran in another process (another str-hash seed): recomputing must agree
    entries = [
        AlignedEntry(
            r["id"], r["page"], r["topic"], r["kind"], {lang: r[lang] for lang in LANGUAGES}
        )
        for r in rows
    ]
    assign_splits(entries, corpus_manifest()["test_fraction"])
    assert [e.split for e in entries] == [r["split"] for r in rows]
    assert load_corpus(split="test")["id"] == [r["id"] for r in rows if r["split"] == "test"]


@pytest.mark.slow
def test_shipped_swedish_passes_the_language_check(rows):
    # every kept Swedish text, each judged by a model fitted on the other split
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    manifest = corpus_manifest()["language_check"]["sv"]
    passed = 0
    for fit_on, check_on in (("train", "test"), ("test", "train")):
        model = CharTrigramModel().fit(
            {lang: [r[lang] for r in by_split[fit_on]] for lang in ("en", "sv")}
        )
        swedish = language_check_rate([r["sv"] for r in by_split[check_on]], "sv", model)
        assert swedish["rate"] >= 0.95
        assert swedish["rate"] == pytest.approx(manifest[check_on]["rate"])
        passed += swedish["passed"]
        # the check can fail: the English side of the same paragraphs does not pass as Swedish
        english = language_check_rate([r["en"] for r in by_split[check_on]], "sv", model)
        assert english["rate"] < 0.05
    assert passed / len(rows) >= 0.95
    assert passed == manifest["all"]["passed"]


def test_filters(rows):
    wide = load_corpus(languages=["sv", "en"], split="test", topics=["scalc", "smath"], min_words=3)
    assert wide.column_names == ["id", "page", "topic", "kind", "split", "sv", "en"]
    expected = [
        r["id"]
        for r in rows
        if r["split"] == "test"
        and r["topic"] in ("scalc", "smath")
        and len(r["sv"].split()) >= 3
        and len(r["en"].split()) >= 3
    ]
    assert wide["id"] == expected and len(expected) > 100
    assert load_corpus(languages="fi", topics="sbasic").column_names[-1] == "fi"


def test_long_layout_is_the_wide_layout_melted():
    wide = load_corpus(languages=["en", "de"], split="train", topics=["schart"], min_words=2)
    long = load_corpus_long(languages=["en", "de"], split="train", topics=["schart"], min_words=2)
    assert long.column_names == ["id", "language", "text", "page", "topic", "kind", "split"]
    assert len(long) == 2 * len(wide)
    assert long["language"][:4] == ["en", "de", "en", "de"]
    assert long["text"][0::2] == wide["en"] and long["text"][1::2] == wide["de"]
    assert long["id"][0::2] == wide["id"] and set(long["split"]) == {"train"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"languages": ["sv", "xx"]}, r"unknown languages \['xx'\]; valid languages are \['en'"),
        ({"languages": []}, "languages is empty"),
        ({"languages": ["sv", "sv"]}, "repeats"),
        (
            {"topics": ["swriter", "calc"]},
            r"unknown topics \['calc'\]; valid topics are \['shared'",
        ),
        ({"split": "validation"}, "split must be 'train', 'test' or None"),
        ({"min_words": -1}, "min_words must be a non-negative int"),
        ({"min_words": 2.5}, "min_words must be a non-negative int"),
        ({"min_words": 10_000}, r"filter min_words=10000 .* removed all rows"),
        (
            {"topics": ["other"], "split": "test", "min_words": 30},
            r"filter min_words=30 .*after split='test', topics=\['other'\]",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_corpus(**kwargs)
    with pytest.raises(ValueError, match=message):
        load_corpus_long(**kwargs)
