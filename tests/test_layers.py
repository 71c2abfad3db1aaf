"""The floors are a contract that runs: `lint-imports` (import-linter, contracts in pyproject.toml) passes on the
tree, and fails on a scratch copy of it into which one forbidden import has been added."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERDICT = re.compile(r"^(.+) (KEPT|BROKEN)(?: \(\d+ ignored imports?\))?$", re.MULTILINE)  # contract, verdict
PACKAGES = ("recipes", "datagen", "layerflow_model", "filters", "manifests")
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                              "sys.exit(lint_imports_command())", "--no-cache"]


def lint(folder: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy is analysed, not the installed tree
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder), "COLUMNS": "400"}  # one line per contract
    return subprocess.run(LINT, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def test_the_tree_keeps_every_layer_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_pristine_copy_keeps_them(scratch):
    result = lint(scratch)
    assert result.returncode == 0 and list(dict(VERDICT.findall(result.stdout)).values()) == ["KEPT"] * 5


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("manifests/layers.py", "import datagen.build", "Floors"),  # the contract imports upward
    ("manifests/schema.py", "from filters import policy", "Floors"),
    ("filters/policy.py", "from datagen import config", "Floors"),
    ("layerflow_model/data.py", "from filters import alpha", "the model imports only the manifest contract"),
    ("layerflow_model/train.py", "import datagen.sources", "independent"),
    ("datagen/build.py", "import ray", "Only the pipeline runner"),
    ("datagen/stages.py", "import datagen.build", "No import cycles between sibling modules"),
    ("datagen/sources.py", "import recipes.reproduce", "Floors"),  # only cli.py imports a recipe
])
def test_one_forbidden_import_breaks_a_contract(scratch, module, line, contract):
    path = scratch / module
    original = path.read_text(encoding="utf-8")
    path.write_text(f"{original}\n\ndef _added():\n    {line}  # noqa\n", encoding="utf-8")  # a lazy import counts
    try:
        result = lint(scratch)
    finally:
        path.write_text(original, encoding="utf-8")
    assert result.returncode != 0
    verdicts = dict(VERDICT.findall(result.stdout))
    assert [name for name, verdict in verdicts.items() if verdict == "BROKEN" and contract in name], result.stdout
