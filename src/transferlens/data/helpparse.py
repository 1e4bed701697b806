"""Parse, align and clean LibreOffice help pages into a parallel corpus.

These are the pure steps behind ``scripts/build_corpus.py``: they read the HTML help pages
that Debian's ``libreoffice-help-<lang>`` packages install, pull out every help paragraph
that carries a translation id (``par_id...``, ``hd_id...``), align paragraphs across
languages by ``(page, paragraph id)``, drop entries left untranslated, collapse duplicates
and assign a leakage-free train/test split. Nothing here touches the network or apt.

A page is named by its path below ``text/`` without the ``.html`` suffix, e.g.
``swriter/guide/auto_off``; its first path component is the help module, which becomes the
topic label.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser

from transferlens.data.langcheck import untranslated_reason

__all__ = [
    "LANGUAGES",
    "TOPICS",
    "KINDS",
    "HelpParagraph",
    "AlignedEntry",
    "parse_help_html",
    "clean_text",
    "topic_for_page",
    "align_paragraphs",
    "drop_untranslated",
    "deduplicate",
    "assign_splits",
    "split_of_key",
]

LANGUAGES: tuple[str, ...] = ("en", "sv", "da", "de", "fi")
TOPICS: tuple[str, ...] = (
    "shared",
    "swriter",
    "scalc",
    "simpress",
    "sdraw",
    "smath",
    "schart",
    "sbasic",
    "other",
)
KINDS: tuple[str, ...] = (
    "heading",
    "paragraph",
    "list_item",
    "table_head",
    "table_cell",
    "note",
    "code",
    "related",
    "caption",
)

# Paragraph ids that carry a translatable string: par_id..., hd_id..., lang_id..., bas_id...
# (bm_id... are index bookmarks, bm_module etc. are debug fields).
_ENTRY_ID = re.compile(r"^(?!bm_)[a-z]+_id[0-9A-Za-z_]+$")
_ENTRY_TAGS = frozenset({"p", "h", "h1", "h2", "h3", "h4", "h5", "h6"})
_HEADING_TAG = re.compile(r"^h[1-6]$")
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_SKIP_TAGS = frozenset({"script", "style", "noscript", "head"})
# Which case of an application switch applies on a page of each module.
_MODULE_APP = {
    "swriter": "WRITER",
    "scalc": "CALC",
    "simpress": "IMPRESS",
    "sdraw": "DRAW",
    "smath": "MATH",
    "schart": "CHART",
    "sbasic": "BASIC",
    "sdatabase": "BASE",
}
_LIST_CLASSES = frozenset({"listitem", "ol_item", "ul_item", "listitemintable", "ul_itemintable"})
_TABLE_CLASSES = frozenset(
    {"tablecontentintable", "tablecontentsintable", "tablecontent", "intable", "paragraphintable"}
)
_CODE_CLASSES = frozenset({"code", "codeintable", "smathcode", "example"})
_CAPTION_CLASSES = frozenset({"image", "imageintable"})
_NOTE_CLASSES = frozenset({"note", "tip", "warning"})

# Placeholders left in the help text. The last two patterns catch misspellings that occur in
# the shipped translations (``%PRODUCTNAM-``, ``%PRDUCTNAME``).
_NAME_PLACEHOLDER = re.compile(r"%PRO?DUCTNAME?\b|\$\[officename\]")
_VERSION_PLACEHOLDER = re.compile(r"%PRODUCTVERSION\b|\$\[officeversion\]")
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
_SPACE = re.compile(r"\s+")
# An embedded paragraph the help build could not resolve, e.g. "[text/scalc/01/x.xhp#y not found]."
_BROKEN_EMBED = re.compile(r"\[text/[^\]]*not found\]")


@dataclass(frozen=True)
class HelpParagraph:
    """One paragraph of one help page in one language.

    Attributes:
        page: Page path below ``text/`` without ``.html``, e.g. ``swriter/guide/auto_off``.
        pid: The paragraph's translation id, e.g. ``par_id3147833``.
        kind: One of :data:`KINDS`.
        text: The cleaned text.
    """

    page: str
    pid: str
    kind: str
    text: str


@dataclass
class AlignedEntry:
    """One paragraph aligned across languages.

    Attributes:
        id: Stable id ``"<page>#<pid>"``.
        page: Page path of the paragraph.
        topic: Help module label, one of :data:`TOPICS`.
        kind: Paragraph kind (from the English page), one of :data:`KINDS`.
        texts: Cleaned text per language code.
        split: ``"train"`` or ``"test"`` once :func:`assign_splits` has run.
    """

    id: str
    page: str
    topic: str
    kind: str
    texts: dict[str, str] = field(default_factory=dict)
    split: str = ""

    def to_record(self, languages: Sequence[str] = LANGUAGES) -> dict[str, str]:
        """Flat JSON-ready record with one column per language."""
        record = {
            "id": self.id,
            "page": self.page,
            "topic": self.topic,
            "kind": self.kind,
            "split": self.split,
        }
        record.update({lang: self.texts[lang] for lang in languages})
        return record


class _Node:
    __slots__ = ("tag", "attrs", "children")

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.children: list[_Node | str] = []

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    """A forgiving DOM builder on the standard-library HTML tokenizer."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: (v if v is not None else "") for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID_TAGS:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: (v if v is not None else "") for k, v in attrs})
        self._stack[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def clean_text(text: str, product_name: str = "LibreOffice", product_version: str = "7.4") -> str:
    """Normalise one paragraph's text.

    Replaces the product placeholders (``%PRODUCTNAME``, ``$[officename]`` and their
    misspellings; ``%PRODUCTVERSION``, ``$[officeversion]``), removes invisible characters
    (soft hyphen, zero-width spaces), applies Unicode NFC and collapses whitespace.

    Args:
        text: Raw text with markup already removed.
        product_name: Replacement for the product-name placeholders.
        product_version: Replacement for the version placeholders.

    Returns:
        The cleaned text (may be empty).
    """
    text = _NAME_PLACEHOLDER.sub(product_name, text)
    text = _VERSION_PLACEHOLDER.sub(product_version, text)
    text = unicodedata.normalize("NFC", text.translate(_INVISIBLE))
    return _SPACE.sub(" ", text).strip()


def topic_for_page(page: str) -> str:
    """Topic label of a page: its help module, or ``"other"`` for the small modules.

    Args:
        page: Page path below ``text/``, e.g. ``scalc/01/04060106``.

    Returns:
        One of :data:`TOPICS`.
    """
    module = page.split("/", 1)[0]
    return module if module in TOPICS else "other"


def _choose_case(switch: _Node, module: str) -> _Node | None:
    cases = [c for c in switch.children if isinstance(c, _Node)]
    if not cases:
        return None
    for case in cases:
        if case.attrs.get("id", "").startswith("default"):
            return case
    app = _MODULE_APP.get(module)
    for case in cases:
        if app is not None and app in case.classes:
            return case
    return cases[0]


def _inline_text(node: _Node, module: str, out: list[str]) -> None:
    for child in node.children:
        if isinstance(child, str):
            out.append(child)
        elif child.tag in _SKIP_TAGS or child.tag == "img":
            continue
        elif child.tag == "br":
            out.append(" ")
        elif "switchinline" in child.classes:
            case = _choose_case(child, module)
            if case is not None:
                _inline_text(case, module, out)
        else:
            _inline_text(child, module, out)


def _kind(node: _Node, in_note: bool, in_table: bool) -> str:
    classes = node.classes
    if _HEADING_TAG.match(node.tag):
        return "heading"
    if classes & _LIST_CLASSES:
        return "list_item"
    if "tableheadintable" in classes:
        return "table_head"
    if classes & _TABLE_CLASSES or in_table:
        return "table_cell"
    if classes & _CODE_CLASSES:
        return "code"
    if "related" in classes:
        return "related"
    if classes & _CAPTION_CLASSES:
        return "caption"
    if in_note:
        return "note"
    if node.attrs.get("id", "").startswith("hd_") and not classes - {"paragraph"}:
        return "heading"
    return "paragraph"


def _find_display_area(node: _Node) -> _Node | None:
    if node.attrs.get("id") == "DisplayArea":
        return node
    for child in node.children:
        if isinstance(child, _Node):
            found = _find_display_area(child)
            if found is not None:
                return found
    return None


def parse_help_html(html: str, page: str, product_name: str = "LibreOffice") -> list[HelpParagraph]:
    """Extract the translatable paragraphs of one help page.

    Only the page's content area (``div#DisplayArea``) is read when present. A paragraph is a
    ``p``/``h``/``h1``-``h6`` element whose id is a translation id. Inline application/system
    switches keep their default case, else the case for the page's module, else the first.
    Empty paragraphs are skipped; a paragraph id repeated on the page keeps its first text.

    Args:
        html: The page's HTML.
        page: Page path below ``text/`` without ``.html`` (its first part is the module).
        product_name: Replacement for ``%PRODUCTNAME`` and friends.

    Returns:
        The page's paragraphs in document order.
    """
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    root = _find_display_area(builder.root) or builder.root
    module = page.split("/", 1)[0]
    found: list[HelpParagraph] = []
    seen: set[str] = set()

    def walk(node: _Node, in_note: bool, in_table: bool) -> None:
        for child in node.children:
            if not isinstance(child, _Node) or child.tag in _SKIP_TAGS:
                continue
            pid = child.attrs.get("id", "")
            if child.tag in _ENTRY_TAGS and _ENTRY_ID.match(pid):
                parts: list[str] = []
                _inline_text(child, module, parts)
                text = clean_text("".join(parts), product_name)
                if text and pid not in seen:
                    seen.add(pid)
                    found.append(HelpParagraph(page, pid, _kind(child, in_note, in_table), text))
                continue
            walk(
                child,
                in_note or bool(child.classes & _NOTE_CLASSES),
                in_table or child.tag in ("td", "th"),
            )

    walk(root, False, False)
    return found


def align_paragraphs(
    pages: Mapping[str, Mapping[str, Sequence[HelpParagraph]]],
    languages: Sequence[str] = LANGUAGES,
) -> list[AlignedEntry]:
    """Align paragraphs present (non-empty) in every language by ``(page, pid)``.

    Args:
        pages: ``pages[lang][page]`` is the list of that page's paragraphs in ``lang``.
            The first language is the pivot: it fixes order and paragraph kind.
        languages: Languages to align; all must be keys of ``pages``.

    Returns:
        Aligned entries sorted by page, then in the pivot page's document order.
    """
    pivot, others = languages[0], languages[1:]
    entries: list[AlignedEntry] = []
    for page in sorted(pages[pivot]):
        by_lang = {}
        for lang in others:
            if page not in pages[lang]:
                break
            by_lang[lang] = {p.pid: p.text for p in pages[lang][page]}
        else:
            for par in pages[pivot][page]:
                if all(par.pid in by_lang[lang] for lang in others):
                    texts = {pivot: par.text} | {lang: by_lang[lang][par.pid] for lang in others}
                    entries.append(
                        AlignedEntry(
                            id=f"{page}#{par.pid}",
                            page=page,
                            topic=topic_for_page(page),
                            kind=par.kind,
                            texts=texts,
                        )
                    )
    return entries


def drop_untranslated(
    entries: Iterable[AlignedEntry], pivot: str = "en"
) -> tuple[list[AlignedEntry], dict[str, int]]:
    """Drop entries where any language's text is the pivot text, mostly English, or broken.

    An entry is broken when a text holds an embed reference that the help build could not
    resolve (``[text/... not found]``); its reason is ``"<lang>:broken"``.

    Args:
        entries: Aligned entries.
        pivot: The source language (English).

    Returns:
        ``(kept, reasons)`` where ``reasons`` counts the dropped entries by the first reason
        found, keyed ``"<lang>:<reason>"`` (reasons from
        :func:`transferlens.data.langcheck.untranslated_reason`).
    """
    kept: list[AlignedEntry] = []
    reasons: dict[str, int] = {}
    for entry in entries:
        source = entry.texts[pivot]
        reason = None
        for lang, text in entry.texts.items():
            why = "broken" if _BROKEN_EMBED.search(text) else None
            if why is None and lang != pivot:
                why = untranslated_reason(source, text, lang)
            if why is not None:
                reason = f"{lang}:{why}"
                break
        if reason is None:
            kept.append(entry)
        else:
            reasons[reason] = reasons.get(reason, 0) + 1
    return kept, dict(sorted(reasons.items()))


def deduplicate(entries: Iterable[AlignedEntry]) -> list[AlignedEntry]:
    """Collapse entries whose texts are identical in every language; the first one is kept."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    kept: list[AlignedEntry] = []
    for entry in entries:
        key = tuple(sorted(entry.texts.items()))
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    return kept


def split_of_key(key: str, test_fraction: float = 0.2, salt: str = "transferlens-corpus") -> str:
    """Deterministic split of a group key by SHA-256 (not Python's randomised ``hash``).

    Args:
        key: The group's key (its smallest entry id).
        test_fraction: Share of the hash space that goes to ``"test"``.
        salt: Namespace mixed into the hash.

    Returns:
        ``"test"`` or ``"train"``.
    """
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


def _text_key(text: str) -> str:
    return _SPACE.sub(" ", text.casefold()).strip()


def assign_splits(entries: Sequence[AlignedEntry], test_fraction: float = 0.2) -> dict[str, int]:
    """Assign ``entry.split`` in place so that no text crosses the train/test boundary.

    Entries sharing any text (case-insensitively, in any language, under any column) are
    joined into one group by union-find; each group goes wholly to train or test by
    :func:`split_of_key` of its smallest id.

    Args:
        entries: Entries to split (ids must be unique).
        test_fraction: Expected share of groups in ``"test"``.

    Returns:
        Statistics: ``groups`` (number of groups) and ``largest_group`` (entries in it).
    """
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, entry in enumerate(entries):
        for text in entry.texts.values():
            key = _text_key(text)
            if key in owner:
                a, b = find(i), find(owner[key])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(entries)):
        groups.setdefault(find(i), []).append(i)
    for members in groups.values():
        split = split_of_key(min(entries[i].id for i in members), test_fraction)
        for i in members:
            entries[i].split = split
    largest = max((len(m) for m in groups.values()), default=0)
    return {"groups": len(groups), "largest_group": largest}
