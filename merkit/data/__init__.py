"""Datasets: the Sample data model, label protocols, loaders and the SynthME generator."""

from merkit.data.protocols import PROTOCOLS, Protocol, get_protocol
from merkit.data.registry import LoadResult, all_datasets, get_dataset, load_dataset
from merkit.data.sample import FrameSource, Sample

__all__ = [
    "PROTOCOLS", "Protocol", "get_protocol", "LoadResult", "all_datasets", "get_dataset",
    "load_dataset", "FrameSource", "Sample",
]
