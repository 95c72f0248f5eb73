"""Reading a shopper's words: which facet values a query names, what it excludes, and the rest.

"red floral summer dress, not sleeveless" against a catalogue whose columns hold colours, article
types and seasons reads as ``base_colour=Red``, ``season=Summer``, ``article_type=Dresses`` (plural
and spelling variants match: "t-shirt" finds "Tshirts"), the negative phrase "sleeveless", and the
whole text for the sentence model.  Longer values win over shorter ones ("navy blue" is one colour,
not "blue"), and a phrase may name values in several columns (both are evidence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

MAX_VALUE_TOKENS = 4       # facet values longer than this are descriptions, not facets
MAX_FACET_VALUES = 500     # columns with more distinct values (ids, titles, prices) are not facets
NEGATORS = {"not", "no", "without", "except", "excluding", "non"}
STOPPERS = {"and", "but", "with", "in", "or", "for"}
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-case word tokens, each reduced to a crude singular (the same on both sides)."""
    return [_singular(t) for t in _TOKEN.findall(text.lower())]


def _singular(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes")):
        return word[:-2]
    return word[:-1]


RELATED_STRENGTH = 0.6     # "blue" also counts for "sky blue" and "navy blue", less than for "blue" itself


@dataclass(frozen=True)
class FacetMatch:
    facet: str   # the logical facet (a shop column, or a tag name)
    value: str   # the value as the catalogue spells it
    phrase: str  # the words of the query it was read from
    strength: float = 1.0  # 1 for the value named; RELATED_STRENGTH for values that contain it ("navy blue" for "blue")


@dataclass
class ParsedQuery:
    text: str                                        # what the sentence model reads (negated phrases removed)
    wanted: list[FacetMatch] = field(default_factory=list)
    unwanted: list[FacetMatch] = field(default_factory=list)
    negative_phrases: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"text": self.text, "wanted": {m.facet: m.value for m in self.wanted if m.strength == 1.0},
                "unwanted": {m.facet: m.value for m in self.unwanted if m.strength == 1.0}, "negative": self.negative_phrases}


class FacetVocabulary:
    """Facet values by their normalised spellings: "tshirt" -> [("article_type", "Tshirts")]."""

    def __init__(self, facets: dict[str, Iterable[str]]):
        self.by_key: dict[str, list[tuple[str, str]]] = {}
        self.aliases: dict[str, list[tuple[str, str]]] = {}  # "navy" -> Navy Blue: a word only one value of a facet has
        self.related: dict[tuple[str, str], list[str]] = {}   # (facet, "blue") -> ["Navy Blue", "Sky Blue"]
        self.longest = 1
        for facet, values in facets.items():
            words_of = {str(v): tokens(str(v)) for v in values}
            words_of = {v: w for v, w in words_of.items() if w and len(w) <= MAX_VALUE_TOKENS and not all(t.isdigit() for t in w)}
            for value, words in words_of.items():
                self.longest = max(self.longest, len(words))
                for key in {" ".join(words), "".join(words)}:
                    entries = self.by_key.setdefault(key, [])
                    if (facet, value) not in entries:
                        entries.append((facet, value))
            owners: dict[str, set[str]] = {}
            for value, words in words_of.items():
                for word in words:
                    owners.setdefault(word, set()).add(value)
            whole = {" ".join(w) for w in words_of.values()}
            for word, found in owners.items():
                if word in whole:
                    wider = sorted(v for v in found if len(words_of[v]) > 1)
                    if wider:
                        self.related[(facet, word)] = wider
                if len(found) == 1 and word not in whole and len(word) > 2 and not word.isdigit():
                    self.aliases.setdefault(word, []).append((facet, next(iter(found))))

    def __len__(self) -> int:
        return len(self.by_key)

    def find(self, words: list[str]) -> list[tuple[int, int, list[tuple[str, str]]]]:
        """Non-overlapping spans (start, end, [(facet, value)]) naming facet values, longest first."""
        found, taken = [], [False] * len(words)
        for size in range(min(self.longest, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                if any(taken[start:start + size]):
                    continue
                span = words[start:start + size]
                hits = self.by_key.get(" ".join(span)) or self.by_key.get("".join(span))
                if not hits and size == 1 and span[0] not in self.by_key:
                    hits = self.aliases.get(span[0])
                if hits:
                    found.append((start, start + size, hits))
                    taken[start:start + size] = [True] * size
        return sorted(found)

    def parse(self, text: str, negative: Iterable[str] = ()) -> ParsedQuery:
        """Split a query into wanted facet values, unwanted ones and negative phrases.

        A phrase after "not"/"no"/"without"/"except" (up to the next comma or connective), a word
        prefixed with "-", and every ``negative`` term are unwanted."""
        positive_parts: list[str] = []
        negatives = [n.strip() for n in negative if n and n.strip()]
        for clause in re.split(r"[,;.!?]", text):
            words = clause.split()
            i = 0
            while i < len(words):
                word = words[i]
                if word.startswith("-") and len(word) > 1:
                    negatives.append(word[1:])
                elif word.lower() in NEGATORS:
                    j = i + 1
                    while j < len(words) and words[j].lower() not in STOPPERS | NEGATORS:
                        j += 1
                    if j > i + 1:
                        negatives.append(" ".join(words[i + 1:j]))
                    i = j
                    continue
                else:
                    positive_parts.append(word)
                i += 1
        positive_text = " ".join(positive_parts)
        parsed = ParsedQuery(text=positive_text, negative_phrases=negatives)
        parsed.wanted = self._matches(positive_text)
        for phrase in negatives:
            parsed.unwanted.extend(self._matches(phrase))
        return parsed

    def _matches(self, text: str) -> list[FacetMatch]:
        words = tokens(text)
        found = []
        for a, b, hits in self.find(words):
            phrase = " ".join(words[a:b])
            for facet, value in hits:
                found.append(FacetMatch(facet, value, phrase))
                found.extend(FacetMatch(facet, wider, phrase, RELATED_STRENGTH) for wider in self.related.get((facet, phrase), []))
        return found
