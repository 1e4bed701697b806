"""A small stop-word and character language check for the corpus languages.

Used to find help "translations" that are really English (left untranslated) and to verify
the shipped corpus. It is deliberately simple and transparent:

* stop words: a word counts as evidence for a language when it is one of that language's
  function words and not one of the other language's, and a word holding letters that English
  lacks (å, ä, ö, æ, ø, ü, ß) counts for the languages that use them;
* characters: short texts (headings, menu names) hold no function words, so the verification
  falls back to a character-trigram naive Bayes model fitted on held-out texts
  (:class:`CharTrigramModel`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "STOPWORDS",
    "SPECIAL_LETTERS",
    "language_evidence",
    "check_language",
    "untranslated_reason",
    "CharTrigramModel",
    "language_check_rate",
]

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        """about above after all also an and any are as at be been before below between
        both but by can cannot click could do does each either enter for from has have how if
        in into is it its may more must no not of on one only or other select should so some
        such than that the their them then there these they this those through to under until
        up use used using via was were what when where whether which while who will with
        within without would you your""".split()
    ),
    "sv": frozenset(
        """alla andra annan annat att av bara bort de dem den denna dessa det detta dig din
        dina ditt du där eller en ett efter finns från för genom har hur i in inte kan klicka
        man med mellan men måste när och om också på sedan sig sin sina sitt ska skall som så
        till under upp ut utan vad var vid vilka vilken vilket välj än är över""".split()
    ),
    "da": frozenset(
        """af alle andre at bort de dem den denne dens der dette det dig din dine disse du
        efter eller en er et findes for fra gennem har hvad hvilke hvilken hvis hvor hvordan
        i ikke ind kan klik kun man med mellem men når og også om op på sig sin sine sit skal
        som så til ud uden under ved vælg være""".split()
    ),
    "de": frozenset(
        """als am an auch auf aus bei bis da das dass dem den der des die dies diese diesem
        diesen dieser dieses durch ein eine einem einen einer eines es für im in ist kann
        können mit nach nicht nur oder sich sie sind so um und von vor wählen werden wenn wie
        wird zu zum zur über""".split()
    ),
    "fi": frozenset(
        """ei että ja jos joka jonka jotka kaikki kanssa kohdassa kuin kun mikä myös niin
        näin nämä on ovat se sen sitten sitä tai tämä tämän tässä valitse vain voi voit""".split()
    ),
}

SPECIAL_LETTERS: dict[str, str] = {
    "en": "",
    "sv": "åäö",
    "da": "æøå",
    "de": "äöüß",
    "fi": "äö",
}

_WORD = re.compile(r"\b[^\W\d_]+\b")
_SPACE = re.compile(r"\s+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def language_evidence(text: str, lang: str, against: str = "en") -> tuple[int, int]:
    """Count the words of ``text`` that speak for ``lang`` and for ``against``.

    A word speaks for a language when it is in that language's :data:`STOPWORDS` and not in
    the other's, or (for ``lang`` only) when it holds one of ``lang``'s special letters.

    Args:
        text: The text to check.
        lang: Candidate language code (a key of :data:`STOPWORDS`).
        against: The competing language code (default English).

    Returns:
        ``(for_lang, for_against)`` word counts.

    Raises:
        ValueError: If a language code is unknown.
    """
    for code in (lang, against):
        if code not in STOPWORDS:
            raise ValueError(f"unknown language {code!r}; expected one of {sorted(STOPWORDS)}")
    own, other = STOPWORDS[lang], STOPWORDS[against]
    letters = set(SPECIAL_LETTERS[lang]) - set(SPECIAL_LETTERS[against])
    for_lang = for_against = 0
    for word in _words(text):
        if word in own and word not in other:
            for_lang += 1
        elif word in other and word not in own:
            for_against += 1
        elif letters and not letters.isdisjoint(word):
            for_lang += 1
    return for_lang, for_against


def check_language(text: str, lang: str, against: str = "en") -> str:
    """Classify ``text`` as ``lang``, ``against`` or undecided by :func:`language_evidence`.

    Args:
        text: The text to check.
        lang: Expected language code.
        against: Competing language code (default English).

    Returns:
        ``"pass"`` if the evidence for ``lang`` outweighs that for ``against``, ``"fail"`` if
        the reverse, ``"undecided"`` on a tie (usually: no evidence either way).
    """
    for_lang, for_against = language_evidence(text, lang, against)
    if for_lang > for_against:
        return "pass"
    if for_against > for_lang:
        return "fail"
    return "undecided"


def _token_overlap(source: str, text: str) -> float:
    words = _words(text)
    if not words:
        return 1.0
    source_words = set(_words(source))
    return sum(w in source_words for w in words) / len(words)


def untranslated_reason(source: str, text: str, lang: str) -> str | None:
    """Why ``text`` (in ``lang``) is not a real translation of English ``source``, or None.

    Reasons:
        ``"identical"``: same text as the English, ignoring case and spacing (this covers
        names, formulas and code that are never translated);
        ``"copied"``: at least 3 words and at least 70 % of its words occur in the English
        source (English left in place with small edits);
        ``"english"``: the stop-word evidence for English is at least 2 words and exceeds
        that for ``lang``.

    Args:
        source: The English text.
        text: The text in ``lang``.
        lang: Language code of ``text``.

    Returns:
        The reason, or None if ``text`` looks translated.
    """
    if _SPACE.sub(" ", source.casefold()).strip() == _SPACE.sub(" ", text.casefold()).strip():
        return "identical"
    if lang == "en":
        return None
    if len(_words(text)) >= 3 and _token_overlap(source, text) >= 0.7:
        return "copied"
    for_lang, for_en = language_evidence(text, lang, "en")
    if for_en >= 2 and for_en > for_lang:
        return "english"
    return None


def _trigrams(text: str) -> list[str]:
    padded = " " + " ".join(text.casefold().split()) + " "
    return [padded[i : i + 3] for i in range(len(padded) - 2)]


class CharTrigramModel:
    """Multinomial naive Bayes over character trigrams with add-one smoothing.

    Attributes:
        labels_: The labels seen by :meth:`fit`, sorted.
    """

    def __init__(self) -> None:
        self.labels_: list[str] = []
        self._log_prob: dict[str, dict[str, float]] = {}
        self._unseen: dict[str, float] = {}

    def fit(self, texts_by_label: Mapping[str, Iterable[str]]) -> CharTrigramModel:
        """Fit on texts grouped by label (e.g. ``{"en": [...], "sv": [...]}``).

        Raises:
            ValueError: If fewer than two labels are given or a label has no text.
        """
        counts = {
            label: Counter(g for t in texts for g in _trigrams(t))
            for label, texts in texts_by_label.items()
        }
        if len(counts) < 2 or any(not c for c in counts.values()):
            raise ValueError("CharTrigramModel.fit needs at least two labels, each with some text")
        vocabulary = set().union(*counts.values())
        self.labels_ = sorted(counts)
        for label, counter in counts.items():
            total = sum(counter.values()) + len(vocabulary) + 1
            self._log_prob[label] = {g: math.log((n + 1) / total) for g, n in counter.items()}
            self._unseen[label] = math.log(1 / total)
        return self

    def predict(self, text: str) -> str:
        """The most likely label of ``text`` (ties go to the first label in sorted order)."""
        if not self.labels_:
            raise ValueError("CharTrigramModel is not fitted; call fit() first")
        grams = _trigrams(text)
        scores = {
            label: sum(self._log_prob[label].get(g, self._unseen[label]) for g in grams)
            for label in self.labels_
        }
        return max(self.labels_, key=lambda label: scores[label])


def language_check_rate(
    texts: Sequence[str], lang: str, model: CharTrigramModel, against: str = "en"
) -> dict[str, float]:
    """Share of ``texts`` that pass the language check for ``lang`` (vs ``against``).

    A text passes when its stop-word evidence (:func:`check_language`) favours ``lang``, or
    when that evidence is tied and ``model`` (fitted on other texts with labels ``lang`` and
    ``against``) predicts ``lang``.

    Args:
        texts: Texts expected to be in ``lang``.
        lang: Expected language code.
        model: A fitted :class:`CharTrigramModel` that knows ``lang`` and ``against``.
        against: Competing language code.

    Returns:
        ``n``, ``passed``, ``passed_stopwords`` (decided by stop words), ``passed_ngrams``
        (tied stop words, decided by the model), ``failed`` and ``rate`` (= passed / n).

    Raises:
        ValueError: If ``texts`` is empty or the model lacks a label.
    """
    if not texts:
        raise ValueError("language_check_rate needs at least one text")
    if not {lang, against} <= set(model.labels_):
        raise ValueError(f"model knows labels {model.labels_}, need {lang!r} and {against!r}")
    by_stopwords = by_ngrams = 0
    for text in texts:
        verdict = check_language(text, lang, against)
        if verdict == "pass":
            by_stopwords += 1
        elif verdict == "undecided" and model.predict(text) == lang:
            by_ngrams += 1
    passed = by_stopwords + by_ngrams
    return {
        "n": len(texts),
        "passed": passed,
        "passed_stopwords": by_stopwords,
        "passed_ngrams": by_ngrams,
        "failed": len(texts) - passed,
        "rate": passed / len(texts),
    }
