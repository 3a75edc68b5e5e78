"""The annotation policies end to end: `datasets inspect`, `train` and the API report every
repair and every row left out, --strict fails, --skip-bad drops, and emotions outside a
protocol's table are never dropped silently."""

import json

import openpyxl
import pytest
from typer.testing import CliRunner

from fixtures_datasets import CASME2_SHEET, build_casme2, build_samm, build_smic, small_casme2_rows, small_samm_rows
from merkit.api import inspect_dataset, prepare_run
from merkit.cli import app
from merkit.data.protocols import apply_protocol, label_samples
from merkit.data.registry import load_dataset
from merkit.errors import ProtocolError

runner = CliRunner()
FIX_KEYS = {"file", "row", "sample_id", "field", "old", "new", "rule", "detail"}


def invoke(*args, code=0):
    """The command's output with line wrapping undone (the console wraps at its width)."""
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output if "--json" in args else " ".join(result.output.split())


@pytest.fixture
def casme2_root(tmp_path):
    """Three clips: row 3's apex lies after its offset (only 60 is a slip of 65 on disk), row 4's
    emotion is misspelt."""
    rows = small_casme2_rows()
    rows[1].update(onset=40, apex=65, offset=60, frames=[40, 50, 60, 65])
    rows[2]["emotion"] = "hapiness"
    return build_casme2(tmp_path / "casme2", rows)


def test_inspect_lists_fixes_and_skips(casme2_root):
    report = json.loads(invoke("datasets", "inspect", "casme2", "--root", casme2_root, "--json"))
    assert report["policy"] == "repair" and report["n_samples"] == 2
    [fix] = report["fixes"]
    assert set(fix) == FIX_KEYS
    assert (fix["row"], fix["sample_id"], fix["field"], fix["old"], fix["new"], fix["rule"]) == (
        3, "casme2/sub01/EP03_02", "apex", 65, 60, "digit-typo")
    assert fix["file"].endswith(CASME2_SHEET)
    [skipped] = report["skipped"]
    assert "row 4" in skipped and "casme2/sub02/EP01_11f" in skipped and "'hapiness'" in skipped
    assert "casme2-5" in skipped and "happiness" in skipped  # the table's own words are listed

    output = invoke("datasets", "inspect", "casme2", "--root", casme2_root)
    assert "warning: skipped" in output and "hapiness" in output
    assert "[digit-typo]" in output and "apex 65 -> 60" in output


def test_strict_fails_and_skip_bad_drops(casme2_root):
    output = invoke("datasets", "inspect", "casme2", "--root", casme2_root, "--strict", code=2)
    assert "row 3" in output and "apex frame 65 is after the offset" in output and "Traceback" not in output
    report = json.loads(invoke("datasets", "inspect", "casme2", "--root", casme2_root, "--skip-bad", "--json"))
    assert report["n_samples"] == 1 and report["fixes"] == []
    assert [line.split(", ")[1][:5] for line in report["skipped"]] == ["row 3", "row 4"]
    output = invoke("datasets", "inspect", "casme2", "--root", casme2_root, "--strict", "--skip-bad", code=2)
    assert "not both" in output


def test_strict_refuses_an_unknown_emotion(casme2_root):
    sheet = casme2_root / CASME2_SHEET
    book = openpyxl.load_workbook(sheet)
    book.active["E3"] = 50  # row 3's apex back inside its clip: only the spelling is left
    book.save(sheet)
    with pytest.raises(ProtocolError, match="row 4.*'hapiness' is not in protocol casme2-5's table"):
        inspect_dataset("casme2", casme2_root, on_error="strict")
    with pytest.raises(ProtocolError, match="hapiness"):
        apply_protocol(load_dataset("casme2", casme2_root).samples, "casme2-5")
    labelled = label_samples(load_dataset("casme2", casme2_root).samples, "casme2-5")
    assert len(labelled.samples) == 2 and len(labelled.skipped) == 1 and labelled.left_out == {}


def test_protocol_exclusions_are_counted_not_skipped(tmp_path):
    rows = small_casme2_rows()
    rows[0]["emotion"] = "fear"  # casme2-5 leaves fear out by design
    rows[1]["emotion"] = "angry"  # CASME II has no anger: unknown to casme2-5
    report = inspect_dataset("casme2", build_casme2(tmp_path, rows))
    assert report["left_out"] == {"fear": 1} and report["n_samples"] == 1
    assert len(report["skipped"]) == 1 and "'angry'" in report["skipped"][0]


