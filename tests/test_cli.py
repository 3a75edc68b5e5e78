"""End-to-end runs through the `merkit` command (tiny data, a couple of epochs)."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from fixtures_datasets import build_megc2019_flow, megc2019_flow_rows
from merkit.api import fit_to_release, prepare_run
from merkit.cli import app
from merkit.config import load_config
from merkit.errors import ConfigError

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_train_evaluate_inspect(tmp_path):
    data = tmp_path / "synth"
    invoke("synth", "--out", data, "--subjects", 3, "--clips-per-subject", 5, "--seed", 1)
    report = json.loads(invoke("datasets", "inspect", "synthme", "--root", data, "--json"))
    assert report["n_samples"] == 15 and report["n_subjects"] == 3
    assert report["class_counts"] == {c: 3 for c in ("happiness", "disgust", "repression", "surprise", "others")}
    assert set(report) >= {"dataset", "protocol", "n_samples", "n_subjects", "class_counts", "per_dataset", "fixes", "skipped"}

    run = tmp_path / "run"
    output = invoke("train", "--dataset", "synthme", "--root", data, "--model", "logreg", "--epochs", 2,
                    "--out", run, "--cache", tmp_path / "cache")
    assert "UF1" in output and "selection: last" in " ".join(output.split())  # rich wraps long lines
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_folds"] == 3 and metrics["n_samples"] == 15

    (run / "metrics.json").unlink()
    invoke("evaluate", run)
    again = json.loads((run / "metrics.json").read_text())
    assert again["uf1"] == pytest.approx(metrics["uf1"]) and again["selection"]["policy"] == "last"


def test_train_without_a_terminal_reports_each_fold_on_stderr(synth_root, tmp_path):
    """Under CliRunner stdout is no terminal (as under nohup or a batch job): the progress bar is
    invisible, so every finished fold is reported on stderr (and in log.txt)."""
    result = runner.invoke(app, ["train", "--dataset", "synthme", "--root", str(synth_root), "--model", "logreg",
                                 "--epochs", "1", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    folds = [line for line in result.stderr.splitlines() if " done (sub" in line]
    assert len(folds) == 4 and "fold 1/4 done (sub01): 5 test clips, acc" in folds[0]
    assert "ETA" in folds[0] and folds[-1].endswith("finished")
    assert "fold 4/4 done (sub04)" in (tmp_path / "run" / "log.txt").read_text()


def test_missing_root_says_licensed_and_shows_the_layout(tmp_path):
    result = runner.invoke(app, ["datasets", "inspect", "casme2", "--root", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "licensed" in result.output and "Cropped" in result.output


def test_megc2019_flow_ststnet_reports_each_source(tmp_path):
    root = build_megc2019_flow(tmp_path / "megc")
    output = invoke("train", "--dataset", "megc2019-flow", "--root", root, "--model", "ststnet", "--epochs", 1,
                    "--out", tmp_path / "run", "--cache", tmp_path / "cache")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_folds"] == 68 and metrics["n_samples"] == 442
    assert set(metrics["per_dataset"]) == {"casme2", "samm", "smic"}
    assert "per source dataset" in output
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"subject": str, "fold": str})
    assert predictions.fold.nunique() == 68


def test_tsfmicro_on_the_flow_release_uses_the_apex_crop_or_falls_back(tmp_path):
    rows = megc2019_flow_rows()[:12]
    with_crops = prepare_run(dataset="megc2019-flow", root=build_megc2019_flow(tmp_path / "a", rows), model="tsfmicro")
    assert with_crops.config.model["motion"] == "flow" and with_crops.config.model["branches"] == "both"
    assert with_crops.notes == []
    without = prepare_run(dataset="megc2019-flow", root=build_megc2019_flow(tmp_path / "b", rows, crops=False), model="tsfmicro")
    assert without.config.model["branches"] == "temporal"
    assert "no apex view" in without.notes[0]
    with pytest.raises(ConfigError, match="does not ship"):
        fit_to_release(load_config("logreg-cpu"), without.samples)
    output = invoke("train", "--dataset", "megc2019-flow", "--root", tmp_path / "b", "--model", "tsfmicro",
                    "--epochs", 1, "--out", tmp_path / "run", "--cache", tmp_path / "cache")
    assert "temporal" in output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_samples"] == 12


def test_preprocess_caches_the_named_views(synth_root, tmp_path):
    output = invoke("preprocess", "--dataset", "synthme", "--root", synth_root, "--views", "diff,frames", "--size", 16,
                    "--num-frames", 4, "--workers", 2, "--cache", tmp_path / "cache")
    assert "diff: (20, 1, 16, 16)" in output and "frames: (20, 4, 1, 16, 16)" in output
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 20
    output = invoke("preprocess", "--dataset", "synthme", "--root", synth_root, "--model", "logreg",
                    "--cache", tmp_path / "cache")
    assert "diff: (20, 1, 32, 32)" in output


def test_pretrain_then_fine_tune_starts_every_fold_from_the_first_stage(synth_root, tmp_path):
    import torch

    invoke("pretrain", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--protocol", "casme2-3",
           "--epochs", 2, "--out", tmp_path / "stage1", "--cache", tmp_path / "cache")
    stage1 = torch.load(tmp_path / "stage1" / "model.pt", weights_only=True)
    assert stage1["classes"] == ["negative", "positive", "surprise"]
    assert stage1["trained_on"]["subjects"] == [f"synthme/sub0{i}" for i in range(1, 5)]
    fine_tune = ["train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1,
                 "--pretrained", tmp_path / "stage1" / "model.pt", "--out", tmp_path / "run", "--cache", tmp_path / "cache"]
    # every test subject was seen in pre-training: refused (it used to run without a word) ...
    refused = runner.invoke(app, [str(a) for a in fine_tune])
    assert refused.exit_code == 2 and "pre-trained on 4 of this run's test subjects" in " ".join(refused.output.split())
    assert not (tmp_path / "run").exists()
    # ... or run on request, labelled leaking
    output = invoke(*fine_tune, "--allow-pretrain-overlap")
    assert "leaking" in output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pretrain"]["leaking"] and len(metrics["pretrain"]["overlap"]) == 4
    assert metrics["label"].endswith("[pre-training leak]")
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "stage1/model.pt" in config
    missing = runner.invoke(app, [str(a) for a in [*fine_tune[:-5], tmp_path / "missing.pt", "--out", tmp_path / "run2"]])
    assert missing.exit_code == 2 and "not found" in missing.output


def fails_in_one_line(args, message):
    result = runner.invoke(app, [str(a) for a in args])
    output = result.output.strip()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output)
    assert len(output.splitlines()) == 1 and output.startswith("error: "), (args, output)
    assert message in output, (args, output)


def test_user_mistakes_get_a_message_not_a_traceback(synth_root, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    train = ["train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1]
    big = tmp_path / "big.yaml"
    big.write_text("base: logreg-cpu\nmodel: {image_size: big}\n")
    broken = tmp_path / "broken"
    shutil.copytree(synth_root, broken)
    (broken / "synthme.json").write_text('{"config": {"fps": 1')  # cut short
    for args, message in [
        (["demo", "--models", "logreg, nosuch", "--data", tmp_path / "d", "--out", tmp_path / "o"], "demo model must be one of 'logreg'"),
        (["synth", "--out", afile, "--subjects", 1, "--clips-per-subject", 1], "is a file"),
        (["synth", "--out", afile / "sub", "--subjects", 1, "--clips-per-subject", 1], f"lies under {afile}, which is a file"),
        ([*train, "--out", afile], "is a file; a run directory must be a folder"),
        ([*train, "--out", afile / "sub"], f"lies under {afile}, which is a file; a run directory"),
        ([*train, "--out", tmp_path / "r1", "--cache", afile], "is a file; a view cache must be a folder"),
        (["preprocess", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--cache", afile / "c"], "view cache"),
        (["pretrain", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--out", afile / "sub"], "pre-training folder"),
        (["train", "--dataset", "synthme", "--root", synth_root, "--config", big, "--out", tmp_path / "r2"],
         "model 'logreg': option 'image_size': Input should be a valid integer, unable to parse string as an integer, got 'big'"),
        (["train", "--dataset", "synthme", "--root", synth_root, "--model", "nosuch", "--out", tmp_path / "r3"],
         "unknown model 'nosuch'; available models: atm-gcn, htnet, logreg, madv-net"),
        (["preprocess", "--dataset", "synthme", "--root", synth_root, "--model", "nosuch"], "available models: atm-gcn"),
        ([*train[:4], broken, *train[5:], "--out", tmp_path / "r4"], "synthme.json: malformed SynthME record"),
        (["datasets", "inspect", "synthme", "--root", broken], "synthme.json: malformed SynthME record"),
    ]:
        fails_in_one_line(args, message)
    for run in ("r1", "r2", "r3", "r4"):
        assert not (tmp_path / run).exists(), f"{run}: a refused run left a folder behind"
    usage = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--seed", "-1"])  # typer's usage message
    assert usage.exit_code == 2 and "greater than or equal to 0" in usage.output


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only for this process (chmod, or chattr +i when running as root)."""
    import os
    import subprocess

    frozen = []

    def freeze(folder):
        folder.chmod(0o555)
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
            frozen.append(folder)
        probe = folder / ".probe"
        try:
            probe.write_text("")
        except OSError:
            return folder
        probe.unlink()
        pytest.skip("cannot make a read-only folder on this machine")

    yield freeze
    for folder in frozen:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    for folder in tmp_path.rglob("*"):
        if folder.is_dir():
            folder.chmod(0o755)


