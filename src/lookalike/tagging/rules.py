"""Tags from text by rules: regular expressions per attribute value, from a YAML file.

Rules give a shop attributes it never labelled (pattern, sleeve, neckline, fit, material…)
from titles and descriptions on day one, and they are the zero-shot fallback for columns
without a trained tagger.  The default rules ship in ``tagging/data/rules.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

DEFAULT_CONFIDENCE = 0.8


class RulesError(ValueError):
    """The rules file is malformed; the message names the attribute and pattern."""


@dataclass(frozen=True)
class RuleHit:
    value: str
    confidence: float
    matched: str


@dataclass
class AttributeRules:
    name: str
    confidence: float
    patterns: list[tuple[str, re.Pattern[str]]]

    def match(self, text: str) -> RuleHit | None:
        """The value whose pattern matches earliest in ``text`` (ties: the value listed first)."""
        best: tuple[int, int, str, str] | None = None
        for order, (value, pattern) in enumerate(self.patterns):
            found = pattern.search(text)
            if found and (best is None or (found.start(), order) < best[:2]):
                best = (found.start(), order, value, found.group(0))
        return None if best is None else RuleHit(best[2], self.confidence, best[3])


class TextRules:
    """Attribute rules; ``apply(text)`` returns ``{attribute: RuleHit}`` for the attributes found."""

    def __init__(self, attributes: list[AttributeRules], source: str = "rules"):
        self.attributes = attributes
        self.source = source

    @classmethod
    def default(cls) -> TextRules:
        text = resources.files("lookalike.tagging").joinpath("data/rules.yaml").read_text(encoding="utf-8")
        return cls.from_yaml(text, source="default rules")

    @classmethod
    def from_file(cls, path: str | Path) -> TextRules:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"cannot read rules file {path}: {exc}") from exc
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "rules") -> TextRules:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RulesError(f"{source} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
            raise RulesError(f"{source}: expected a mapping with an 'attributes' key")
        attributes = []
        for name, spec in data["attributes"].items():
            if not isinstance(spec, dict) or not isinstance(spec.get("values"), dict) or not spec["values"]:
                raise RulesError(f"{source}: attribute {name!r} needs a non-empty 'values' mapping of value to regex list")
            confidence = spec.get("confidence", DEFAULT_CONFIDENCE)
            if not isinstance(confidence, (int, float)) or not 0 < confidence <= 1:
                raise RulesError(f"{source}: attribute {name!r} confidence must be a number in (0, 1], got {confidence!r}")
            patterns = []
            for value, regexes in spec["values"].items():
                if isinstance(regexes, str):
                    regexes = [regexes]
                if not isinstance(regexes, list) or not regexes:
                    raise RulesError(f"{source}: {name}.{value} needs a list of regular expressions")
                for regex in regexes:
                    try:
                        patterns.append((str(value), re.compile(str(regex), re.IGNORECASE)))
                    except re.error as exc:
                        raise RulesError(f"{source}: {name}.{value}: bad regular expression {regex!r}: {exc}") from exc
            attributes.append(AttributeRules(str(name), float(confidence), patterns))
        return cls(attributes, source)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def apply(self, text: str) -> dict[str, RuleHit]:
        if not text or not text.strip():
            return {}
        hits = {}
        for attribute in self.attributes:
            hit = attribute.match(text)
            if hit is not None:
                hits[attribute.name] = hit
        return hits
