"""The Ray executor on a real local Ray instance (2 CPUs): folds as Ray tasks give the local
predictions, resume works, failed tasks are retried, mistakes are not."""

import os
import sys
from pathlib import Path

import pytest
import ray

from merkit.errors import ConfigError
from merkit.train.executors import RayExecutor
from test_device import local_reference, reference_run  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the retry tests send functions of this module to the workers, which cannot import it
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def test_folds_as_ray_tasks_give_the_local_predictions_and_resume(ray_instance, synth_samples, tmp_path,
                                                                   local_reference):
    run = tmp_path / "run"
    executor = RayExecutor()
    metrics = reference_run(synth_samples, run, tmp_path / "cache", executor=executor)
    assert executor.parallel_folds == 2  # the test cluster's 2 CPUs, one per fold (the progress ETA's rounds)
    # the same seed gives the same predictions.csv as the local executor on this machine
    assert (run / "predictions.csv").read_bytes() == local_reference
    assert metrics["compute"]["executor"]["name"] == "ray" and metrics["compute"]["devices_used"] == ["cpu"]
    assert metrics["compute"]["executor"]["gpus_per_fold"] == 0  # a cluster without GPUs
    for fold in ("sub01", "sub02", "sub03", "sub04"):  # each task wrote its fold directory
        assert {p.name for p in (run / "folds" / fold).iterdir()} >= {"model.pt", "history.json", "fold.json",
                                                                      "predictions.csv"}
    assert "fold sub03" in (run / "log.txt").read_text()  # the workers log to the run's log.txt
    # resume: a finished fold is reused, not retrained; a missing one is trained again, the same
    reused_model = run / "folds" / "sub01" / "model.pt"
    written = reused_model.stat().st_mtime_ns  # a retrained fold rewrites its model
    retrained = (run / "folds" / "sub02" / "predictions.csv").read_bytes()
    (run / "folds" / "sub02" / "predictions.csv").unlink()
    reference_run(synth_samples, run, tmp_path / "cache", executor=RayExecutor())
    assert reused_model.stat().st_mtime_ns == written and "fold sub01: reusing" in (run / "log.txt").read_text()
    assert (run / "folds" / "sub02" / "predictions.csv").read_bytes() == retrained
    assert (run / "predictions.csv").read_bytes() == local_reference


def fail_on_first_attempt(marker: Path, shared: str) -> str:
    """Raises on the first attempt (an error) or, for markers named ``crash*``, kills its worker
    process (a lost task); returns the marker's name on the next attempt."""
    attempts = marker.with_suffix(".attempts")
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    if not marker.exists():
        marker.write_text("failed once")
        if marker.name.startswith("crash"):
            os._exit(1)
        raise RuntimeError(f"simulated failure of {marker.name}")
    return f"{marker.name} {shared}"


def config_mistake(marker: Path, shared: None) -> str:
    attempts = marker.with_suffix(".attempts")
    attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
    raise ConfigError(f"{marker.name}: a mistake a retry would only repeat")


def test_a_failed_task_is_retried_a_mistake_is_not_and_gpus_are_reserved_on_request(ray_instance, synth_samples,
                                                                                    tmp_path, monkeypatch):
    markers = [tmp_path / "task0", tmp_path / "crash1", tmp_path / "task2"]
    done = []
    results = RayExecutor(max_retries=2).map(fail_on_first_attempt, markers, "shared",
                                             lambda position, result: done.append(position))
    assert results == ["task0 shared", "crash1 shared", "task2 shared"] and sorted(done) == [0, 1, 2]
    assert [m.with_suffix(".attempts").read_text() for m in markers] == ["xx"] * 3
    with pytest.raises(ConfigError, match="a mistake a retry would only repeat"):
        RayExecutor(max_retries=2).map(config_mistake, [tmp_path / "mistake"])
    assert (tmp_path / "mistake.attempts").read_text() == "x"
    # settings the executor refuses before any task runs
    with pytest.raises(ConfigError, match="read views from the view cache"):
        reference_run(synth_samples, tmp_path / "run", None, executor=RayExecutor())
    assert RayExecutor().prepare("auto") == "cpu"  # no GPU reserved: auto computes on the CPU
    with pytest.raises(ConfigError, match="has no GPU"):
        RayExecutor().prepare("cuda")
    with pytest.raises(ConfigError, match="use --device cuda or auto"):
        RayExecutor().prepare("cuda:1")
    with pytest.raises(ConfigError, match="idle"):
        RayExecutor(gpus_per_fold=0.5).prepare("cpu")
    # folds at once (the progress ETA): the scarcer of CPUs and GPUs per fold
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    for options, slots in (({"gpus_per_fold": 0.5}, 4), ({"gpus_per_fold": 0.5, "cpus_per_fold": 6}, 2),
                           ({"gpus_per_fold": 0}, 16)):
        executor = RayExecutor(**options)
        assert executor.parallel_folds == 1  # not known before prepare()
        executor.prepare("auto")
        assert executor.parallel_folds == slots


def test_benchmark_and_nested_runs_schedule_their_folds_on_ray(ray_instance, synth_root, synth_samples, tmp_path):
    from merkit.benchmark import run_benchmark
    from merkit.config import config_from_dict
    from merkit.data.protocols import get_protocol
    from merkit.train.tune import run_nested

    for name, executor in (("local", None), ("ray", RayExecutor())):
        run_benchmark(["logreg"], ["synthme"], tmp_path / name, roots={"synthme": synth_root}, seeds=[0], epochs=2,
                      cache_dir=tmp_path / "cache", executor=executor)
    predictions = [(tmp_path / name / "synthme" / "logreg" / "seed0" / "predictions.csv").read_bytes()
                   for name in ("local", "ray")]
    assert predictions[0] == predictions[1]
    config = config_from_dict({"model": {"name": "logreg", "image_size": 16}, "train": {"epochs": 2, "lr": 0.01}})
    local, on_ray = (run_nested(synth_samples, get_protocol("casme2-5"), config, {"train.lr": [0.3, 0.01]},
                                tmp_path / f"nested-{name}", inner="kfold", inner_folds=2, executor=executor)
                     for name, executor in (("local", None), ("ray", RayExecutor())))
    assert local["selection"]["chosen"] == on_ray["selection"]["chosen"]
    assert (tmp_path / "nested-local" / "predictions.csv").read_bytes() == \
        (tmp_path / "nested-ray" / "predictions.csv").read_bytes()
