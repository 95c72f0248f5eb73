"""Batch exports of what the engine computes online: similar items for every product."""

from .similar import EXPORT_FORMATS, ExportError, SimilarExport, SimilarExportReport, SimilarRules

__all__ = ["EXPORT_FORMATS", "ExportError", "SimilarExport", "SimilarExportReport", "SimilarRules"]
