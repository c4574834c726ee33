"""docs/s3prl.md followed literally: every Python block runs, alone, in a fresh interpreter, from a folder
laid out like a clone's root (its `daisy/`, so `daisy/assets/hubert-tiny-synth` resolves) holding the
YAML files the page says to save (a YAML block whose first line is `# NAME.yaml`)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("s3prl", reason="s3prl extra not installed (pip install -e '.[s3prl]')")

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "s3prl.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", PAGE, flags=re.M | re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SAVED = {m.group(1): code for lang, code in BLOCKS if lang == "yaml" for m in [re.match(r"# (\S+\.yaml)", code)] if m}


def test_the_page_has_what_the_tests_run():
    assert len(PYTHON) >= 4
    assert set(SAVED) == {"entropy.yaml", "fixed.yaml", "example.yaml"}
    assert 'pip install -e ".[s3prl]"' in PAGE  # installs this clone


@pytest.fixture
def clone_root(tmp_path):
    (tmp_path / "daisy").symlink_to(ROOT / "daisy", target_is_directory=True)
    for name, code in SAVED.items():
        (tmp_path / name).write_text(code)
    return tmp_path


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(code, id=f"block{i}", marks=[pytest.mark.slow] if "run_s3prl_downstream" in code else [])
        for i, code in enumerate(PYTHON)
    ],
)
def test_python_block_runs(clone_root, code):
    (clone_root / "block.py").write_text(code)
    done = subprocess.run([sys.executable, "block.py"], cwd=clone_root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
    for line in code.splitlines():  # a print's comment shows its output (up to a closing "...")
        shown = re.match(r"\s*print\(.*\)\s+# (.*?)(\.\.\.)?$", line)
        if shown:
            assert shown.group(1) in done.stdout, done.stdout
