"""Measuring search quality: suites of labelled data sets and tasks, run for engine configurations,
written as a Markdown + HTML report with plots and the raw numbers as JSON."""

from ..common.metrics import average_precision, bootstrap, classification_report, ranking_metrics
from .report import write_report
from .runner import Evaluation, evaluate
from .suite import EvalConfig, Suite, SuiteError, load_config, load_suite

__all__ = ["EvalConfig", "Evaluation", "Suite", "SuiteError", "average_precision", "bootstrap", "classification_report",
           "evaluate", "load_config", "load_suite", "ranking_metrics", "write_report"]
