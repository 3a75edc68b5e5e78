"""Shared fixtures: one small SynthME folder per test session."""

from __future__ import annotations

import pytest
import torch

# every test runs torch on one thread: the models under test are tiny, and on a shared 2-core
# machine thread start-up and contention cost more than the maths (pytest -n 2 uses both cores)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """4 subjects x 5 clips (one per casme2-5 class) at 64 px, 100 fps: a tiny SynthME folder."""
    from merkit.data.synthetic import write_synthme

    root = tmp_path_factory.mktemp("synthme")
    return write_synthme(root / "data", subjects=4, clips_per_subject=5, preset="default", seed=3, size=64, fps=100)


@pytest.fixture(scope="session")
def synth_samples(synth_root):
    from merkit.data.protocols import apply_protocol
    from merkit.data.registry import load_dataset

    return apply_protocol(load_dataset("synthme", synth_root).samples, "casme2-5")
