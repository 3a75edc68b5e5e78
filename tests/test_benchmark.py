import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from fixtures_datasets import build_megc2019_flow, megc2019_flow_rows
from merkit import benchmark as bench
from merkit.benchmark import ensemble_predictions, plan_runs, run_benchmark, summarise
from merkit.cli import app
from merkit.errors import ConfigError, MetricsError
from merkit.eval.metrics import evaluate_run

LOGREG = {"model": {"name": "logreg", "image_size": 16}, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}}


def _config(path, **train):
    data = {**LOGREG, "train": {**LOGREG["train"], **train}}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_plan_and_bad_requests(tmp_path):
    specs = plan_runs(["logreg", "configs/x.yaml"], ["synthme"], [0, 1], tmp_path)
    assert [(s.entry, s.seed, s.run_dir.relative_to(tmp_path).as_posix()) for s in specs] == [
        ("logreg", 0, "synthme/logreg/seed0"), ("logreg", 1, "synthme/logreg/seed1"),
        ("configs/x.yaml", 0, "synthme/x/seed0"), ("configs/x.yaml", 1, "synthme/x/seed1")]
    with pytest.raises(ConfigError, match="seeds repeat"):
        plan_runs(["logreg"], ["synthme"], [0, 0], tmp_path)
    with pytest.raises(ConfigError, match="share a label"):
        plan_runs(["a/x.yaml", "b/x.yaml"], ["synthme"], [0], tmp_path)
    with pytest.raises(ConfigError, match="at least two"):
        run_benchmark(["logreg"], ["synthme"], tmp_path, ensembles=[["logreg"]])
    with pytest.raises(ConfigError, match="at least two seeds"):
        run_benchmark(["logreg"], ["synthme"], tmp_path, seeds=[0], seed_ensemble=True)


def test_ensemble_averages_probabilities_by_hand():
    first = pd.DataFrame({"sample_id": ["a", "b"], "dataset": "d", "subject": ["1", "2"], "fold": ["1", "2"],
                          "y_true": [0, 1], "y_pred": [0, 0], "p_x": [0.6, 0.7], "p_y": [0.4, 0.3]})
    second = first.iloc[::-1].copy()  # another row order
    second["p_x"], second["p_y"] = [0.1, 0.5], [0.9, 0.5]  # b: 0.1/0.9, a: 0.5/0.5
    mean = ensemble_predictions([first, second], ["x", "y"], ["one", "two"])
    assert mean.sample_id.tolist() == ["a", "b"]
    np.testing.assert_allclose(mean.p_x, [0.55, 0.4])
    np.testing.assert_allclose(mean.p_y, [0.45, 0.6])
    assert mean.y_pred.tolist() == [0, 1]
    with pytest.raises(MetricsError, match="other clips"):
        ensemble_predictions([first, first.iloc[:1]], ["x", "y"], ["one", "two"])
    wrong = second.copy()
    wrong["y_true"] = [0, 0]
    with pytest.raises(MetricsError, match="y_true disagrees"):
        ensemble_predictions([first, wrong], ["x", "y"], ["one", "two"])


