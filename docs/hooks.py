"""MkDocs hook: pages hold markers that are replaced at build time by text generated from the code and the bench results.

    <!-- bench: NAME -->     the tables `python bench/NAME.py --table` prints, from bench/results/NAME.json
    <!-- recipe-keys -->     every key of graft.recipe.Recipe: section, type, default, flag and the comment beside it
    <!-- cli -->             `graft COMMAND --help` of every sub-command, from graft.cli's argparse parsers

An unknown marker, a missing JSON file or a bench script that fails stops the build (so `mkdocs build --strict` fails).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import io
import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- (bench: [a-z_]+|recipe-keys|cli) -->")


def _import_paths() -> None:
    for folder in (ROOT / "src", ROOT / "bench"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def bench_tables(name: str) -> str:
    """What ``bench/NAME.py --table`` prints, by calling its own table function on its saved JSON."""
    _import_paths()
    module = importlib.import_module(name)
    results = ROOT / "bench" / "results" / f"{name}.json"
    if not results.exists():
        raise FileNotFoundError(f"{results}: no saved results for the docs (run `python bench/{name}.py` first)")
    printer = getattr(module, "print_table", None) or getattr(module, "print_tables")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        printer(json.loads(results.read_text()))
    return out.getvalue().strip() + f"\n\n<small>Generated from `bench/results/{name}.json` (`python bench/{name}.py --table`).</small>"


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _comments(cls: type) -> dict[str, str]:
    """The ``# comment`` beside each field in the dataclass's source."""
    found = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def recipe_keys() -> str:
    """One table per Recipe section, generated from the dataclasses (types, defaults, comments) and graft fit's flags."""
    _import_paths()
    from graft.cli import FIT_FLAGS
    from graft.recipe import Recipe

    flags = {key: flag for flag, (key, _, _) in FIT_FLAGS.items()}
    helps = {key: text for _, (key, _, text) in FIT_FLAGS.items()}  # a key without a code comment gets its flag's help
    flags.update({"route": "--route", "model.backbone": "--backbone", "model.weights": "--weights", "model.pretrained": "--no-pretrained",
                  "data.train": "DATA", "data.val": "--val", "data.test": "--test", "runtime.out": "--out", "runtime.quiet": "--quiet",
                  "runtime.loggers": "--logger", "pseudo.audit": "--audit", "distill.with_pseudo": "--with-pseudo"})
    recipe = Recipe()
    blocks = ["| key | type | default | flag | note |", "|---|---|---|---|---|",
              f"| `route` | str | `{recipe.route}` | `--route` | the route (`graft fit --help` lists them) |", ""]

    def section(cls: type, prefix: str, value: Any) -> None:
        hints, comments = typing.get_type_hints(cls), _comments(cls)
        rows, nested = [], []
        for field in dataclasses.fields(cls):
            key, current = f"{prefix}{field.name}", getattr(value, field.name)
            if dataclasses.is_dataclass(current):
                nested.append((type(current), key + ".", current))
                continue
            flag = f"`{flags[key]}`" if key in flags else ""
            note = (comments.get(field.name) or helps.get(key, "")).replace("|", "\\|")
            rows.append(f"| `{key}` | {_type_name(hints[field.name])} | `{json.dumps(current)}` | {flag} | {note} |")
        doc = inspect.cleandoc(cls.__doc__ or "")
        blocks.extend([f"## `{prefix[:-1]}`", "", doc, "", "| key | type | default | flag | note |", "|---|---|---|---|---|", *rows, ""])
        for args in nested:
            section(*args)

    for field in dataclasses.fields(Recipe):
        value = getattr(recipe, field.name)
        if dataclasses.is_dataclass(value):
            section(type(value), field.name + ".", value)
    return "\n".join(blocks)


def cli_reference() -> str:
    """``graft --help`` and each sub-command's ``--help``, as argparse prints them (80 columns)."""
    _import_paths()
    os.environ["COLUMNS"] = "100"
    from graft.cli import _parser

    parser = _parser()
    blocks = ["## `graft`", "", "```text", parser.format_help().rstrip(), "```", ""]
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in commands.choices.items():
        blocks += [f"## `graft {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(blocks)


def _replace(match: re.Match) -> str:
    marker = match.group(1)
    if marker.startswith("bench: "):
        text = bench_tables(marker[len("bench: "):])
    else:
        text = recipe_keys() if marker == "recipe-keys" else cli_reference()
    return f"\n\n{text}\n\n"  # blank lines around, or a table right after a paragraph would be read as its text


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- " not in markdown:
        return markdown
    unknown = [m for m in re.findall(r"<!-- ([a-z][a-z_-]*(?:: [a-z_]+)?) -->", markdown) if not MARKER.fullmatch(f"<!-- {m} -->")]
    if unknown:
        raise ValueError(f"{page.file.src_path}: unknown generation marker(s) {unknown}; see docs/hooks.py")
    return MARKER.sub(_replace, markdown)
