"""End-to-end runs through the `merkit` command (tiny data, a couple of epochs)."""

import json

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
    invoke("train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1,
           "--pretrained", tmp_path / "stage1" / "model.pt", "--out", tmp_path / "run", "--cache", tmp_path / "cache")
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "stage1/model.pt" in config
    with pytest.raises(Exception):
        invoke("train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--epochs", 1,
               "--pretrained", tmp_path / "missing.pt", "--out", tmp_path / "run2")


def test_user_mistakes_get_a_message_not_a_traceback(synth_root, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for args, message in [
        (["demo", "--models", "logreg, nosuch", "--data", tmp_path / "d", "--out", tmp_path / "o"], "demo model must be one of 'logreg'"),
        (["synth", "--out", afile, "--subjects", 1, "--clips-per-subject", 1], "is a file"),
        (["train", "--dataset", "synthme", "--root", synth_root, "--model", "logreg", "--out", afile], "is a file"),
        (["synth", "--out", tmp_path / "s", "--seed", -1], "greater than or equal to 0"),
    ]:
        result = runner.invoke(app, [str(a) for a in args])
        output = " ".join(result.output.split())  # rich wraps long lines
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output)
        assert message in output, (args, output)


def test_preprocess_views_take_the_settings_of_a_config():
    from merkit.api import preprocess_specs

    specs, views_config = preprocess_specs(views="flow", model=None, config="tsfmicro-cpu", dataset="synthme", size=24)
    assert [(s.name, s.size) for s in specs] == [("flow", (24, 24))]
    assert views_config.flow == load_config("tsfmicro-cpu").views.flow == "dis"
    with pytest.raises(ConfigError, match="not both"):
        preprocess_specs(views="flow", model="logreg", config=None, dataset="synthme")
    with pytest.raises(ConfigError, match="give --views"):
        preprocess_specs(views=None, model=None, config=None, dataset="synthme")