def test_summary_pools_seeds_and_splits_composites():
    def metrics(uf1, per):
        return {"acc": uf1, "uf1": uf1, "uar": uf1, "n_samples": 10, "selection": {"policy": "last"},
                "per_dataset": {name: {"acc": v, "uf1": v, "uar": v, "n_samples": 5} for name, v in per.items()}}

    rows = summarise([("megc", "m", metrics(0.5, {"casme2": 0.4, "samm": 0.6}), 60.0),
                      ("megc", "m", metrics(0.7, {"casme2": 0.6, "samm": 0.8}), 120.0),
                      ("megc", "solo", metrics(0.3, {"casme2": 0.3, "samm": 0.3}), 30.0)])
    assert [(r["model"], r["source"]) for r in rows] == [("m", "all"), ("m", "casme2"), ("m", "samm"),
                                                        ("solo", "all"), ("solo", "casme2"), ("solo", "samm")]
    assert rows[0]["uf1_mean"] == pytest.approx(0.6) and rows[0]["uf1_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert rows[1]["uf1_mean"] == pytest.approx(0.5) and rows[2]["uar_mean"] == pytest.approx(0.7)
    assert rows[0]["wall_s"] == 90.0 and rows[1]["wall_s"] is None
    assert rows[3]["uf1_std"] is None and rows[3]["seeds"] == 1
    markdown = bench.format_markdown(rows)
    assert "| megc | all | m | 2 | 10 | 0.6000 ± 0.1414 |" in markdown and "| 1.5 |" in markdown
    assert "0.3000 |" in markdown and "Selection `last`" in markdown
    assert r"$0.6000 \pm 0.1414$" in bench.format_latex(rows)


def test_benchmark_runs_writes_tables_and_resumes(synth_root, tmp_path, monkeypatch):
    fast, slow = _config(tmp_path / "fast.yaml"), _config(tmp_path / "slow.yaml", epochs=3)
    out = tmp_path / "bench"
    result = run_benchmark([fast, slow], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0, 1],
                           ensembles=[["fast", "slow"]], seed_ensemble=True, cache_dir=tmp_path / "cache",
                           command="merkit benchmark ...")
    assert [(r["model"], r["source"], r["seeds"]) for r in result.rows] == [
        ("fast", "all", 2), ("slow", "all", 2), ("ensemble-fast+slow", "all", 2),
        ("seed-ensemble-fast", "all", 2), ("seed-ensemble-slow", "all", 2), ("seed-ensemble-fast+slow", "all", 2)]
    for row in result.rows[:2]:
        runs = [json.loads((out / "synthme" / row["model"] / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert row["uf1_mean"] == pytest.approx(np.mean([m["uf1"] for m in runs]))
        assert row["uar_std"] == pytest.approx(np.std([m["uar"] for m in runs], ddof=1))
        assert row["selection"] == "last" and row["wall_s"] > 0
    ensemble = json.loads((out / "synthme" / "ensemble-fast+slow" / "seed0" / "metrics.json").read_text())
    assert ensemble["selection"]["policy"] == "ensemble" and ensemble["n_samples"] == 20
    assert evaluate_run(out / "synthme" / "ensemble-fast+slow" / "seed0") == ensemble  # one writer, as for any run
    # a seed ensemble: the four member runs' probabilities averaged (the ensemble's two seeds are
    # averages of two runs each), scored by sklearn; one figure, its wall time the four runs' sum
    tables = [pd.read_csv(out / "synthme" / m / f"seed{s}" / "predictions.csv").sort_values("sample_id")
              for m in ("fast", "slow") for s in (0, 1)]
    probabilities = np.mean([t.filter(like="p_").to_numpy() for t in tables], axis=0)
    by_hand = f1_score(tables[0].y_true, probabilities.argmax(1), average="macro")
    row = result.rows[5]
    assert row["uf1_mean"] == pytest.approx(by_hand) and row["uf1_std"] is None and row["selection"] == "ensemble"
    assert row["wall_s"] == pytest.approx(result.rows[0]["wall_s"] * 2 + result.rows[1]["wall_s"] * 2)
    assert json.loads((out / "synthme" / "seed-ensemble-fast" / "metrics.json").read_text())["uf1"] == result.rows[3]["uf1_mean"]
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == ["dataset", "source", "model", "seeds", "n_samples", "acc_mean", "acc_std", "uf1_mean",
                                   "uf1_std", "uar_mean", "uar_std", "selection", "wall_s"]
    assert "Command: `merkit benchmark ...`" in (out / "results.md").read_text()
    assert (out / "results.tex").read_text().startswith(r"\begin{tabular}")
    assert json.loads((out / "benchmark.json").read_text())["seeds"] == [0, 1]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("merkit.train.loso.run_loso", refuse)
    again = run_benchmark([fast, slow], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0, 1],
                          ensembles=[["fast", "slow"]], seed_ensemble=True, cache_dir=tmp_path / "cache")
    assert again.rows == result.rows
    _config(tmp_path / "fast.yaml", epochs=4)  # the same name, another setting
    with pytest.raises(ConfigError, match="another setting"):
        run_benchmark([fast], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0], cache_dir=tmp_path / "cache")


def test_interrupted_run_resumes_and_adds_its_time(synth_root, tmp_path):
    fast = _config(tmp_path / "fast.yaml")
    out = tmp_path / "bench"
    run_benchmark([fast], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0], cache_dir=tmp_path / "cache")
    timing_path = out / "synthme" / "fast" / "seed0" / "timing.json"
    timing = json.loads(timing_path.read_text())
    timing.update(complete=False, wall_s=1000.0)  # as if the session had stopped after 1000 s of work
    timing_path.write_text(json.dumps(timing))
    result = run_benchmark([fast], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0], cache_dir=tmp_path / "cache")
    assert result.rows[0]["wall_s"] > 1000.0 and json.loads(timing_path.read_text())["complete"]
    # folds the benchmark did not time (a run trained or copied into its folder): the time is
    # unknown, not the seconds spent reading them back
    timing_path.unlink()
    for session in range(2):  # reusing the folds, then reading the finished run back
        result = run_benchmark([fast], ["synthme"], out, roots={"synthme": synth_root}, seeds=[0],
                               cache_dir=tmp_path / "cache")
        assert result.rows[0]["wall_s"] is None and json.loads(timing_path.read_text())["untimed"]
    assert "| last |  |" in (out / "results.md").read_text()


