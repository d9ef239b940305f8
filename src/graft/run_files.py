"""Reading what a run directory holds, and what a resumed run must keep: each damaged file is one line naming it.

Only JSON and safetensors are ever read (nothing is unpickled).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from graft.errors import GraftError
from graft.recipe import Recipe

RUNTIME_ONLY = ("runtime.quiet", "runtime.threads", "runtime.progress")  # how a run is watched or paced, never what it computes


def resume_recipe(saved: Recipe, overrides: list[str], run: Path) -> Recipe:
    """The saved recipe of ``run``; overrides that would change what it computes are refused, naming the keys."""
    changed = saved.override(overrides)
    before, after = _flat(saved.to_dict()), _flat(changed.to_dict())
    differ = [key for key in after if after[key] != before.get(key) and key not in RUNTIME_ONLY]
    if differ:
        raise GraftError(f"--resume {run}: cannot change {', '.join(differ)} of a run half done (it would mix two recipes); "
                         f"drop {'them' if len(differ) > 1 else 'it'}, or start a new run with `graft fit --recipe {run}/recipe.yaml`")
    return changed


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def read_json(path: Path, what: str, kind: type = dict) -> Any:
    """A JSON file of type ``kind``, or one line naming the file (``what``: the flag or argument it was given by)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GraftError(f"{path}: missing; {what} needs a complete graft run directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GraftError(f"{path}: damaged ({type(error).__name__}: {error}); {what} needs a complete graft run directory") from None
    if not isinstance(value, kind):
        raise GraftError(f"{path}: holds a {type(value).__name__}, not a JSON {kind.__name__}; {what} needs a complete graft run directory")
    return value


def read_tensors(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file, or one line naming the file and ``fix`` (never a pickle: graft never unpickles)."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise GraftError(f"{path}: missing; {fix}") from None
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for truncated or foreign files
        raise GraftError(f"{path}: not a readable safetensors file ({type(error).__name__}: {str(error).splitlines()[0]}); {fix}") from None


PATH_KEYS = (("data", "train"), ("data", "val"), ("data", "test"), ("data", "unlabeled"), ("model", "weights"),
             ("distill", "teacher"), ("grow", "previous"))


def absolute_paths(recipe: Recipe) -> Recipe:
    """``recipe`` with every path that exists made absolute, so ``--resume`` works from any folder."""
    values = recipe.to_dict()
    backbone = values["model"]["backbone"]
    if backbone.startswith("run:") and Path(backbone[4:]).exists():
        values["model"]["backbone"] = f"run:{Path(backbone[4:]).resolve()}"
    for section, key in PATH_KEYS:
        value = values[section][key]
        if isinstance(value, str) and value and Path(value).exists():
            values[section][key] = str(Path(value).resolve())
    return Recipe.from_dict(values)
