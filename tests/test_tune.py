import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from merkit.config import config_from_dict
from merkit.data.protocols import get_protocol
from merkit.errors import ConfigError
from merkit.eval.metrics import evaluate_run
from merkit.train import tune
from merkit.train.loso import run_loso
from merkit.train.tune import apply_point, choose_point, expand_grid, inner_splits, repeat_seed, run_nested

LOGREG = {"model": {"name": "logreg", "image_size": 16}, "train": {"epochs": 3, "batch_size": 8, "lr": 0.01}}
GRID = {"train.lr": [0.3, 0.01], "train.epochs": [1, 3]}


def test_expand_grid_and_apply_point():
    points = expand_grid(GRID)
    assert points == [{"train.lr": 0.3, "train.epochs": 1}, {"train.lr": 0.3, "train.epochs": 3},
                      {"train.lr": 0.01, "train.epochs": 1}, {"train.lr": 0.01, "train.epochs": 3}]
    config = config_from_dict(LOGREG)
    changed = apply_point(config, {"train.lr": 0.5, "model.image_size": 8, "train.schedule.type": "cosine"})
    assert (changed.train.lr, changed.model["image_size"], changed.train.schedule.type) == (0.5, 8, "cosine")
    assert config.train.lr == 0.01  # the base config is left alone
    with pytest.raises(ConfigError, match="train.lrr"):
        apply_point(config, {"train.lrr": 0.1})
    for bad in ({}, {"lr": [1]}, {"train.lr": []}, {"train.lr": "0.1"}):
        with pytest.raises(ConfigError):
            expand_grid(bad)


def test_a_joint_axis_sets_its_keys_together():
    recipe = [{"train.epochs": 1, "train.batch_size": 4}, {"train.batch_size": 8, "train.epochs": 3}]
    points = expand_grid({"train.lr": [0.3, 0.01], "recipe": recipe})
    assert points == [{"train.lr": 0.3, "train.epochs": 1, "train.batch_size": 4},
                      {"train.lr": 0.3, "train.epochs": 3, "train.batch_size": 8},
                      {"train.lr": 0.01, "train.epochs": 1, "train.batch_size": 4},
                      {"train.lr": 0.01, "train.epochs": 3, "train.batch_size": 8}]
    assert expand_grid({"pair": [{"pretrained": None, "train.epochs": 2}]}) == [{"pretrained": None, "train.epochs": 2}]
    bad_grids = {
        "set the same keys": {"recipe": [{"train.epochs": 1}, {"train.lr": 0.1}]},
        "set by two axes": {"train.epochs": [1, 2], "recipe": [{"train.epochs": 3, "train.lr": 0.1}]},
        "empty mapping": {"recipe": [{}]},
        "'epochs' is not a dotted config key": {"recipe": [{"epochs": 3}]},
        "or a joint axis": {"recipe": [{"train.epochs": 3}, 4]},
    }
    for message, grid in bad_grids.items():
        with pytest.raises(ConfigError, match=message):
            expand_grid(grid)


def test_two_points_of_one_setting_are_refused_before_any_fit(synth_samples, tmp_path):
    protocol, config = get_protocol("casme2-5"), config_from_dict(LOGREG)
    with pytest.raises(ConfigError, match="give the same config"):
        run_nested(synth_samples, protocol, config, {"train.lr": [0.01, 1e-2]}, tmp_path / "same", inner="loso")
    recipe = [{"train.lr": 0.01, "train.epochs": 3}, {"train.lr": 0.01, "train.epochs": 3.0}]  # 3.0 validates as 3
    with pytest.raises(ConfigError, match="give the same config"):
        run_nested(synth_samples, protocol, config, {"recipe": recipe}, tmp_path / "same", inner="loso")
    assert not (tmp_path / "same").exists()


