"""Automatic tagging: trained column taggers, text rules, hierarchy placement, zero-shot groups.

Tags are kept apart from the shop's own labels: they live in their own table, carry a
confidence and a source (``image``, ``colour``, ``text``, ``rule``, ``zero-shot``…), and are
filterable as ``tag.<name>`` columns.
"""

from ..search.filters import TAG_PREFIX
from .hierarchy import CategoryTree, HierarchyError
from .rules import RulesError, TextRules
from .tagger import (
    TaggerError,
    TaggerSet,
    TagPredictor,
    TrainOptions,
    load_taggers,
    train_taggers,
    untrained_taggers,
)

__all__ = ["CategoryTree", "HierarchyError", "RulesError", "TAG_PREFIX", "TagPredictor", "TaggerError", "TaggerSet", "TextRules",
           "TrainOptions", "load_taggers", "train_taggers", "untrained_taggers"]
