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


@pytest.fixture(scope="session")
def seamless_run(tmp_path_factory):
    """A SynthME set whose clips join seamlessly (4 subjects x 5 clips, 64 px, 100 fps, 40-60
    neutral frames before and after each expression) and a TSFmicro LOSO run on it (the CPU
    config: UF1 about 0.8 on this set). Built once for all pytest-xdist workers (a file lock guards it).

    Returns:
        (data root, run directory).
    """
    import fcntl
    import os

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's folder, the same for every worker
    root, run = shared / "seamless-synthme", shared / "seamless-tsfmicro"
    with open(shared / "seamless.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "predictions.csv").is_file():
            from merkit.config import load_config
            from merkit.data.protocols import apply_protocol, get_protocol
            from merkit.data.registry import load_dataset
            from merkit.data.synthetic import write_synthme
            from merkit.data.synthme.video import SEAMLESS
            from merkit.train.loso import run_loso

            write_synthme(root, subjects=4, clips_per_subject=5, seed=5, size=64, fps=100,
                          lead_in_range=(40, 60), lead_out_range=(40, 60), **SEAMLESS)
            protocol = get_protocol("casme2-5")
            samples = apply_protocol(load_dataset("synthme", root).samples, protocol)
            config = load_config("tsfmicro-cpu", {"dataset": {"name": "synthme", "root": str(root)}})
            run_loso(samples, protocol, config, run)
    return root, run
