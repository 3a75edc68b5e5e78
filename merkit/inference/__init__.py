"""Inference: trained models applied to new footage (model directories, the Predictor, spotting)."""

from merkit.inference.predictor import Predictor, SpottingSettings

__all__ = ["Predictor", "SpottingSettings"]