def test_read_only_run_cache_and_output_folders_get_a_message(synth_root, tmp_path, read_only):
    run = tmp_path / "run"
    invoke("train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1, "--out", run,
           "--cache", tmp_path / "cache")
    (run / "confusion_matrix.png").unlink()
    read_only(run)
    fails_in_one_line(["evaluate", run], "confusion_matrix.png: cannot write the report")
    (tmp_path / "locked").mkdir()
    locked = read_only(tmp_path / "locked")
    fails_in_one_line(["train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1,
                       "--out", locked], "cannot write the run directory here")
    fails_in_one_line(["train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1,
                       "--out", tmp_path / "run2", "--cache", locked], "cannot write the view cache here")
    fails_in_one_line(["synth", "--out", locked / "synth"], "cannot write the SynthME folder here")


def test_evaluate_of_a_current_read_only_run_writes_nothing_and_succeeds(synth_root, tmp_path, read_only):
    run = tmp_path / "run"
    invoke("train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1, "--out", run,
           "--cache", tmp_path / "cache")
    read_only(run)
    assert "logreg LOSO (casme2-5)" in invoke("evaluate", run)


def test_preprocess_views_take_the_settings_of_a_config():
    from merkit.api import preprocess_specs

    specs, views_config = preprocess_specs(views="flow", model=None, config="tsfmicro-cpu", dataset="synthme", size=24)
    assert [(s.name, s.size) for s in specs] == [("flow", (24, 24))]
    assert views_config.flow == load_config("tsfmicro-cpu").views.flow == "dis"
    with pytest.raises(ConfigError, match="not both"):
        preprocess_specs(views="flow", model="logreg", config=None, dataset="synthme")
    with pytest.raises(ConfigError, match="give --views"):
        preprocess_specs(views=None, model=None, config=None, dataset="synthme")


def test_help_and_dataset_layouts_are_not_cut_at_80_columns():
    """Help texts used to end in '$MERKIT_<DATASE…' and `datasets list` wrapped mid-sentence."""
    from merkit.data.registry import all_datasets

    narrow = CliRunner(env={"COLUMNS": "80"})
    text = narrow.invoke(app, ["train", "--help"]).output
    assert "…" not in text and "$MERKIT_<DATASET>_ROOT" in text
    for command in (["demo"], ["preprocess"], ["pretrain"], ["synth"], ["evaluate"], ["datasets", "inspect"]):
        assert "…" not in narrow.invoke(app, [*command, "--help"]).output, command
    listing = narrow.invoke(app, ["datasets", "list"]).output
    for info in all_datasets().values():
        for line in info.layout.splitlines():
            assert line in listing, line