def test_a_run_records_fixes_and_skips(tmp_path):
    data = tmp_path / "synth"
    invoke("synth", "--out", data, "--subjects", 3, "--clips-per-subject", 4, "--seed", 2)
    sheet = data / "CASME2-coding-synthme.xlsx"
    book = openpyxl.load_workbook(sheet)
    header = [c.value for c in book.active[1]]
    apex, emotion = header.index("ApexFrame") + 1, header.index("Estimated Emotion") + 1
    offset = book.active.cell(row=2, column=header.index("OffsetFrame") + 1).value
    book.active.cell(row=2, column=apex, value=offset + 1)  # past the clip; many slips fit (x4 for 194)
    book.active.cell(row=3, column=emotion, value="hapiness")
    book.save(sheet)
    run = tmp_path / "run"
    output = invoke("train", "--dataset", "synthme", "--root", data, "--model", "logreg", "--epochs", 1,
                    "--out", run, "--cache", tmp_path / "cache")
    assert "warning: skipped" in output and "hapiness" in output and "1 annotation fix" in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_samples"] == 11
    [fix] = metrics["fixes"]
    assert set(fix) == FIX_KEYS and (fix["row"], fix["field"], fix["new"], fix["rule"]) == (
        2, "apex", None, "apex-unreliable")
    assert fix["sample_id"].startswith("synthme/sub01/")
    assert any("hapiness" in line for line in metrics["skipped"])
    log = (run / "log.txt").read_text()
    assert "annotation fix" in log and "[apex-unreliable]" in log and "hapiness" in log

    run_skip = tmp_path / "run-skip"
    invoke("train", "--dataset", "synthme", "--root", data, "--model", "logreg", "--epochs", 1, "--out", run_skip,
           "--cache", tmp_path / "cache", "--skip-bad")
    metrics = json.loads((run_skip / "metrics.json").read_text())
    assert metrics["n_samples"] == 10 and metrics["fixes"] == [] and len(metrics["skipped"]) == 2
    output = invoke("train", "--dataset", "synthme", "--root", data, "--model", "logreg", "--epochs", 1,
                    "--out", tmp_path / "run-strict", "--cache", tmp_path / "cache", "--strict", code=2)
    assert "row 2" in output and "apex frame" in output


def test_prepare_run_carries_fixes_and_skips(casme2_root):
    run = prepare_run(dataset="casme2", root=casme2_root, model="logreg")
    assert [f.rule for f in run.fixes] == ["digit-typo"]
    assert len(run.skipped) == 1 and "hapiness" in run.skipped[0]
    assert len(run.samples) == 2


def test_datasets_list_documents_the_rules_and_the_composite_roots():
    output = invoke("datasets", "list")
    for rule in ("digit-typo", "apex-unreliable", "offset-not-coded", "first-frame", "swapped-onset-offset",
                 "onset-unreliable", "offset-unreliable", "known-fix"):
        assert rule in output
    assert "--strict" in output and "--skip-bad" in output
    assert "repairs (default policy)" in output and "folder kind: recording" in output
    assert "--option" not in output and "MERKIT_CASME2_ROOT" in output


def test_the_composite_reads_source_roots_from_the_environment(tmp_path, monkeypatch):
    """What `datasets list` says for megc2019: sources not under --root come from MERKIT_<SOURCE>_ROOT."""
    monkeypatch.setenv("MERKIT_CASME2_ROOT", str(build_casme2(tmp_path / "c", small_casme2_rows())))
    monkeypatch.setenv("MERKIT_SAMM_ROOT", str(build_samm(tmp_path / "s", small_samm_rows())))
    monkeypatch.setenv("MERKIT_SMIC_ROOT", str(build_smic(tmp_path / "m", {1: (1, 1, 1)})))
    (tmp_path / "empty").mkdir()
    report = json.loads(invoke("datasets", "inspect", "megc2019", "--root", tmp_path / "empty", "--json"))
    # CASME II: happiness + disgust (others left out); SAMM: anger + happiness (other left out); SMIC: 3
    assert report["per_dataset"]["casme2"]["n_samples"] == 2 and report["per_dataset"]["samm"]["n_samples"] == 2
    assert report["n_samples"] == 7 and report["left_out"] == {"other": 1, "others": 1}
