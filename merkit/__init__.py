"""merkit: facial micro-expression recognition toolkit.

Data flows one way: dataset files -> loader -> :class:`~merkit.data.Sample` -> preprocess ->
views -> model -> logits -> LOSO runner -> predictions.csv -> metrics -> report.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``merkit.Predictor`` is imported on first use (it pulls in torch and the models)."""
    if name == "Predictor":
        from merkit.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'merkit' has no attribute {name!r}")
