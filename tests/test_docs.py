"""The documentation site builds strictly and offline, and its generated pages say what the code and the bench JSON say."""
import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs", reason="mkdocs not installed: pip install -e '.[test]'")
pytest.importorskip("mkdocstrings", reason="mkdocstrings not installed: pip install -e '.[test]'")
pytest.importorskip("material", reason="mkdocs-material not installed: pip install -e '.[test]'")


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(site.parent), "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1",
                   "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)],
                          cwd=root, env=environment, capture_output=True, text=True, timeout=600)


def text_of(html: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.read_text()).replace("&plusmn;", "±"))


def bench_rows(name: str) -> tuple[list[list[str]], str]:
    """The table rows bench/NAME.py --table prints from its JSON (as lists of cells), and all it printed."""
    printed = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--table"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")})
    assert printed.returncode == 0, printed.stderr
    return [[c.strip() for c in line.strip("|").split("|")] for line in printed.stdout.splitlines()
            if line.startswith("|") and not line.startswith("|---")], printed.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("docs") / "site"
    result = build(ROOT, site)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return site


def test_results_pages_are_the_bench_tables(site):
    for name, page in [("transfer_basics", "results/index.html"), ("baselines", "results/baselines.html"), ("semi", "results/semi.html"),
                       ("exemplar", "results/exemplar.html"), ("source_transfer", "results/source-transfer.html"),
                       ("grow", "results/grow.html"), ("compare_routes", "results/compare.html"), ("oquab", "results/oquab.html"),
                       ("spread", "results/spread.html"), ("throughput", "results/throughput.html"),
                       ("auto", "results/auto.html"), ("distill", "results/distill.html")]:
        text = text_of(site / page.replace(".html", "/index.html").replace("results/index/index.html", "results/index.html"))
        rows, _ = bench_rows(name)
        assert rows, name
        for cells in rows:
            assert " ".join(cells) in text, (name, cells)


def test_readme_headline_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0].strip()
    _, printed = bench_rows("transfer_basics")
    assert block == printed.strip()
    assert len(readme.splitlines()) <= 200 and "make demo" in readme and "make test" in readme and "mkdocs serve" in readme


def test_recipe_page_lists_every_key_and_cli_page_every_flag(site):
    from graft.cli import _parser
    from graft.recipe import Recipe

    def keys(value, prefix=""):
        for field in dataclasses.fields(value):
            inner = getattr(value, field.name)
            yield from keys(inner, f"{prefix}{field.name}.") if dataclasses.is_dataclass(inner) else [f"{prefix}{field.name}"]

    recipe_text = text_of(site / "recipes" / "index.html")
    for key in keys(Recipe()):
        assert f" {key} " in recipe_text, key
    cli_text = text_of(site / "cli" / "index.html")
    commands = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in commands.choices.items():
        assert f"graft {name}" in cli_text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in cli_text, (name, flag)
    api_text = text_of(site / "api" / "index.html")
    assert "Train a classifier on data by route" in api_text  # graft.fit's docstring, through mkdocstrings


def test_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    for part in ("docs", "bench", "src"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.log"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "runs.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stdout + result.stderr
