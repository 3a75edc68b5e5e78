"""Metrics against scikit-learn on random cases, hand-computed edge cases and a predictions table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from merkit.errors import MetricsError
from merkit.eval.metrics import (
    accuracy,
    compute_metrics,
    confusion_matrix,
    macro_f1_hm,
    per_class_accuracy,
    read_predictions,
    unweighted_average_recall,
    unweighted_f1,
)

CLASSES = ("negative", "positive", "surprise")


@pytest.mark.parametrize("seed", range(200))
def test_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 8))
    num_samples = int(rng.integers(1, 60))
    # skewed class frequencies so that some classes are often absent from y_true or never predicted
    y_true = rng.choice(num_classes, size=num_samples, p=rng.dirichlet(np.full(num_classes, 0.5)))
    y_pred = np.where(rng.random(num_samples) < 0.5, y_true, rng.integers(0, num_classes, num_samples))
    present = np.unique(y_true)
    all_labels = np.arange(num_classes)

    assert accuracy(y_true, y_pred, num_classes) == pytest.approx(sk.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, num_classes),
                                  sk.confusion_matrix(y_true, y_pred, labels=all_labels))
    assert unweighted_f1(y_true, y_pred, num_classes) == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0))
    macro_recall = sk.recall_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
    assert unweighted_average_recall(y_true, y_pred, num_classes) == pytest.approx(macro_recall)
    macro_precision = sk.precision_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
    expected_hm = (2 * macro_precision * macro_recall / (macro_precision + macro_recall)
                   if macro_precision + macro_recall > 0 else 0.0)
    assert macro_f1_hm(y_true, y_pred, num_classes) == pytest.approx(expected_hm)

    recall = per_class_accuracy(y_true, y_pred, num_classes)
    np.testing.assert_allclose(recall[present], sk.recall_score(y_true, y_pred, average=None, labels=present))
    assert np.isnan(np.delete(recall, present)).all()


def test_class_names_and_indices_give_the_same_scores():
    y_true = [0, 1, 2, 2, 1, 0]
    y_pred = [0, 2, 2, 1, 1, 1]
    names_true = [CLASSES[i] for i in y_true]
    names_pred = [CLASSES[i] for i in y_pred]
    for metric in (accuracy, unweighted_f1, unweighted_average_recall, macro_f1_hm):
        assert metric(names_true, names_pred, CLASSES) == metric(y_true, y_pred, CLASSES)
    np.testing.assert_array_equal(confusion_matrix(names_true, names_pred, CLASSES),
                                  confusion_matrix(y_true, y_pred, 3))


def test_class_never_predicted_counts_as_zero():
    # class 1 is in y_true but never predicted: F1_1 = 0, recall_1 = 0
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 2, 2, 2]
    # F1_0 = 2*2/(4+1) = 0.8, F1_1 = 0, F1_2 = 2*2/(4+1) = 0.8
    assert unweighted_f1(y_true, y_pred, 3) == pytest.approx((0.8 + 0 + 0.8) / 3)
    assert unweighted_average_recall(y_true, y_pred, 3) == pytest.approx((1 + 0 + 1) / 3)


def test_class_absent_from_y_true_is_left_out_of_the_averages():
    # 4 protocol classes, class 3 never occurs in y_true but is predicted once
    y_true = [0, 0, 1, 2]
    y_pred = [0, 3, 1, 2]
    # over classes {0, 1, 2}: F1_0 = 2/(2+0+1) = 2/3, F1_1 = F1_2 = 1; recall_0 = 1/2
    assert unweighted_f1(y_true, y_pred, 4) == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert unweighted_average_recall(y_true, y_pred, 4) == pytest.approx((0.5 + 1 + 1) / 3)
    assert accuracy(y_true, y_pred, 4) == pytest.approx(3 / 4)
    recall = per_class_accuracy(y_true, y_pred, 4)
    np.testing.assert_allclose(recall[:3], [0.5, 1, 1])
    assert np.isnan(recall[3])


def test_fold_with_a_single_true_class():
    y_true = [1, 1, 1, 1]
    y_pred = [1, 0, 1, 2]
    # only class 1 has support: F1_1 = 2*2/(4+0+2) = 2/3, recall_1 = 1/2; precision_1 = 1
    assert unweighted_f1(y_true, y_pred, 3) == pytest.approx(2 / 3)
    assert unweighted_average_recall(y_true, y_pred, 3) == pytest.approx(0.5)
    assert macro_f1_hm(y_true, y_pred, 3) == pytest.approx(2 / 3)


def test_perfect_and_all_wrong_predictions():
    y_true = np.array([0, 1, 2, 2, 1, 0, 0])
    for metric in (accuracy, unweighted_f1, unweighted_average_recall, macro_f1_hm):
        assert metric(y_true, y_true, 3) == 1.0
        assert metric(y_true, (y_true + 1) % 3, 3) == 0.0


def test_macro_f1_hm_hand_computed():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    # precision = (1, 1/2, 1/2) -> 2/3; recall = (2/3, 1/2, 1) -> 13/18
    # HM = 2 * (2/3) * (13/18) / (2/3 + 13/18) = 52/75
    assert macro_f1_hm(y_true, y_pred, 3) == pytest.approx(52 / 75)
    # UF1 = mean(4/5, 1/2, 2/3) differs: the harmonic mean of the macros is not the mean of F1s
    assert unweighted_f1(y_true, y_pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


@pytest.mark.parametrize("y_true, y_pred, classes, match", [
    ([0, 1], [0], 2, "equal lengths"),
    ([], [], 2, "empty"),
    ([0, 3], [0, 1], 3, r"y_true\[1\] = 3 "),
    ([0, 1], [0, -1], 3, r"y_pred\[1\]"),
    ([0, 1.5], [0, 1], 3, r"y_true\[1\]"),
    ([0, float("nan")], [0, 1], 3, r"y_true\[1\]"),
    (["negative", "angry"], ["negative", "positive"], CLASSES, "'angry'"),
    ([[0, 1]], [[0, 1]], 2, "1-D"),
    ([True, False], [True, True], 2, "booleans"),
    ([0], [0], 0, "at least one class"),
    ([0], [0], ["a", "a"], "duplicates"),
])
def test_malformed_input_raises(y_true, y_pred, classes, match):
    with pytest.raises(MetricsError, match=match):
        unweighted_f1(y_true, y_pred, classes)


def _hand_table() -> pd.DataFrame:
    """Three subjects; subject id "01" occurs in two datasets and must not be merged."""
    rows = [
        # sample_id,       dataset,  subject, fold,       y_true, y_pred
        ("casme2/01/a", "casme2", "01", "casme2/01", 0, 0),
        ("casme2/01/b", "casme2", "01", "casme2/01", 0, 0),
        ("casme2/01/c", "casme2", "01", "casme2/01", 1, 0),
        ("casme2/02/a", "casme2", "02", "casme2/02", 2, 2),
        ("casme2/02/b", "casme2", "02", "casme2/02", 2, 1),
        ("samm/01/a", "samm", "01", "samm/01", 1, 1),
        ("samm/01/b", "samm", "01", "samm/01", 2, 2),
        ("samm/01/c", "samm", "01", "samm/01", 0, 0),
    ]
    table = pd.DataFrame(rows, columns=["sample_id", "dataset", "subject", "fold", "y_true", "y_pred"])
    for index, name in enumerate(CLASSES):
        table[f"p_{name}"] = np.where(table["y_pred"] == index, 0.8, 0.1)
    return table


def test_compute_metrics_on_hand_built_table():
    metrics = compute_metrics(_hand_table(), CLASSES)
    assert set(metrics) == {"acc", "uf1", "uar", "macro_f1", "per_class", "per_dataset", "per_subject_mean",
                            "n_folds", "n_samples", "confusion_matrix", "classes"}
    # pooled confusion matrix rows: [3,0,0], [1,1,0], [0,1,2]
    assert metrics["confusion_matrix"] == [[3, 0, 0], [1, 1, 0], [0, 1, 2]]
    assert metrics["acc"] == pytest.approx(6 / 8)
    assert metrics["uf1"] == pytest.approx((6 / 7 + 1 / 2 + 4 / 5) / 3)
    assert metrics["uar"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    # macro precision (3/4 + 1/2 + 1)/3 = 3/4, macro recall 13/18 -> HM 39/53
    assert metrics["macro_f1"] == pytest.approx(39 / 53)
    assert metrics["per_class"] == {
        "negative": {"recall": pytest.approx(1.0), "f1": pytest.approx(6 / 7), "support": 3},
        "positive": {"recall": pytest.approx(0.5), "f1": pytest.approx(0.5), "support": 2},
        "surprise": {"recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3},
    }
    assert metrics["n_folds"] == 3 and metrics["n_samples"] == 8
    assert metrics["classes"] == list(CLASSES)


def test_per_subject_mean_differs_from_pooled():
    metrics = compute_metrics(_hand_table(), CLASSES)
    # casme2/01: acc 2/3, classes {0,1}: F1 (4/5, 0), recall (1, 0)
    # casme2/02: acc 1/2, class {2}: F1 2/3, recall 1/2
    # samm/01:   all correct
    expected = {
        "acc": (2 / 3 + 1 / 2 + 1) / 3,
        "uf1": ((4 / 5 + 0) / 2 + 2 / 3 + 1) / 3,
        "uar": ((1 + 0) / 2 + 1 / 2 + 1) / 3,
    }
    assert metrics["per_subject_mean"] == pytest.approx(expected)
    assert not math.isclose(metrics["per_subject_mean"]["acc"], metrics["acc"])
    assert not math.isclose(metrics["per_subject_mean"]["uf1"], metrics["uf1"])


def test_per_dataset_splits():
    per_dataset = compute_metrics(_hand_table(), CLASSES)["per_dataset"]
    assert set(per_dataset) == {"casme2", "samm"}
    # casme2 rows: [2,0,0], [1,0,0], [0,1,1]
    assert per_dataset["casme2"] == pytest.approx({"acc": 3 / 5, "uf1": (0.8 + 0 + 2 / 3) / 3,
                                                   "uar": (1 + 0 + 0.5) / 3, "n_samples": 5})
    assert per_dataset["samm"] == pytest.approx({"acc": 1.0, "uf1": 1.0, "uar": 1.0, "n_samples": 3})


def test_class_without_support_has_undefined_per_class_scores():
    table = _hand_table()
    table = table[table["y_true"] != 1].assign(y_pred=lambda t: t["y_pred"].replace(1, 0))
    per_class = compute_metrics(table, CLASSES)["per_class"]
    assert per_class["positive"] == {"recall": None, "f1": None, "support": 0}


def test_compute_metrics_rejects_bad_tables():
    table = _hand_table()
    with pytest.raises(MetricsError, match="fold"):
        compute_metrics(table.drop(columns="fold"), CLASSES)
    with pytest.raises(MetricsError, match="empty"):
        compute_metrics(table.iloc[:0], CLASSES)
    with pytest.raises(MetricsError, match="casme2/01/a"):
        compute_metrics(pd.concat([table, table.iloc[:1]]), CLASSES)
    with pytest.raises(MetricsError, match="y_pred"):
        compute_metrics(table.assign(y_pred=table["y_pred"] + 1), CLASSES)


def test_read_predictions_keeps_subject_ids_as_strings(tmp_path):
    path = tmp_path / "predictions.csv"
    _hand_table().to_csv(path, index=False)
    table = read_predictions(path)
    assert table["subject"].tolist() == ["01", "01", "01", "02", "02", "01", "01", "01"]
    assert compute_metrics(table, CLASSES) == compute_metrics(_hand_table(), CLASSES)


def test_read_predictions_names_file_and_missing_column(tmp_path):
    path = tmp_path / "predictions.csv"
    _hand_table().drop(columns="y_true").to_csv(path, index=False)
    with pytest.raises(MetricsError, match=r"predictions\.csv.*y_true"):
        read_predictions(path)
    table = _hand_table()
    table.loc[3, "subject"] = None
    table.to_csv(path, index=False)
    with pytest.raises(MetricsError, match=r"predictions\.csv, line 5: empty 'subject'"):
        read_predictions(path)
    with pytest.raises(MetricsError, match="not found"):
        read_predictions(tmp_path / "absent.csv")
