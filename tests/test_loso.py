import json
import platform
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from merkit.config import config_from_dict
from merkit.data.protocols import get_protocol
from merkit.errors import ConfigError, LeakageError
from merkit.train.loso import _validation_split, assert_disjoint, loso_folds, run_loso

LOGREG = {"model": {"name": "logreg", "image_size": 16}, "train": {"epochs": 3, "batch_size": 8, "lr": 0.01}}


def test_one_fold_per_subject_and_never_a_shared_subject(synth_samples):
    folds = loso_folds(synth_samples)
    assert [f.name for f in folds] == ["sub01", "sub02", "sub03", "sub04"]
    for fold in folds:
        test_subjects = {synth_samples[i].subject for i in fold.test_index}
        train_subjects = {synth_samples[i].subject for i in fold.train_index}
        assert test_subjects == {fold.name} and fold.name not in train_subjects
        assert len(fold.train_index) + len(fold.test_index) == len(synth_samples)


def test_subject_ids_of_different_datasets_are_different_folds(synth_samples):
    other = [replace(s, dataset="samm") for s in synth_samples[:5]]
    folds = loso_folds(list(synth_samples[:5]) + other)
    assert [f.name for f in folds] == ["samm-sub01", "synthme-sub01"]


def test_leak_is_refused(synth_samples):
    with pytest.raises(LeakageError, match="sub01"):
        assert_disjoint(synth_samples[:3], synth_samples[2:4])


def test_validation_split_comes_from_training_subjects_only(synth_samples):
    fold = loso_folds(synth_samples)[0]
    fit, val = _validation_split(synth_samples, fold.train_index, 0.34, seed=0)
    test_subjects = {synth_samples[i].subject for i in fold.test_index}
    val_subjects = {synth_samples[i].subject for i in val}
    fit_subjects = {synth_samples[i].subject for i in fit}
    assert val_subjects and fit_subjects and not (val_subjects & test_subjects) and not (val_subjects & fit_subjects)
    assert sorted(np.concatenate([fit, val])) == sorted(fold.train_index)