def test_composite_rows_per_source_and_nested_runs(tmp_path):
    rows = [r for r in megc2019_flow_rows() if r["sub"] in ("sub01", "sub02", "s01", "s02", "006", "007")]
    root = build_megc2019_flow(tmp_path / "release", rows)
    config = tmp_path / "flow.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "logreg", "image_size": 28, "view": "flow"},
                                      "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
                                      "dataset": {"protocol": "megc2019-3"}}))
    result = run_benchmark([str(config)], ["megc2019-flow"], tmp_path / "bench", roots={"megc2019-flow": root},
                           grid={"train.lr": [0.1, 0.01]}, inner="kfold", inner_folds=2, cache_dir=tmp_path / "cache")
    assert [r["source"] for r in result.rows] == ["all", "casme2", "samm", "smic"]
    assert {r["selection"] for r in result.rows} == {"nested"}
    assert sum(r["n_samples"] for r in result.rows[1:]) == result.rows[0]["n_samples"] == len(rows)
    metrics = json.loads((tmp_path / "bench" / "megc2019-flow" / "flow" / "seed0" / "metrics.json").read_text())
    assert metrics["selection"]["policy"] == "nested" and len(metrics["selection"]["chosen"]) == 6
    notes = (tmp_path / "bench" / "results.md").read_text()
    assert "inner subject-grouped 2-fold cross-validation over the training subjects" in notes
    assert "Grid {'train.lr': [0.1, 0.01]}" in notes


def test_cli_benchmark_and_tune(synth_root, tmp_path):
    runner = CliRunner()
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.lr: [0.3, 0.01]\n")
    config = _config(tmp_path / "fast.yaml")
    result = runner.invoke(app, ["tune", "--dataset", "synthme", "--root", str(synth_root), "--config", config,
                                 "--grid", str(grid), "--inner", "kfold", "--inner-folds", "2", "--out",
                                 str(tmp_path / "nested"), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "of 4 outer folds" in output and "selection: nested" in output
    joint = tmp_path / "joint.yaml"  # a joint axis: the learning rate and the budget set together
    joint.write_text("recipe:\n  - {train.lr: 0.3, train.epochs: 1}\n  - {train.lr: 0.01, train.epochs: 2}\n")
    result = runner.invoke(app, ["tune", "--dataset", "synthme", "--root", str(synth_root), "--config", config,
                                 "--grid", str(joint), "--inner-folds", "2", "--inner-repeats", "2", "--selection-groups", "2", "--out",
                                 str(tmp_path / "grouped"), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "selection group 0 (2 subjects)" in output and "2 selection groups" in output
    selection = json.loads((tmp_path / "grouped" / "metrics.json").read_text())["selection"]
    assert selection["selection_groups"] == 2 and selection["inner"]["repeats"] == 2
    assert all(point in ({"train.lr": 0.3, "train.epochs": 1}, {"train.lr": 0.01, "train.epochs": 2})
               for point in selection["chosen"].values())
    result = runner.invoke(app, ["benchmark", "--models", config, "--datasets", "synthme", "--root", str(synth_root),
                                 "--tune", str(grid), "--inner-folds", "2", "--selection-groups", "2", "--out",
                                 str(tmp_path / "grouped-bench"), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "grouped-bench").glob("synthme/*/seed0"))
    assert json.loads((run / "metrics.json").read_text())["selection"]["selection_groups"] == 2
    assert "2 selection groups" in (tmp_path / "grouped-bench" / "results.md").read_text()
    result = runner.invoke(app, ["benchmark", "--models", config, "--datasets", "synthme", "--root", str(synth_root),
                                 "--seeds", "0,x", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2 and "--seeds" in " ".join(result.output.split())
    result = runner.invoke(app, ["benchmark", "--models", config, "--datasets", "synthme", "--root", str(synth_root),
                                 "--seed-ensemble", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2 and "at least two seeds" in " ".join(result.output.split())
    result = runner.invoke(app, ["benchmark", "--models", config, "--datasets", "synthme,samm", "--root",
                                 str(synth_root), "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2 and "NAME=DIR" in " ".join(result.output.split())
