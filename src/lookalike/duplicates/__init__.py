"""Duplicate listings: the same item listed under several product ids (see :mod:`.finder`)."""

from .compare import PairEvidence, compare_photos
from .finder import NOT_DUPLICATE, DuplicateError, DuplicateFinder, DuplicateGroup, DuplicateOptions, DuplicateReport, PairFinding, Survey, load_latest, save_latest
from .rule import DuplicateRule, RuleError

__all__ = ["NOT_DUPLICATE", "DuplicateError", "DuplicateFinder", "DuplicateGroup", "DuplicateOptions", "DuplicateReport", "DuplicateRule",
           "PairEvidence", "PairFinding", "RuleError", "Survey", "compare_photos", "load_latest", "save_latest"]
