"""The device path on a CPU-only machine: device choice, precision, determinism, placement, checkpoints.

No GPU is needed. What a GPU run depends on is checked with torch's ``meta`` device, which has no
data but the full device bookkeeping: a tensor left on the CPU next to a meta tensor makes the
op fail, and a dispatch mode records the device of every tensor every op of a step touches.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from typer.testing import CliRunner

from merkit.cli import app
from merkit.config import TrainConfig, config_from_dict, load_config
from merkit.data.protocols import get_protocol
from merkit.errors import ConfigError
from merkit.models import MERModel, create
from merkit.models.pretrained import read_checkpoint
from merkit.train import trainer
from merkit.train.device import (Precision, configure_determinism, place_views, resolve_device, resolve_precision,
                                 take_batch)
from merkit.train.executors import LocalExecutor
from merkit.train.loso import FoldInputs, loso_folds, run_fold, run_loso
from merkit.train.trainer import fit, predict_proba, train_step

META = torch.device("meta")
REFERENCE = Path(__file__).parent / "data" / "cpu_reference_predictions.csv"
# predictions.csv of this config on the session's SynthME set were written by merkit before the
# device change (first at commit b00cd01; re-written at cfea6aa, main just before the device branch
# was merged, whose fused STSTNet pass and one thread per fold change the last bits), on an AVX2
# CPU. On that kind of CPU the CPU path reproduces them bit for bit; on an AVX-512 one the vector
# kernels (oneDNN, OpenCV's DIS flow) round differently, and three epochs with val-split selection
# grow that to 2.2e-3 on a probability (measured 2026-12-02), so the file is matched to
# REFERENCE_ATOL. Whether two ways of running folds agree bit for bit is checked against a run
# made on the same machine (the local_reference fixture). It exercises augmentation (flip,
# shift), gradient clipping, val-split selection and Adam.
REFERENCE_ATOL = 5e-3
REFERENCE_CONFIG = {
    "model": {"name": "ststnet", "image_size": 16, "stream_widths": [2, 3, 4]},
    "views": {"flow": "dis"},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.005, "optimizer": "adam",
              "augment": {"hflip": True, "shift": 1}, "grad_clip": 1.0},
    "selection": {"policy": "val-split", "val_fraction": 0.34}, "seed": 7,
}


def reference_run(samples, run_dir, cache_dir, **kwargs) -> dict:
    return run_loso(samples, get_protocol("casme2-5"), config_from_dict(REFERENCE_CONFIG), run_dir,
                    cache_dir=cache_dir, **kwargs)


def assert_matches_reference(predictions: Path) -> None:
    """``predictions`` equal the stored reference: every column but the probabilities exactly,
    the probabilities to REFERENCE_ATOL; a predicted class may differ only where the reference's
    two most likely classes are closer than twice that (a near tie the rounding can turn)."""
    got, expected = pd.read_csv(predictions), pd.read_csv(REFERENCE)
    columns = [c for c in expected.columns if c.startswith("p_")]
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(got.drop(columns=columns + ["y_pred"]), expected.drop(columns=columns + ["y_pred"]))
    np.testing.assert_allclose(got[columns].to_numpy(), expected[columns].to_numpy(), rtol=0, atol=REFERENCE_ATOL)
    top_two = np.sort(expected[columns].to_numpy(), axis=1)[:, -2:]
    turned = (got.y_pred != expected.y_pred).to_numpy()
    assert np.all(top_two[turned, 1] - top_two[turned, 0] < 2 * REFERENCE_ATOL)


@pytest.fixture(scope="module")
def local_reference(synth_samples, tmp_path_factory) -> bytes:
    """predictions.csv of the reference config run in this process on this machine."""
    run = tmp_path_factory.mktemp("local-reference")
    reference_run(synth_samples, run / "run", run / "cache")
    return (run / "run" / "predictions.csv").read_bytes()


@pytest.mark.parametrize("deterministic", [False, True])
def test_cpu_predictions_match_those_before_the_device_change(synth_samples, tmp_path, deterministic, local_reference):
    config = config_from_dict({**REFERENCE_CONFIG, "train": {**REFERENCE_CONFIG["train"], "deterministic": deterministic}})
    try:
        metrics = run_loso(synth_samples, get_protocol("casme2-5"), config, tmp_path / "run", cache_dir=tmp_path / "cache")
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide: leave the other tests as they were
    assert_matches_reference(tmp_path / "run" / "predictions.csv")
    # torch's determinism flags change nothing on the CPU: bit for bit the run made here without them
    assert (tmp_path / "run" / "predictions.csv").read_bytes() == local_reference
    compute = metrics["compute"]
    assert compute["devices_used"] == ["cpu"] and compute["device"] == "auto" and compute["amp"] == "none"
    assert compute["executor"] == {"name": "local", "workers": 1, "start_method": "fork"}
    assert compute["determinism"]["requested"] is deterministic
    assert compute["determinism"]["use_deterministic_algorithms"] is deterministic
    if deterministic:
        assert compute["determinism"]["cudnn_deterministic"] and not compute["determinism"]["cudnn_benchmark"]
        assert compute["determinism"]["cublas_workspace_config"] in (":4096:8", ":16:8")


def test_folds_in_fresh_worker_processes_give_the_same_predictions(synth_samples, tmp_path, local_reference):
    """The start method used for folds on a GPU (CUDA cannot be used in a forked child)."""
    reference_run(synth_samples, tmp_path / "run", tmp_path / "cache", executor=LocalExecutor(2, start_method="spawn"))
    assert (tmp_path / "run" / "predictions.csv").read_bytes() == local_reference


def test_a_fold_without_views_reads_them_from_the_cache_and_builds_the_missing_ones(synth_samples, tmp_path):
    """What a Ray worker does: views from the shared cache, a view missing there built on the spot."""
    reference_run(synth_samples, tmp_path / "run", tmp_path / "cache")  # fills the cache
    expected = pd.read_csv(tmp_path / "run" / "folds" / "sub02" / "predictions.csv")
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == len(synth_samples)
    for entry in cached[::2]:
        entry.unlink()
    config = config_from_dict(REFERENCE_CONFIG)
    labels = torch.tensor([s.label for s in synth_samples])
    inputs = FoldInputs(synth_samples, labels, list(get_protocol("casme2-5").classes), config, tmp_path / "again",
                        views=None, cache_dir=tmp_path / "cache")
    result = run_fold((1, loso_folds(synth_samples)[1]), inputs)
    pd.testing.assert_frame_equal(result.predictions, expected, check_dtype=False)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == len(synth_samples)  # rebuilt and cached again
    assert inputs.views is not None and len(inputs.views["flow"]) == len(synth_samples)  # kept for the next fold


def test_a_run_resumes_under_another_device_setting(synth_samples, tmp_path):
    """Device and determinism say how a fold computes, not what: finished folds are reused."""
    protocol = get_protocol("casme2-5")
    cpu = config_from_dict({"model": {"name": "logreg", "image_size": 8}, "train": {"epochs": 1, "device": "cpu"}})
    run_loso(synth_samples, protocol, cpu, tmp_path / "run")
    models = sorted((tmp_path / "run" / "folds").glob("*/model.pt"))
    written = [m.stat().st_mtime_ns for m in models]  # a retrained fold rewrites its model
    auto = cpu.model_copy(update={"train": cpu.train.model_copy(update={"device": "auto", "deterministic": True})})
    try:
        metrics = run_loso(synth_samples, protocol, auto, tmp_path / "run")
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(models) == 4 and [m.stat().st_mtime_ns for m in models] == written
    assert (tmp_path / "run" / "log.txt").read_text().count(": reusing ") == 4 and metrics["compute"]["device"] == "auto"


def test_device_settings(monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")  # this machine has neither CUDA nor MPS
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="mps"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="train.device"):
        config_from_dict({"model": {"name": "logreg"}, "train": {"device": "cuda:x"}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")


def test_precision_settings(monkeypatch):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA or MPS device"):
        resolve_precision("fp16", torch.device("cpu"))
    bf16 = resolve_precision("bf16", torch.device("cpu"))
    assert bf16.grad_scaler() is None
    with bf16.autocast():
        assert torch.nn.Linear(3, 2)(torch.randn(4, 3)).dtype == torch.bfloat16
    with resolve_precision("none", torch.device("cpu")).autocast():
        assert torch.nn.Linear(3, 2)(torch.randn(4, 3)).dtype == torch.float32
    fp16 = resolve_precision("fp16", torch.device("cuda", 0))
    assert fp16.dtype == torch.float16 and fp16.device_type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ConfigError, match="V100 has no native bfloat16"):
        resolve_precision("bf16", torch.device("cuda", 0))


def test_determinism_flags_are_set_and_reported(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    assert configure_determinism(False)["cudnn_benchmark"] is True  # left alone
    try:
        record = configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert record == {"requested": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
                      "use_deterministic_algorithms": True, "cublas_workspace_config": ":4096:8"}


class DeviceRecorder(TorchDispatchMode):
    """Records the device of every tensor argument and result of every op run under it, except
    0-dim CPU tensors, which torch allows next to tensors of any device (Adam's step count)."""

    def __init__(self):
        super().__init__()
        self.devices: dict[str, set[str]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        flat, _ = torch.utils._pytree.tree_flatten((args, kwargs, result))
        for value in flat:
            if isinstance(value, torch.Tensor) and not (value.dim() == 0 and value.device.type == "cpu"):
                self.devices.setdefault(value.device.type, set()).add(str(func))
        return result


class StopAfterOneStep(Exception):
    pass


@pytest.mark.parametrize("model_name, model_config, view", [
    ("ststnet", {"image_size": 16, "stream_widths": [2, 3, 4]}, "flow"),
    ("logreg", {"image_size": 16, "view": "diff"}, "diff"),
])
def test_every_tensor_of_a_training_step_is_on_the_requested_device(monkeypatch, model_name, model_config, view):
    """fit moves the model, the views and the labels; augmentation and the optimizer follow."""
    torch.manual_seed(0)
    model = create(model_name, num_classes=3, **model_config)
    shape = next(s for s in model.input_spec if s.name == view).shape()
    views, labels = {view: torch.rand(6, *shape)}, torch.arange(6) % 3
    recorder, seen = DeviceRecorder(), {}

    def recorded_step(model, batch, target, optimizer, precision, scaler, grad_clip):
        with recorder:
            loss = train_step(model, batch, target, optimizer, precision, scaler, grad_clip)
        seen["batch"] = {v.device for v in batch.values()} | {target.device, loss.device}
        seen["model"] = {t.device for t in list(model.parameters()) + list(model.buffers())}
        seen["optimizer"] = {t.device for state in optimizer.state.values() for t in state.values() if t.dim() > 0}
        raise StopAfterOneStep  # the loss has no value on meta; one step shows the wiring

    monkeypatch.setattr(trainer, "train_step", recorded_step)
    config = TrainConfig(epochs=1, batch_size=3, lr=0.01, grad_clip=1.0,
                         augment={"hflip": True, "vflip": True, "shift": 1, "color_jitter": 0.2})
    with pytest.raises(StopAfterOneStep):
        fit(model, views, labels, config, seed=0, device=META)
    assert seen["batch"] == seen["model"] == seen["optimizer"] == {META}
    assert set(recorder.devices) == {"meta"}, {k: sorted(v)[:5] for k, v in recorder.devices.items() if k != "meta"}
    assert len(recorder.devices["meta"]) > 10  # forward, backward, clipping and Adam ops were seen


def test_prediction_computes_on_the_requested_device():
    torch.manual_seed(0)
    model = create("ststnet", num_classes=3, image_size=16, stream_widths=[2, 3, 4])
    views = {"flow": torch.rand(5, 3, 16, 16)}
    seen = {}

    def check(module, inputs):
        seen["inputs"] = {v.device for v in inputs[0].values()}
        seen["model"] = {p.device for p in module.parameters()}
        raise StopAfterOneStep

    model.register_forward_pre_hook(check)
    with pytest.raises(StopAfterOneStep):
        predict_proba(model, views, device=META)
    assert seen == {"inputs": {META}, "model": {META}}


def test_views_too_large_for_the_device_are_streamed_batch_by_batch():
    views = {"flow": torch.arange(24.0).reshape(6, 4), "au": torch.ones(6, 2)}
    assert place_views(views, torch.device("cpu")) is views
    resident = place_views(views, META)
    assert {v.device for v in resident.values()} == {META}
    streamed = place_views(views, META, max_bytes=10)
    assert {v.device for v in streamed.values()} == {torch.device("cpu")}
    batch = take_batch(streamed, torch.tensor([4, 1]), META)
    assert {v.device for v in batch.values()} == {META} and batch["flow"].shape == (2, 4)
    rows = take_batch(views, torch.tensor([4, 1]), torch.device("cpu"))
    assert torch.equal(rows["flow"], torch.tensor([[16.0, 17, 18, 19], [4, 5, 6, 7]]))


@pytest.mark.parametrize("config_name", ["logreg-cpu", "ststnet-megc2019-flow", "tsfmicro-cpu", "atm-gcn-cpu",
                                         "madv-net-cpu", "ms3d-resnet-cpu"])
def test_models_create_their_tensors_on_the_device_of_their_inputs(config_name):
    """Under ``torch.device("meta")`` every tensor made without ``device=`` is a meta tensor, and
    combining it with the CPU inputs fails: a model that makes a tensor on the default device
    instead of its input's device (a CUDA run would fail or copy every step) fails here."""
    config = load_config(config_name)
    torch.manual_seed(0)
    model = create(config.model_name, num_classes=5, **config.model_kwargs)
    views = {s.name: torch.rand(2, *(s.shape(model.num_aus) if s.name == "au" else s.shape())) for s in model.input_spec}
    target = torch.tensor([0, 3])
    with torch.device("meta"):
        loss = model.loss(model(views), target)
        loss.backward()
    assert loss.device.type == "cpu" and torch.isfinite(loss)


class RecordingScaler(torch.amp.GradScaler):
    calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


def test_fp16_training_goes_through_the_gradient_scaler(monkeypatch):
    """CPU autocast has float16; merkit refuses fp16 on a CPU (too slow to be useful), so the
    test lets it through to check fit's use of the scaler on this machine."""
    monkeypatch.setattr(trainer, "resolve_precision", lambda amp, device: Precision(amp, device.type))
    monkeypatch.setattr(Precision, "grad_scaler", lambda self: RecordingScaler("cpu"))
    RecordingScaler.calls = []
    torch.manual_seed(0)
    model = create("logreg", num_classes=2, image_size=4)
    views, labels = {"diff": torch.rand(8, 1, 4, 4)}, torch.arange(8) % 2
    history = fit(model, views, labels, TrainConfig(epochs=2, batch_size=4, amp="fp16", grad_clip=1.0), seed=0)
    assert RecordingScaler.calls == ["scale", "unscale_", "step", "update"] * 4  # 2 epochs x 2 batches
    assert history.amp == "fp16" and all(np.isfinite(history.train_loss))


class LinearOnX(MERModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    @classmethod
    def input_spec_from(cls, options):
        return ()

    def classifier_keys(self):
        return ["linear.weight", "linear.bias"]

    def forward(self, views):
        return self.linear(views["x"])


def test_a_scaled_step_whose_gradients_overflow_is_skipped_and_the_scale_lowered():
    torch.manual_seed(0)
    model = LinearOnX()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision, scaler = Precision("fp16", "cpu"), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    target = torch.tensor([0, 1, 0, 1])
    before = model.linear.weight.detach().clone()
    train_step(model, {"x": torch.randn(4, 3)}, target, optimizer, precision, scaler, grad_clip=None)
    assert not torch.equal(model.linear.weight, before) and scaler.get_scale() == 2.0 ** 16
    after_good_step = model.linear.weight.detach().clone()
    huge = {"x": torch.full((4, 3), 3.0e38)}  # inf in float16: the gradients overflow
    train_step(model, huge, target, optimizer, precision, scaler, grad_clip=None)
    assert torch.equal(model.linear.weight, after_good_step) and scaler.get_scale() == 2.0 ** 15


def test_a_checkpoint_written_on_a_gpu_loads_on_a_cpu_machine(monkeypatch, tmp_path, synth_samples):
    torch.manual_seed(0)
    model = create("logreg", num_classes=3, image_size=4)
    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as patch:  # storages tagged as CUDA memory, as torch.save does on a GPU
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": model.state_dict(), "model": {"name": "logreg"}, "classes": ["a", "b", "c"]}, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what a plain load does on this machine
    state, classes = read_checkpoint(path)
    assert classes == ["a", "b", "c"] and {v.device.type for v in state.values()} == {"cpu"}
    other = create("logreg", num_classes=3, image_size=4)
    other.load_state_dict(state)
    views = {"diff": torch.rand(3, 1, 4, 4)}
    np.testing.assert_array_equal(predict_proba(other, views), predict_proba(model, views))
    # and what merkit writes is device-neutral: every storage is tagged as CPU memory
    run_loso(synth_samples, get_protocol("casme2-5"),
             config_from_dict({"model": {"name": "logreg", "image_size": 8}, "train": {"epochs": 1}}), tmp_path / "run")
    locations = []
    torch.load(tmp_path / "run" / "folds" / "sub01" / "model.pt", weights_only=True,
               map_location=lambda storage, location: locations.append(location) or storage)
    assert locations and set(locations) == {"cpu"}


def test_cli_device_mistakes_get_a_message(synth_root, tmp_path):
    runner = CliRunner()
    base = ["train", "--dataset", "synthme", "--root", str(synth_root), "--model", "logreg", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")]
    for extra, message in [
        (["--device", "cuda"], "no CUDA GPU"),
        (["--device", "gpu"], "train.device"),
        (["--device", "cpu", "--amp", "fp16"], "amp fp16 needs a CUDA or MPS device"),
        (["--executor", "ray", "--fold-workers", "2"], "--fold-workers is an option of --executor local"),
        (["--gpus-per-fold", "1"], "options of --executor ray"),
        (["--executor", "dask"], "executor must be one of 'local', 'ray'; got 'dask'"),
    ]:
        result = runner.invoke(app, base + extra)
        output = " ".join(result.output.split())
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (extra, result.output)
        assert message in output, (extra, output)
