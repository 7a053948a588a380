"""Drivers: free functions that fit any model and return one :class:`FitResult`."""

from ppl_models.infer.em import fit_em, kmeans_plus_plus
from ppl_models.infer.result import FitResult

__all__ = ["FitResult", "fit_em", "kmeans_plus_plus"]
