"""Pieces shared by capabilities that must not import each other: progress reporting, ranking
metrics, image alterations (evaluation's query views, training's augmentations)."""