def test_inner_splits_are_subject_grouped(synth_samples):
    loso = inner_splits(synth_samples, "loso", 0, seed=0)
    assert len(loso) == 4
    kfold = inner_splits(synth_samples, "kfold", 2, seed=0)
    assert len(kfold) == 2
    for splits in (loso, kfold):
        validated = np.concatenate([validation for _, validation in splits])
        assert sorted(validated) == list(range(len(synth_samples)))  # each sample validated once
        for training, validation in splits:
            assert not {synth_samples[i].group for i in training} & {synth_samples[i].group for i in validation}
    assert [v.tolist() for _, v in kfold] == [v.tolist() for _, v in inner_splits(synth_samples, "kfold", 2, seed=0)]
    with pytest.raises(ConfigError, match="between 2 and the 4"):
        inner_splits(synth_samples, "kfold", 5, seed=0)
    with pytest.raises(ConfigError, match="at least two training subjects"):
        inner_splits(synth_samples[:5], "loso", 0, seed=0)


def _fake_fits(monkeypatch, classes):
    """Replace every inner fit by a rule: sample ``i`` is predicted class ``(i + s) % C``, ``s``
    the repeat's seed (a fit's seed is ``repeat seed * 100 + inner fold``)."""

    def fake(config, classes_, views, labels, fit_index, predict_index, seed):
        predicted = (np.asarray(predict_index) + seed // 100) % len(classes)
        return [], np.eye(len(classes))[predicted], "cpu"

    monkeypatch.setattr(tune, "_train_and_predict", fake)


def test_repeated_inner_scores_are_the_mean_of_their_repeats(synth_samples, monkeypatch):
    """A point's inner UF1 with r repeats is the mean of r pooled inner UF1s (sklearn's macro F1
    over the classes present), each repeat with its own seed (repeat 0: the plain choice's);
    a composite's records also hold each source dataset's inner UF1."""
    import torch
    from sklearn.metrics import f1_score

    classes = list(get_protocol("casme2-5").classes)
    _fake_fits(monkeypatch, classes)
    # two source datasets: sub03 and sub04 relabelled as coming from another one
    samples = [replace(s, dataset="other") if s.subject in ("sub03", "sub04") else s for s in synth_samples]
    labels = torch.tensor([s.label for s in samples])
    config = config_from_dict(LOGREG)
    points = expand_grid({"train.lr": [0.3, 0.01]})
    choice = choose_point(samples, [{}, {}], labels, config, points, classes, inner="kfold", inner_folds=2,
                          inner_repeats=3, seed=7)
    seeds = [repeat_seed(7, r) for r in range(3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    truth = labels.numpy()
    present = sorted(set(truth))
    expected = [f1_score(truth, (np.arange(len(samples)) + s) % len(classes), average="macro", labels=present)
                for s in seeds]
    score = choice.scores[0]
    np.testing.assert_allclose(score["uf1_repeats"], expected)
    assert score["uf1"] == pytest.approx(np.mean(expected))
    source = np.array([s.dataset for s in samples]) == "other"
    expected_other = np.mean([f1_score(truth[source], ((np.arange(len(samples)) + s) % len(classes))[source],
                                       average="macro", labels=sorted(set(truth[source]))) for s in seeds])
    assert set(score["dataset_uf1"]) == {"other", "synthme"}
    assert score["dataset_uf1"]["other"] == pytest.approx(expected_other)
    # one repeat is the plain choice: no per-repeat list, the first repeat's score
    single = choose_point(samples, [{}, {}], labels, config, points, classes, inner="kfold", inner_folds=2, seed=7)
    assert single.scores[0]["uf1"] == pytest.approx(expected[0]) and "uf1_repeats" not in single.scores[0]
    with pytest.raises(ConfigError, match="inner_repeats"):
        choose_point(samples, [{}, {}], labels, config, points, classes, inner_repeats=0)


def test_inner_repeats_reach_the_choice_and_the_run_records(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    grid = {"train.lr": [0.3, 0.01]}
    metrics = run_nested(synth_samples, protocol, config_from_dict(LOGREG), grid, tmp_path / "run", inner="kfold",
                         inner_folds=2, inner_repeats=2, selection_groups=2)
    selection = metrics["selection"]
    assert selection["inner"] == {"scheme": "kfold", "folds": 2, "repeats": 2}
    assert "repeated 2 times" in selection["description"] and "mean over 2 inner repeats" in selection["score"]
    assert all(len(score["uf1_repeats"]) == 2 for group in selection["groups"] for score in group["scores"])
    import yaml

    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["tune"]["inner_repeats"] == 2
    assert "inner_repeats" not in tune.tuning_settings(grid, "kfold", 2, 2)  # one repeat: old runs resume


def test_one_point_grid_is_plain_loso(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    plain = run_loso(synth_samples, protocol, config, tmp_path / "plain")
    nested = run_nested(synth_samples, protocol, config, {"train.lr": [0.01]}, tmp_path / "nested", inner="loso")
    a = pd.read_csv(tmp_path / "plain" / "predictions.csv", dtype={"subject": str})
    b = pd.read_csv(tmp_path / "nested" / "predictions.csv", dtype={"subject": str})
    assert a.sample_id.tolist() == b.sample_id.tolist()
    np.testing.assert_allclose(a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy(), atol=1e-6)
    assert nested["uf1"] == pytest.approx(plain["uf1"])


def test_a_one_point_grid_of_members_is_the_plain_members_run(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict({**LOGREG, "train": {**LOGREG["train"], "members": 2}})
    run_loso(synth_samples, protocol, config, tmp_path / "plain")
    run_nested(synth_samples, protocol, config_from_dict(LOGREG), {"train.members": [2]}, tmp_path / "nested", inner="kfold")
    run_loso(synth_samples, protocol, config_from_dict(LOGREG), tmp_path / "single")
    a, b, single = (pd.read_csv(tmp_path / name / "predictions.csv").filter(like="p_").to_numpy()
                    for name in ("plain", "nested", "single"))
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a - single).max() > 1e-3  # the nested folds trained two members, not one


def test_nested_run_records_grid_scheme_and_choices(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    metrics = run_nested(synth_samples, protocol, config_from_dict(LOGREG), GRID, tmp_path / "run", inner="kfold",
                         inner_folds=2)
    selection = metrics["selection"]
    assert selection["policy"] == "nested" and selection["grid"] == GRID
    assert selection["inner"] == {"scheme": "kfold", "folds": 2, "repeats": 1} and "nested" in selection["description"]
    assert sorted(selection["chosen"]) == ["sub01", "sub02", "sub03", "sub04"]
    assert all(point in expand_grid(GRID) for point in selection["chosen"].values())
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["selection"] == selection and saved["n_samples"] == len(synth_samples)
    written = (tmp_path / "run" / "metrics.json").read_bytes()  # one writer: evaluating again changes nothing
    assert evaluate_run(tmp_path / "run") == metrics and (tmp_path / "run" / "metrics.json").read_bytes() == written
    choice = json.loads((tmp_path / "run" / "folds" / "sub01" / "choice.json").read_text())
    assert len(choice["scores"]) == 4 and choice["point"] == selection["chosen"]["sub01"]
    best = max(choice["scores"], key=lambda s: (s["uf1"], s["uar"]))
    assert best["uf1"] == choice["scores"][choice["index"]]["uf1"]
    import yaml

    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["tune"] == {"grid": GRID, "inner": "kfold", "inner_folds": 2}


def test_the_test_subject_never_influences_the_choice(synth_samples, tmp_path, monkeypatch):
    """Changing only sub01's labels leaves the choice for the fold that tests sub01 (and its inner
    scores) exactly as it was; and the choice is never shown a sample of the test subject."""
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    seen: list[set[str]] = []
    original_choose = tune.choose_point

    def recording(samples, *args, **kwargs):
        seen.append({s.group for s in samples})
        return original_choose(samples, *args, **kwargs)

    monkeypatch.setattr(tune, "choose_point", recording)
    run_nested(synth_samples, protocol, config, GRID, tmp_path / "a", inner="loso")
    assert [sorted(groups) for groups in seen] == [
        sorted({s.group for s in synth_samples} - {f"synthme/sub0{k}"}) for k in (1, 2, 3, 4)]
    relabelled = [replace(s, label=(s.label + 1) % 5) if s.subject == "sub01" else s for s in synth_samples]
    run_nested(relabelled, protocol, config, GRID, tmp_path / "b", inner="loso")
    first = json.loads((tmp_path / "a" / "folds" / "sub01" / "choice.json").read_text())
    second = json.loads((tmp_path / "b" / "folds" / "sub01" / "choice.json").read_text())
    assert first == second
    assert len({s["uf1"] for s in first["scores"]}) > 1  # the points really score differently
    # the other folds train on sub01, so their inner scores do see the change
    changed = [json.loads((tmp_path / r / "folds" / "sub02" / "choice.json").read_text())["scores"] for r in "ab"]
    assert changed[0] != changed[1]


def test_resume_and_refusals(synth_samples, tmp_path, monkeypatch):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    grid = {"train.lr": [0.3, 0.01]}
    first = run_nested(synth_samples, protocol, config, grid, tmp_path / "run", inner="kfold", inner_folds=2)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished fold was tuned again")

    monkeypatch.setattr(tune, "choose_point", refuse)
    again = run_nested(synth_samples, protocol, config, grid, tmp_path / "run", inner="kfold", inner_folds=2)
    assert again == first
    with pytest.raises(ConfigError, match="another run"):
        run_nested(synth_samples, protocol, config, {"train.lr": [0.3, 0.02]}, tmp_path / "run", inner="kfold",
                   inner_folds=2)
    with pytest.raises(ConfigError, match="selection.policy"):
        run_nested(synth_samples, protocol, config_from_dict({**LOGREG, "selection": {"policy": "val-split"}}), grid,
                   tmp_path / "other")


def test_grid_points_may_read_different_views(synth_samples, tmp_path, monkeypatch):
    """A point that changes the views (here the input size) is scored and trained on its own
    views: its inner scores and the predictions of the folds that chose it are those of a grid
    holding that point alone."""
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    both = run_nested(synth_samples, protocol, config, {"model.image_size": [16, 8]}, tmp_path / "both",
                      inner="kfold", inner_folds=2, selection_groups=2)
    alone = run_nested(synth_samples, protocol, config, {"model.image_size": [8]}, tmp_path / "alone",
                       inner="kfold", inner_folds=2, selection_groups=2)
    for mixed, single in zip(both["selection"]["groups"], alone["selection"]["groups"]):
        assert [s["point"] for s in mixed["scores"]] == [{"model.image_size": 16}, {"model.image_size": 8}]
        assert mixed["scores"][1] == single["scores"][0]
    a = pd.read_csv(tmp_path / "both" / "predictions.csv", dtype={"subject": str})
    b = pd.read_csv(tmp_path / "alone" / "predictions.csv", dtype={"subject": str})
    eight = [fold for fold, point in both["selection"]["chosen"].items() if point == {"model.image_size": 8}]
    sixteen = sorted(set(both["selection"]["chosen"]) - set(eight))
    assert eight and sixteen  # with this seed each group chose another size
    for fold in eight:
        np.testing.assert_array_equal(a[a.fold == fold].filter(like="p_").to_numpy(),
                                      b[b.fold == fold].filter(like="p_").to_numpy())
    for fold in sixteen:  # trained on the 16 px views: other probabilities than the 8 px model's
        assert not np.allclose(a[a.fold == fold].filter(like="p_").to_numpy(),
                               b[b.fold == fold].filter(like="p_").to_numpy())

    build = tune.ViewBuilder.build

    def drop_one_at_8px(self, samples, progress=None):
        kept, arrays = build(self, samples, progress)
        if self.specs[0].size == (8, 8):
            return kept[1:], {name: array[1:] for name, array in arrays.items()}
        return kept, arrays

    monkeypatch.setattr(tune.ViewBuilder, "build", drop_one_at_8px)
    with pytest.raises(ConfigError, match="keep different clips"):
        run_nested(synth_samples, protocol, config, {"model.image_size": [16, 8]}, tmp_path / "other")


def test_parallel_outer_folds_give_the_same_run(synth_samples, tmp_path):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    grid = {"train.lr": [0.3, 0.01]}
    one = run_nested(synth_samples, protocol, config, grid, tmp_path / "one", inner="kfold", inner_folds=2)
    two = run_nested(synth_samples, protocol, config, grid, tmp_path / "two", inner="kfold", inner_folds=2,
                     fold_workers=2)
    assert one["selection"]["chosen"] == two["selection"]["chosen"] and one["uf1"] == two["uf1"]


def test_selection_groups_spread_every_source_dataset():
    from merkit.data.sample import FrameSource, Sample
    from merkit.train.tune import split_selection_groups

    counts = {"casme2": 24, "samm": 28, "smic": 16}  # the composite's subjects per source
    samples = [Sample(dataset=d, subject=f"{k:02d}", clip_id=f"c{c}", frames=FrameSource((), ()), onset_frame=0,
                      apex_frame=None, offset_frame=0, emotion="negative")
               for d, n in counts.items() for k in range(n) for c in range(2)]
    for groups in (2, 3):
        assignment = split_selection_groups(samples, groups, seed=0)
        assert sorted(assignment) == sorted({s.group for s in samples})
        sizes = np.bincount(list(assignment.values()), minlength=groups)
        assert sizes.max() - sizes.min() <= 1
        for dataset, n in counts.items():
            per_group = np.bincount([g for s, g in assignment.items() if s.startswith(dataset)], minlength=groups)
            assert per_group.max() - per_group.min() <= 1 and per_group.sum() == n
    assert split_selection_groups(samples, 2, seed=0) == split_selection_groups(samples, 2, seed=0)
    assert split_selection_groups(samples, 2, seed=0) != split_selection_groups(samples, 2, seed=1)
    for bad in (1, 69):
        with pytest.raises(ConfigError, match="between 2 and the 68 subjects"):
            split_selection_groups(samples, bad, seed=0)


def test_selection_groups_never_let_a_test_subject_influence_its_own_choice(synth_samples, tmp_path, monkeypatch):
    """With two selection groups the grid is scored twice, each time on the other group's subjects
    only; changing only sub01's labels leaves the choice for sub01's group (and for the fold testing
    sub01) exactly as it was, while the other group, which chose on sub01, sees the change."""
    from merkit.train.tune import split_selection_groups

    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    membership = split_selection_groups(synth_samples, 2, seed=config.seed)
    own = membership["synthme/sub01"]
    seen: list[set[str]] = []
    original_choose = tune.choose_point

    def recording(samples, *args, **kwargs):
        seen.append({s.group for s in samples})
        return original_choose(samples, *args, **kwargs)

    monkeypatch.setattr(tune, "choose_point", recording)
    first = run_nested(synth_samples, protocol, config, GRID, tmp_path / "a", inner="kfold", inner_folds=2,
                       selection_groups=2)
    assert seen == [{g for g, k in membership.items() if k != group} for group in (0, 1)]  # one choice per group
    relabelled = [replace(s, label=(s.label + 1) % 5) if s.subject == "sub01" else s for s in synth_samples]
    run_nested(relabelled, protocol, config, GRID, tmp_path / "b", inner="kfold", inner_folds=2, selection_groups=2)

    def group_choice(run, group):
        record = json.loads((tmp_path / run / "selection" / f"group{group}.json").read_text())
        return {k: record[k] for k in ("index", "point", "scores", "subjects", "choosers")}

    assert group_choice("a", own) == group_choice("b", own)
    assert "synthme/sub01" in group_choice("a", own)["subjects"] and "synthme/sub01" not in group_choice("a", own)["choosers"]
    assert len({s["uf1"] for s in group_choice("a", own)["scores"]}) > 1  # the points really score differently
    assert group_choice("a", 1 - own)["scores"] != group_choice("b", 1 - own)["scores"]
    fold = [json.loads((tmp_path / r / "folds" / "sub01" / "choice.json").read_text()) for r in "ab"]
    assert fold[0] == fold[1] and fold[0]["selection_group"] == own
    selection = first["selection"]
    assert selection["policy"] == "nested" and selection["selection_groups"] == 2
    assert "2 selection groups" in selection["description"] and "other groups only" in selection["description"]
    assert [g["subjects"] for g in selection["groups"]] == [sorted(g for g, k in membership.items() if k == i)
                                                             for i in (0, 1)]
    for name, point in selection["chosen"].items():
        assert point == selection["groups"][membership[f"synthme/{name}"]]["point"]
    import yaml

    recorded = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert recorded["tune"] == {"grid": GRID, "inner": "kfold", "inner_folds": 2, "selection_groups": 2}


def test_selection_groups_resume_refuse_another_setting_and_run_in_parallel(synth_samples, tmp_path, monkeypatch):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    grid = {"train.lr": [0.3, 0.01]}
    kwargs = {"inner": "kfold", "inner_folds": 2, "selection_groups": 2}
    first = run_nested(synth_samples, protocol, config, grid, tmp_path / "run", **kwargs)
    parallel = run_nested(synth_samples, protocol, config, grid, tmp_path / "parallel", fold_workers=2, **kwargs)
    assert parallel["selection"] == first["selection"] and parallel["uf1"] == first["uf1"]
    for fold in (tmp_path / "run" / "folds").iterdir():  # an interrupted run: folds lost, group choices kept
        (fold / "predictions.csv").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("a recorded group choice was made again")

    monkeypatch.setattr(tune, "choose_point", refuse)
    assert run_nested(synth_samples, protocol, config, grid, tmp_path / "run", **kwargs) == first
    with pytest.raises(ConfigError, match="selection group of another run|another run"):
        run_nested(synth_samples, protocol, config, grid, tmp_path / "run", inner="kfold", inner_folds=2,
                   selection_groups=3)
    with pytest.raises(ConfigError, match="between 2 and the 4 subjects"):
        run_nested(synth_samples, protocol, config, grid, tmp_path / "other", selection_groups=5)


def test_a_damaged_group_choice_is_made_again_and_the_run_records_its_compute(synth_samples, tmp_path, caplog):
    protocol = get_protocol("casme2-5")
    config = config_from_dict(LOGREG)
    grid = {"train.lr": [0.3, 0.01]}
    kwargs = {"inner": "kfold", "inner_folds": 2, "selection_groups": 2}
    first = run_nested(synth_samples, protocol, config, grid, tmp_path / "run", **kwargs)
    facts = json.loads((tmp_path / "run" / "run.json").read_text())["compute"]
    assert facts["devices_used"] == ["cpu"] and facts["determinism"] == first["compute"]["determinism"]
    assert json.loads((tmp_path / "run" / "folds" / "sub01" / "choice.json").read_text())["device"] == "cpu"
    damaged = tmp_path / "run" / "selection" / "group0.json"
    damaged.write_text(damaged.read_text()[:40])  # cut short, e.g. a full disk
    for fold in (tmp_path / "run" / "folds").iterdir():
        (fold / "predictions.csv").unlink()
    with caplog.at_level("WARNING"):
        again = run_nested(synth_samples, protocol, config, grid, tmp_path / "run", **kwargs)
    assert "group0.json is damaged" in caplog.text
    assert again == first and json.loads(damaged.read_text())["point"] == first["selection"]["groups"][0]["point"]


def test_the_pretrained_checkpoint_is_a_grid_key_and_never_one_seen_on_the_run_s_subjects(synth_samples, tmp_path):
    """``pretrained`` may be tuned (pre-train -> fine-tune against training from scratch): a
    one-point grid equals the plain fine-tuning run; a checkpoint trained on a subject of the run
    is refused for any point, as in plain LOSO."""
    from merkit.errors import LeakageError
    from merkit.train.loso import train_all

    protocol, config = get_protocol("casme2-5"), config_from_dict(LOGREG)
    first = [s for s in synth_samples if s.subject == "sub01"]
    others = [s for s in synth_samples if s.subject != "sub01"]
    checkpoint = str(train_all(first, protocol, config, tmp_path / "stage1"))
    assert apply_point(config, {"pretrained": checkpoint}).pretrained == checkpoint
    with pytest.raises(ConfigError, match="one of pretrained"):
        expand_grid({"seed": [0, 1]})
    plain = run_loso(others, protocol, config.model_copy(update={"pretrained": checkpoint}), tmp_path / "plain")
    nested = run_nested(others, protocol, config, {"pretrained": [checkpoint]}, tmp_path / "nested", inner="loso")
    a = pd.read_csv(tmp_path / "plain" / "predictions.csv", dtype={"subject": str})
    b = pd.read_csv(tmp_path / "nested" / "predictions.csv", dtype={"subject": str})
    np.testing.assert_allclose(a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy(), atol=1e-6)
    assert nested["uf1"] == pytest.approx(plain["uf1"])
    assert nested["pretrained"] == [{"checkpoint": checkpoint, "subjects_seen": 1}]
    with pytest.raises(LeakageError, match="1 of this run's test subjects .synthme/sub01"):
        run_nested(synth_samples, protocol, config, {"pretrained": [None, checkpoint]}, tmp_path / "leak", inner="loso")
    assert not (tmp_path / "leak").exists()
