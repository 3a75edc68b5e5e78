"""merkit: facial micro-expression recognition toolkit.

Data flows one way: dataset files -> loader -> :class:`~merkit.data.Sample` -> preprocess ->
views -> model -> logits -> LOSO runner -> predictions.csv -> metrics -> report.
"""

__version__ = "0.1.0"
