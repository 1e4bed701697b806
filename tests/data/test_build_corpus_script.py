"""scripts/build_corpus.py, run offline end to end on .deb packages built from the help fixture.

The real build downloads Debian's ``libreoffice-help-*`` packages; here the same script reads
five small packages made with ``dpkg-deb --build`` from the committed fixture (Danish and
Finnish reuse the Swedish and German pages), so the download step finds them in place and the
rest (unpacking, parsing, cleaning, manifest, licence) runs as it does for a release.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "help"
FIXTURE_DIR = {"en": "en-US", "sv": "sv", "da": "sv", "de": "de", "fi": "de"}
VERSION = "1:0.1-1+test"

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or not Path("/usr/share/common-licenses/MPL-2.0").is_file(),
    reason="needs Debian's dpkg-deb and /usr/share/common-licenses/MPL-2.0 (as the build does)",
)


def _script():
    spec = importlib.util.spec_from_file_location("build_corpus", REPO / "scripts/build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_debs(script, folder: Path) -> None:
    """One .deb per language, laid out like Debian's (help under usr/share/libreoffice/help)."""
    folder.mkdir()
    for lang, package in script.PACKAGES.items():
        root = folder.parent / f"root-{lang}"
        shutil.copytree(
            FIXTURE / FIXTURE_DIR[lang], root / script.HELP_ROOT / script.HELP_DIRS[lang]
        )
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN" / "control").write_text(
            f"Package: {package}\nSource: libreoffice\nVersion: {VERSION}\nArchitecture: all\n"
            "Maintainer: transferlens tests <tests@example.org>\nDescription: help fixture\n"
        )
        script.run(
            [
                "dpkg-deb",
                "--root-owner-group",
                "--build",
                str(root),
                str(folder / f"{package}_{VERSION.replace(':', '%3a')}_all.deb"),
            ]
        )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    script = _script()
    work = tmp_path_factory.mktemp("build")
    _fake_debs(script, work / "debs")
    calls = []
    real_run = script.run

    def run(cmd, cwd=None):
        calls.append(cmd[0])
        assert cmd[0] != "apt-get", "the packages are in place: nothing to download"
        return real_run(cmd, cwd)

    script.run = run
    out = work / "out"
    script.main(["--work-dir", str(work), "--out-dir", str(out)])
    return {"script": script, "work": work, "out": out, "calls": calls}


def test_build_records_the_packages_it_used(built):
    manifest = json.loads((built["out"] / "corpus_sources.json").read_text(encoding="utf-8"))
    script = built["script"]
    assert [p["package"] for p in manifest["packages"]] == list(script.PACKAGES.values())
    for entry in manifest["packages"]:
        deb = built["work"] / "debs" / entry["file"]
        assert entry["version"] == VERSION and entry["source_package"] == "libreoffice"
        assert entry["sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert "dpkg-deb" in built["calls"] and "apt-get" not in built["calls"]
    notice = (built["out"] / "CORPUS_LICENSE.txt").read_text(encoding="utf-8")
    for package in script.PACKAGES.values():
        assert f"{package} {VERSION}" in notice
    assert "Mozilla Public License" in notice


def test_build_writes_the_cleaned_aligned_corpus(built):
    raw = (built["out"] / "corpus.jsonl.gz").read_bytes()
    rows = [json.loads(line) for line in gzip.decompress(raw).decode("utf-8").splitlines()]
    manifest = json.loads((built["out"] / "corpus_sources.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    assert counts["kept"] == len(rows) > 0
    assert counts["aligned"] == 15  # as in test_corpus.py: paragraphs present in every language
    assert counts["dropped_reasons"] == {"sv:copied": 1, "sv:identical": 1}
    assert counts["dropped_duplicate"] == 1
    assert manifest["per_split"] == dict(Counter(r["split"] for r in rows))
    assert all(
        set(r) == {"id", "page", "topic", "kind", "split", "en", "sv", "da", "de", "fi"}
        for r in rows
    )
    assert not any("%PRODUCTNAME" in r["en"] or "$[officename]" in r["sv"] for r in rows)


def test_build_is_reproducible(built, tmp_path):
    again = tmp_path / "again"
    built["script"].main(["--work-dir", str(built["work"]), "--out-dir", str(again)])
    for name in ("corpus.jsonl.gz", "corpus_sources.json", "CORPUS_LICENSE.txt"):
        assert (again / name).read_bytes() == (built["out"] / name).read_bytes(), name