def test_run_directory_contract_and_resume(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    metrics = run_loso(synth_samples, protocol, config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "predictions.csv", "metrics.json", "confusion_matrix.png", "log.txt"):
        assert (run / name).is_file(), name
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject": str})
    assert list(predictions.columns[:6]) == ["sample_id", "dataset", "subject", "fold", "y_true", "y_pred"]
    assert [c for c in predictions.columns if c.startswith("p_")] == [f"p_{c}" for c in protocol.classes]
    assert len(predictions) == len(synth_samples) and predictions.sample_id.is_unique
    assert (predictions.subject == predictions.fold).all()
    np.testing.assert_allclose(predictions.filter(like="p_").sum(axis=1), 1, atol=1e-5)
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("acc", "uf1", "uar", "macro_f1", "per_class", "per_dataset", "per_subject_mean", "n_folds", "n_samples", "selection"):
        assert key in saved
    assert saved["selection"]["policy"] == "last" and saved["n_folds"] == 4
    log = (run / "log.txt").read_text()  # it used to say "best epoch 3" while history.json says none
    assert "fold sub01: 5 test samples" in log and "model of the last epoch (3)" in log and "best epoch" not in log
    for fold in ("sub01", "sub02", "sub03", "sub04"):
        assert (run / "folds" / fold / "model.pt").is_file()
    # resume: a completed fold is reused, not retrained (its files stay as they were)
    reused = run / "folds" / "sub01"
    before = {name: ((reused / name).read_bytes(), (reused / name).stat().st_mtime_ns) for name in ("predictions.csv", "model.pt")}
    written = (run / "predictions.csv").read_bytes()
    (run / "folds" / "sub02" / "predictions.csv").unlink()
    again = run_loso(synth_samples, protocol, config, run)
    assert {name: ((reused / name).read_bytes(), (reused / name).stat().st_mtime_ns) for name in before} == before
    assert (run / "folds" / "sub02" / "predictions.csv").is_file()
    # the resumed run writes the same predictions, number formatting included, and the same metrics
    assert (run / "predictions.csv").read_bytes() == written
    assert again == metrics
    # a finished fold of another config (or an older run that records none) is never reused
    other = config_from_dict({**LOGREG, "train": {**LOGREG["train"], "epochs": LOGREG["train"]["epochs"] + 1}})
    with pytest.raises(ConfigError, match="folds/sub01 holds a finished fold of another run"):
        run_loso(synth_samples, protocol, other, run)
    assert "epochs: 3" in (run / "config.yaml").read_text()  # refused before anything was rewritten
    with pytest.raises(ConfigError, match="folds/sub01 holds a finished fold"):  # sub01's training set changed
        run_loso([s for s in synth_samples if s.sample_id != synth_samples[-1].sample_id], protocol, config, run)
    (run / "folds" / "sub01" / "fold.json").unlink()
    with pytest.raises(ConfigError, match="records none"):
        run_loso(synth_samples, protocol, config, run)


def test_same_seed_same_metrics(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    first = run_loso(synth_samples, protocol, config, tmp_path / "a")
    second = run_loso(synth_samples, protocol, config, tmp_path / "b")
    assert first["uf1"] == second["uf1"] and first["acc"] == second["acc"]
    a = pd.read_csv(tmp_path / "a" / "predictions.csv")
    b = pd.read_csv(tmp_path / "b" / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)


def test_members_average_the_single_models_of_consecutive_run_seeds(synth_samples, tmp_path):
    from merkit.inference import Predictor
    from merkit.train.loso import member_seeds

    assert member_seeds(7, 0, 1) == [7] and member_seeds(1007, 1, 2) == [2007, 3007]
    fold_seeds = [seed for run_seed in range(4) for n in range(5) for seed in member_seeds(run_seed * 1000 + n, run_seed, 3)]
    assert len(set(fold_seeds)) == len(fold_seeds)  # no two runs or folds share a member
    protocol = get_protocol("casme2-5")
    for seed in (2, 3):
        run_loso(synth_samples, protocol, config_from_dict({**LOGREG, "seed": seed}), tmp_path / f"seed{seed}")
    config = config_from_dict({**LOGREG, "seed": 1, "train": {**LOGREG["train"], "members": 2}})
    run_loso(synth_samples, protocol, config, tmp_path / "members")

    def probabilities(name):
        return pd.read_csv(tmp_path / name / "predictions.csv").sort_values("sample_id").set_index("sample_id").filter(like="p_")

    two, three, members = probabilities("seed2"), probabilities("seed3"), probabilities("members")
    assert np.abs(two.to_numpy() - three.to_numpy()).max() > 1e-3  # the members differ
    np.testing.assert_allclose(members.to_numpy(), (two.to_numpy() + three.to_numpy()) / 2, atol=2e-6)
    fold = tmp_path / "members" / "folds" / "sub01"
    history = json.loads((fold / "history.json").read_text())
    assert len(history["members"]) == 2 and history["train_loss"] == history["members"][0]["train_loss"]
    predictor = Predictor.from_dir(fold)
    assert len(predictor.models) == 2
    sample = next(s for s in synth_samples if s.subject == "sub01")
    np.testing.assert_allclose(predictor.predict_views(predictor.views_of(sample))[0], members.loc[sample.sample_id],
                               atol=1e-5)


def test_val_split_selection_is_recorded(synth_samples, tmp_path):
    config = config_from_dict({**LOGREG, "selection": {"policy": "val-split", "val_fraction": 0.34}})
    metrics = run_loso(synth_samples, get_protocol("casme2-5"), config, tmp_path / "run")
    assert metrics["selection"]["policy"] == "val-split"
    history = json.loads((tmp_path / "run" / "folds" / "sub01" / "history.json").read_text())
    assert len(history["val_uf1"]) == 3 and 1 <= history["best_epoch"] <= 3
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "fold sub01: 5 test samples, acc" in log and f"model of epoch {history['best_epoch']} (best validation UF1)" in log


@pytest.fixture(scope="module")
def leak_check_samples(tmp_path_factory):
    from merkit.data.registry import load_dataset
    from merkit.data.protocols import apply_protocol
    from merkit.data.synthetic import write_synthme

    root = write_synthme(tmp_path_factory.mktemp("leak") / "data", subjects=5, clips_per_subject=10, seed=3, size=64, fps=100)
    return apply_protocol(load_dataset("synthme", root).samples, "casme2-5")


def test_shuffled_training_labels_fall_to_chance(leak_check_samples, tmp_path):
    """Guards against leaks: with permuted training labels nothing but chance may remain."""
    protocol = get_protocol("casme2-5")

    def uf1(shuffle: bool, seed: int) -> float:
        config = config_from_dict({
            "model": {"name": "logreg", "image_size": 16, "view": "flow"}, "views": {"flow": "dis"},
            "train": {"epochs": 30, "batch_size": 8, "lr": 0.01}, "shuffle_labels": shuffle, "seed": seed})
        return run_loso(leak_check_samples, protocol, config, tmp_path / f"{shuffle}-{seed}", cache_dir=tmp_path / "cache")["uf1"]

    real = uf1(False, 0)
    shuffled = [uf1(True, seed) for seed in range(3)]
    assert real >= 0.6  # measured 0.745
    assert np.mean(shuffled) < 0.35  # chance is 0.2 for five balanced classes; measured 0.19-0.32


def test_folds_in_parallel_give_the_same_predictions(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    run_loso(synth_samples, protocol, config, tmp_path / "serial")
    run_loso(synth_samples, protocol, config, tmp_path / "parallel", fold_workers=2)
    serial = pd.read_csv(tmp_path / "serial" / "predictions.csv")
    parallel = pd.read_csv(tmp_path / "parallel" / "predictions.csv")
    pd.testing.assert_frame_equal(serial, parallel)


def test_leave_one_sample_out_folds_hold_out_one_clip_each(synth_samples):
    from merkit.train.loso import make_folds, sample_folds

    folds = sample_folds(synth_samples)
    assert len(folds) == len(synth_samples)
    assert [f.name for f in make_folds(synth_samples, "loso")] == [f.name for f in loso_folds(synth_samples)]
    held_out = sorted(int(f.test_index[0]) for f in folds)
    assert held_out == list(range(len(synth_samples)))
    for fold in folds:
        assert not fold.subject_independent and len(fold.test_index) == 1
        test = synth_samples[int(fold.test_index[0])]
        assert fold.test_group == test.sample_id and fold.name == f"{test.subject}-{test.clip_id}"
        train_ids = {synth_samples[i].sample_id for i in fold.train_index}
        assert test.sample_id not in train_ids and len(train_ids) == len(synth_samples) - 1
        assert test.subject in {synth_samples[i].subject for i in fold.train_index}  # not subject-independent
    with pytest.raises(LeakageError, match="more than once"):
        sample_folds(list(synth_samples[:3]) + [synth_samples[0]])
    with pytest.raises(ConfigError, match="fold scheme must be one of"):
        make_folds(synth_samples, "leave-one-out")


def test_leave_one_sample_out_runs_and_says_it_is_not_subject_independent(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    samples = synth_samples[:10]  # two subjects
    metrics = run_loso(samples, protocol, config_from_dict({**LOGREG, "folds": "leave-one-sample-out"}), tmp_path / "loo")
    assert metrics["folds"]["scheme"] == "leave-one-sample-out" and metrics["folds"]["subject_independent"] is False
    assert "NOT subject-independent" in metrics["folds"]["description"]
    saved = json.loads((tmp_path / "loo" / "metrics.json").read_text())
    assert saved["folds"] == metrics["folds"] and saved["n_folds"] == 10
    predictions = pd.read_csv(tmp_path / "loo" / "predictions.csv", dtype={"subject": str})
    assert predictions.fold.is_unique and len(predictions) == 10
    default = run_loso(samples, protocol, config_from_dict(LOGREG), tmp_path / "loso")
    assert default["folds"] == {"scheme": "loso", "subject_independent": True,
                                "description": default["folds"]["description"]} and default["n_folds"] == 2


def test_a_damaged_finished_fold_is_trained_again_not_reused(synth_samples, tmp_path):
    """A truncated fold predictions file used to be reused: the result covered 18 of 20 samples."""
    protocol, config, run = get_protocol("casme2-5"), config_from_dict(LOGREG), tmp_path / "run"
    metrics = run_loso(synth_samples, protocol, config, run)
    fold_file = run / "folds" / "sub01" / "predictions.csv"
    fold_file.write_text("".join(fold_file.read_text().splitlines(keepends=True)[:-2]))  # 3 of 5 rows left
    older = run / "folds" / "sub02" / "fold.json"  # a fold of an older run records no checksum
    older.write_text(json.dumps({k: v for k, v in json.loads(older.read_text()).items() if k != "predictions_sha1"}))
    again = run_loso(synth_samples, protocol, config, run)
    assert again["n_samples"] == len(synth_samples) and again == metrics
    assert len(pd.read_csv(fold_file)) == 5
    log = (run / "log.txt").read_text()
    assert "fold sub01: predictions.csv differs from the file written when the fold finished" in log
    assert "fold sub02: its fold.json records no checksum" in log
    # the progress lines tell the two retrained folds from the reused ones
    assert "fold 1/4 done (sub01)" in log and "reused (sub02)" not in log and "reused (sub03)" in log


def test_evaluate_twice_changes_nothing_training_wrote(synth_samples, tmp_path):
    """`merkit evaluate` used to rewrite metrics.json without skipped/apex_policy and relabel the model."""
    from merkit.eval.metrics import evaluate_run

    from merkit.data.repairs import Fix

    run = tmp_path / "run"
    fix = Fix("CASME2.xlsx", 3, "synthme/sub01/EP01", "apex", 0, None, "apex-zero", "apex 0 read as missing")
    metrics = run_loso(synth_samples, get_protocol("casme2-5"), config_from_dict(LOGREG), run,
                       skipped=["CASME2.xlsx, row 7: bad onset"], fixes=[fix])
    files = ("metrics.json", "confusion_matrix.png", "predictions.csv")
    written = {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files}
    assert metrics["label"] == "logreg LOSO (casme2-5)" and metrics["apex_policy"] == "annotated-or-middle"
    assert metrics["skipped"] == ["CASME2.xlsx, row 7: bad onset"] and metrics["fixes"] == [fix.as_dict()]
    assert json.loads((run / "metrics.json").read_text()) == metrics
    for _ in range(2):
        assert evaluate_run(run) == metrics
        assert {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files} == written
    (run / "metrics.json").unlink()
    (run / "confusion_matrix.png").unlink()
    assert evaluate_run(run) == metrics
    assert {name: (run / name).read_bytes() for name in files} == {name: data for name, (data, _) in written.items()}
    log = (run / "log.txt").read_text()
    assert "skipped: CASME2.xlsx, row 7: bad onset" in log and f"annotation fix: {fix}" in log


def test_skip_bad_skips_an_unreadable_frame_and_records_it(synth_root, tmp_path):
    """A JPEG truncated to half its size used to be decoded half grey and trained on."""
    import shutil

    from merkit.data.protocols import apply_protocol
    from merkit.data.registry import load_dataset
    from merkit.errors import PreprocessError

    root = shutil.copytree(synth_root, tmp_path / "data")
    samples = apply_protocol(load_dataset("synthme", root).samples, "casme2-5")
    broken = samples[3]
    frame = broken.frames.paths[broken.frames.position(broken.onset_frame)]
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])
    with pytest.raises(PreprocessError, match=f"{broken.sample_id}.*{frame.name}: truncated JPEG"):
        run_loso(samples, get_protocol("casme2-5"), config_from_dict(LOGREG), tmp_path / "strict")
    metrics = run_loso(samples, get_protocol("casme2-5"), config_from_dict(LOGREG), tmp_path / "run", on_error="skip")
    assert metrics["n_samples"] == len(samples) - 1
    assert len(metrics["skipped"]) == 1 and broken.sample_id in metrics["skipped"][0] and frame.name in metrics["skipped"][0]
    assert f"skipped: {metrics['skipped'][0]}" in (tmp_path / "run" / "log.txt").read_text()


def test_folds_whose_test_subject_was_pre_trained_on_are_refused_or_labelled(synth_samples, tmp_path):
    from merkit.errors import LeakageError
    from merkit.train.loso import train_all

    protocol, config = get_protocol("casme2-5"), config_from_dict(LOGREG)
    first_two = [s for s in synth_samples if s.subject in ("sub01", "sub02")]
    checkpoint = train_all(first_two, protocol, config, tmp_path / "stage1")
    fine_tune = config.model_copy(update={"pretrained": str(checkpoint)})
    with pytest.raises(LeakageError, match="2 of this run's test subjects .synthme/sub01, synthme/sub02"):
        run_loso(synth_samples, protocol, fine_tune, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    leaking = run_loso(synth_samples, protocol, fine_tune, tmp_path / "leaking", allow_pretrain_overlap=True)
    assert leaking["pretrain"] == {"checkpoint": str(checkpoint), "subjects_seen": 2,
                                   "overlap": ["synthme/sub01", "synthme/sub02"], "leaking": True}
    others = [s for s in synth_samples if s.subject in ("sub03", "sub04")]
    clean = run_loso(others, protocol, fine_tune, tmp_path / "clean")
    assert clean["pretrain"]["overlap"] == [] and not clean["pretrain"]["leaking"]
    # a fold checkpoint records its training subjects too: starting from sub01's fold model leaks sub02..sub04
    fold_model = tmp_path / "clean" / "folds" / "sub03" / "model.pt"
    with pytest.raises(LeakageError, match="synthme/sub04"):
        run_loso(others, protocol, config.model_copy(update={"pretrained": str(fold_model)}), tmp_path / "again")


@pytest.mark.parametrize("fold_workers", [1, 2])
def test_progress_lines_in_log_txt(synth_samples, tmp_path, fold_workers):
    protocol = get_protocol("casme2-5")
    run_loso(synth_samples, protocol, config_from_dict(LOGREG), tmp_path / "run", fold_workers=fold_workers)
    lines = [line for line in (tmp_path / "run" / "log.txt").read_text().splitlines() if " done (" in line]
    assert [line.split("fold ")[1].split(" ")[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("5 test clips, acc " in line and "UF1 " in line and "UAR " in line for line in lines)
    assert "ETA " in lines[0] and lines[-1].endswith("finished")
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    last = lines[-1]
    from merkit.eval.metrics import unweighted_f1

    assert f"so far 20 clips: UF1 {unweighted_f1(predictions.y_true, predictions.y_pred, protocol.classes):.3f}" in last


def test_fused_ststnet_same_predictions_for_any_fold_workers(synth_samples, tmp_path, monkeypatch):
    """STSTNet (fused training pass) in this process, which has two threads (``fold_workers=1``),
    and in two worker processes: identical predictions, because every fold trains on one thread
    (on two threads some of its reductions round differently: measured up to 2e-3 in the
    probabilities after 4 epochs)."""
    import torch

    import merkit.models.ststnet as ststnet

    monkeypatch.setattr(ststnet, "FUSED_CHUNK", 4)  # batches of 8 span two chunks
    protocol = get_protocol("casme2-5")
    config = config_from_dict({"model": {"name": "ststnet"}, "views": {"flow": "dis"},
                               "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "optimizer": "adam"}})
    torch.set_num_threads(2)
    try:
        run_loso(synth_samples, protocol, config, tmp_path / "serial", cache_dir=tmp_path / "cache")
    finally:
        torch.set_num_threads(1)
    run_loso(synth_samples, protocol, config, tmp_path / "parallel", cache_dir=tmp_path / "cache", fold_workers=2)
    serial = pd.read_csv(tmp_path / "serial" / "predictions.csv")
    parallel = pd.read_csv(tmp_path / "parallel" / "predictions.csv")
    pd.testing.assert_frame_equal(serial, parallel, check_exact=True)


FAULTS_SCRIPT = """
import resource, sys
import torch
from merkit.config import load_config
from merkit.train.executors import LocalExecutor
from merkit.train.loso import new_model
from merkit.train.trainer import fit


def faults_per_epoch(seed, shared):
    # a fold of the shipped STSTNet config at the composite's size: page faults per epoch of
    # merkit's training loop after warming up
    config = load_config("ststnet-megc2019-flow")
    model = new_model(config, ["negative", "positive", "surprise"], seed=seed)
    views, labels = {"flow": torch.rand(439, 3, 28, 28)}, torch.randint(0, 3, (439,))
    fit(model, views, labels, config.train.model_copy(update={"epochs": 5}), seed=seed)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fit(model, views, labels, config.train.model_copy(update={"epochs": 20}), seed=seed)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 20


if __name__ == "__main__":
    workers = int(sys.argv[1])
    print(*LocalExecutor(workers=workers).map(faults_per_epoch, list(range(workers))))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
@pytest.mark.parametrize("workers", [1, 2])
def test_fold_workers_keep_freed_memory(tmp_path, workers):
    """A fold (in this process or in a worker) trains without giving its step's buffers back to
    the OS at every step: after warming up, an STSTNet epoch at the composite's size has almost
    no page faults (with glibc's defaults the development machine measured 200-7,800 per epoch)."""
    import subprocess
    import sys

    from merkit.train.executors import keep_freed_memory

    assert keep_freed_memory()
    script = tmp_path / "faults.py"
    script.write_text(FAULTS_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(workers)], capture_output=True, text=True, check=True)
    faults = [float(value) for value in done.stdout.split()]
    assert len(faults) == workers and max(faults) < 100, faults
