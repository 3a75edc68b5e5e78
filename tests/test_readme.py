"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    from merkit.data.synthetic import write_synthme

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.chdir(tmp_path)
    write_synthme(tmp_path / "data" / "synth", subjects=3, clips_per_subject=5, seed=0, size=64, fps=100)
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "synth-logreg" / "metrics.json").is_file()
