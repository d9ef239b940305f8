"""The layers of DESIGN.md §3 hold: import-linter's contracts in pyproject.toml are kept, and they do catch a breach."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import graft

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SOURCE = Path(graft.__file__).resolve().parent  # the graft under test (src/graft of this checkout)


def lint(package_parent: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(package_parent)}
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
               "--config", str(PYPROJECT), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def test_import_contracts_are_kept():
    result = lint(SOURCE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_and_a_cycle_break_the_contracts(tmp_path):
    copy = tmp_path / "src" / "graft"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    # the feature layer reaching up into the lifecycle: upward, and a cycle (the lifecycle imports features' users)
    features = copy / "features.py"
    features.write_text(features.read_text() + "\nfrom graft import lifecycle  # noqa: E402,F401\n")
    result = lint(copy.parent)
    assert result.returncode == 1
    assert "graft.features is not allowed to import graft.lifecycle" in result.stdout
    assert "0 kept, 2 broken" in result.stdout
