#!/usr/bin/env python
"""Build transferlens's bundled parallel corpus from Debian's LibreOffice help packages.

Run from the repository root on a Debian/Ubuntu machine (as root, or with apt able to
download)::

    python scripts/build_corpus.py

Steps: ``apt-get download`` the ``libreoffice-help-{en-us,sv,da,de,fi}`` packages (running
``apt-get update`` once if the first attempt fails), unpack them with ``dpkg-deb -x`` into
``scripts/_corpus_build/`` (nothing is installed), parse and align the help paragraphs, drop
untranslated entries, collapse duplicates, assign the train/test split, verify the languages,
and write into ``src/transferlens/data/``:

* ``corpus.jsonl.gz``  one JSON object per aligned paragraph (reproducible gzip bytes);
* ``corpus_sources.json``  package names/versions/checksums, counts per stage, topic, kind
  and split, and the language-check pass rates;
* ``CORPUS_LICENSE.txt``  the MPL-2.0 notice and licence text.

The parsing and cleaning steps live in :mod:`transferlens.data.helpparse` and
:mod:`transferlens.data.langcheck` so that the tests exercise them on a small fixture.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from transferlens.data.helpparse import (  # noqa: E402
    LANGUAGES,
    TOPICS,
    AlignedEntry,
    HelpParagraph,
    align_paragraphs,
    assign_splits,
    deduplicate,
    drop_untranslated,
    parse_help_html,
)
from transferlens.data.langcheck import CharTrigramModel, language_check_rate  # noqa: E402

LOG = logging.getLogger("build_corpus")
PACKAGES = {lang: f"libreoffice-help-{'en-us' if lang == 'en' else lang}" for lang in LANGUAGES}
HELP_DIRS = {lang: "en-US" if lang == "en" else lang for lang in LANGUAGES}
HELP_ROOT = Path("usr/share/libreoffice/help")
MPL_TEXT = Path("/usr/share/common-licenses/MPL-2.0")
CORPUS_FILE = "corpus.jsonl.gz"
SOURCES_FILE = "corpus_sources.json"
LICENSE_FILE = "CORPUS_LICENSE.txt"


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a command, fail loudly with its stderr."""
    LOG.info("$ %s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def download(debs: Path) -> dict[str, Path]:
    """``apt-get download`` every package into ``debs`` (reusing files already there)."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES.values() if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        try:
            run(["apt-get", "download", *missing], cwd=debs)
        except RuntimeError:
            run(["apt-get", "update"])
            run(["apt-get", "download", *missing], cwd=debs)
    found = {}
    for lang, package in PACKAGES.items():
        files = sorted(debs.glob(f"{package}_*.deb"))
        if len(files) != 1:
            raise RuntimeError(f"expected one {package} .deb in {debs}, found {len(files)}")
        found[lang] = files[0]
    return found


def describe(deb: Path) -> dict[str, str]:
    """Name, version, source and SHA-256 of a .deb."""
    fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Source"])
    info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
    return {
        "package": info["Package"],
        "version": info["Version"],
        "source_package": info.get("Source", info["Package"]).split()[0],
        "file": deb.name,
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
    }


def unpack(debs: dict[str, Path], target: Path) -> None:
    """``dpkg-deb -x`` every package into a fresh ``target`` folder."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for deb in debs.values():
        run(["dpkg-deb", "-x", str(deb), str(target)])


def parse_language(root: Path, lang: str) -> dict[str, list[HelpParagraph]]:
    """Parse every help page of one language: ``{page: paragraphs}``."""
    base = root / HELP_ROOT / HELP_DIRS[lang] / "text"
    if not base.is_dir():
        raise FileNotFoundError(f"no help pages for {lang!r} under {base}")
    pages = {}
    for path in sorted(base.rglob("*.html")):
        page = path.relative_to(base).with_suffix("").as_posix()
        pages[page] = parse_help_html(path.read_text(encoding="utf-8"), page)
    LOG.info("%s: %d pages, %d paragraphs", lang, len(pages), sum(map(len, pages.values())))
    return pages


def check_languages(entries: list[AlignedEntry]) -> dict[str, dict]:
    """Language-check pass rates per non-English language, on held-out texts.

    The character model for the test split is fitted on the train split and vice versa, so
    every kept text is checked by a model that never saw it.
    """
    rates = {}
    for lang in LANGUAGES[1:]:
        per_split = {}
        for fit_on, check_on in (("train", "test"), ("test", "train")):
            model = CharTrigramModel().fit(
                {
                    code: [e.texts[code] for e in entries if e.split == fit_on]
                    for code in ("en", lang)
                }
            )
            texts = [e.texts[lang] for e in entries if e.split == check_on]
            per_split[check_on] = language_check_rate(texts, lang, model)
        passed = sum(r["passed"] for r in per_split.values())
        total = sum(r["n"] for r in per_split.values())
        rates[lang] = {"all": {"n": total, "passed": passed, "rate": passed / total}, **per_split}
        LOG.info(
            "%s language check: %.2f%% of %d kept texts pass", lang, 100 * passed / total, total
        )
    return rates


def langid_check(entries: list[AlignedEntry]) -> dict[str, dict] | None:
    """Cross-check with py3langid (an independent identifier) restricted to {en, lang}."""
    try:
        from py3langid.langid import _load_identifier
    except ImportError:
        LOG.warning("py3langid is not importable; skipping the independent language check")
        return None
    identifier = _load_identifier(norm_probs=True)
    out = {}
    for lang in LANGUAGES[1:]:
        identifier.set_languages(["en", lang])
        hits = sum(identifier.classify(e.texts[lang])[0] == lang for e in entries)
        out[lang] = {"n": len(entries), "passed": hits, "rate": hits / len(entries)}
    identifier.set_languages(["en", "sv"])
    hits = sum(identifier.classify(e.texts["en"])[0] == "en" for e in entries)
    out["en_vs_sv"] = {"n": len(entries), "passed": hits, "rate": hits / len(entries)}
    return out


def write_corpus(entries: list[AlignedEntry], path: Path) -> None:
    """Gzip JSONL with a fixed header timestamp, so identical input gives identical bytes."""
    text = "".join(json.dumps(e.to_record(), ensure_ascii=False) + "\n" for e in entries)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    path.write_bytes(buffer.getvalue())


def write_license(sources: list[dict[str, str]], path: Path) -> None:
    """MPL-2.0 notice naming the packages, followed by the licence text."""
    if not MPL_TEXT.is_file():
        raise FileNotFoundError(f"{MPL_TEXT} not found; install Debian's base-files to get it")
    names = "\n".join(f"  {s['package']} {s['version']}" for s in sources)
    notice = f"""transferlens bundled corpus: licence notice
============================================

The file corpus.jsonl.gz in this folder holds text extracted from the LibreOffice help
(the help pages of the LibreOffice office suite, in English, Swedish, Danish, German and
Finnish), as shipped by these Debian binary packages (Debian source package "libreoffice"):

{names}

The LibreOffice help is Copyright 2000, 2010 Oracle and/or its affiliates, and Copyright (c)
2000, 2010 LibreOffice contributors and/or their affiliates. It is licensed under the Mozilla
Public License, v. 2.0 (full text below); some of it incorporates work licensed to the Apache
Software Foundation under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0).

  This Source Code Form is subject to the terms of the Mozilla Public License, v. 2.0. If a
  copy of the MPL was not distributed with this file, You can obtain one at
  http://mozilla.org/MPL/2.0/.

The source form of the help is available from the LibreOffice project (the "help"
repository, https://git.libreoffice.org/help) and from Debian's "libreoffice" source package.

Changes made by transferlens: paragraphs were extracted from the HTML pages, markup was
removed, product-name placeholders were replaced by "LibreOffice", paragraphs were aligned
across languages by page and paragraph id, untranslated and duplicate paragraphs were dropped,
and a train/test split label was added. See docs/corpus.md in the transferlens sources.

The rest of transferlens is licensed separately (Apache-2.0); this notice covers only the
corpus text.

--------------------------------------------------------------------------------

"""
    path.write_text(notice + MPL_TEXT.read_text(encoding="utf-8"), encoding="utf-8")


def tally(entries: list[AlignedEntry], key: str) -> dict[str, dict[str, int]]:
    """Counts of ``key`` per split and overall."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "test", "all"):
        chosen = [e for e in entries if split == "all" or e.split == split]
        counter = Counter(getattr(e, key) for e in chosen)
        out[split] = dict(sorted(counter.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    """Download, unpack, parse, clean and write the corpus files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "scripts" / "_corpus_build")
    parser.add_argument("--out-dir", type=Path, default=REPO / "src" / "transferlens" / "data")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    debs = download(args.work_dir / "debs")
    sources = [describe(debs[lang]) for lang in LANGUAGES]
    unpacked = args.work_dir / "unpacked"
    unpack(debs, unpacked)
    pages = {lang: parse_language(unpacked, lang) for lang in LANGUAGES}

    aligned = align_paragraphs(pages)
    translated, reasons = drop_untranslated(aligned)
    unique = deduplicate(translated)
    split_stats = assign_splits(unique, args.test_fraction)
    broken = sum(n for r, n in reasons.items() if r.endswith(":broken"))
    counts = {
        "paragraphs_per_language": {
            lang: sum(map(len, pages[lang].values())) for lang in LANGUAGES
        },
        "aligned": len(aligned),
        "dropped_broken": broken,
        "dropped_untranslated": len(aligned) - len(translated) - broken,
        "dropped_reasons": reasons,
        "dropped_duplicate": len(translated) - len(unique),
        "kept": len(unique),
        "split_groups": split_stats["groups"],
        "largest_split_group": split_stats["largest_group"],
    }
    LOG.info("counts: %s", json.dumps(counts))
    manifest = {
        "description": "LibreOffice help paragraphs aligned across languages",
        "languages": list(LANGUAGES),
        "topics": list(TOPICS),
        "packages": sources,
        "counts": counts,
        "per_topic": tally(unique, "topic"),
        "per_kind": tally(unique, "kind"),
        "per_split": dict(Counter(e.split for e in unique)),
        "test_fraction": args.test_fraction,
        "language_check": check_languages(unique),
        "language_check_py3langid": langid_check(unique),
        "build_command": "python scripts/build_corpus.py",
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_corpus(unique, args.out_dir / CORPUS_FILE)
    write_license(sources, args.out_dir / LICENSE_FILE)
    (args.out_dir / SOURCES_FILE).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    size = (args.out_dir / CORPUS_FILE).stat().st_size
    LOG.info("wrote %d entries to %s (%d bytes)", len(unique), args.out_dir / CORPUS_FILE, size)


if __name__ == "__main__":
    main()
