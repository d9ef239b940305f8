"""Run directories: written under a temporary name, moved into place when complete, resumable.

Layout of a finished run::

    recipe.yaml      the resolved Recipe
    metrics.jsonl    one JSON object per epoch / event
    model.safetensors  weights (backbone + head)
    model.json       backbone, classes, preprocessing, route, summary metrics, recipe
    env.json         library versions, git revision, command line
    report.html      (+ PNGs)

While training, ``checkpoint/`` holds the resume state (weights, optimizer tensors, JSON).
No pickled objects are ever written.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from graft.errors import GraftError
from graft.recipe import Recipe
from graft.run_files import absolute_paths, read_json, read_tensors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from graft.run_report import RunReport


def partial_path(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def default_run_path(recipe: Recipe, root: str | Path = "runs") -> Path:
    backbone = recipe.model.backbone.replace(":", "-").replace("/", "-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{recipe.route}-{backbone}-{stamp}"
    n = 1
    while path.exists() or partial_path(path).exists():
        n += 1
        path = Path(root) / f"{recipe.route}-{backbone}-{stamp}-{n}"
    return path


def environment() -> dict[str, Any]:
    """Library versions, git revision and command line, for ``env.json``."""
    import lightning_fabric
    import sklearn
    import timm
    import torchvision

    from graft.version import __version__

    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {"graft": __version__, "git_revision": revision, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "lightning_fabric": lightning_fabric.__version__, "scikit_learn": sklearn.__version__,
            "platform": platform.platform(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """A run being written. ``path`` is where it will be; files go to ``work`` until :meth:`finish`."""

    def __init__(self, final: Path, writer: bool = True) -> None:
        self.path = Path(final)
        self.work = partial_path(self.path)
        self.writer = writer  # False on non-zero DDP ranks: they compute but never write

    @classmethod
    def create(cls, final: Path, recipe: Recipe, writer: bool = True) -> "RunDirectory":
        run = cls(final, writer)
        if run.path.is_file() or (run.path.exists() and not run.path.is_dir()):
            raise GraftError(f"{run.path}: --out names an existing file; give a new folder name")
        if run.path.exists():
            raise GraftError(f"{run.path}: run directory already exists; choose another --out or remove it")
        if writer:
            if run.work.exists():
                raise GraftError(f"{run.work}: an interrupted run is there; continue it with `graft fit --resume {run.path}` or remove it")
            try:
                run.work.mkdir(parents=True)
            except OSError as error:
                raise GraftError(f"{run.path}: cannot create the run directory ({error.strerror}); give a writable --out") from None
            _atomic_write(run.work / "recipe.yaml", absolute_paths(recipe).to_yaml())
            _atomic_write(run.work / "env.json", json.dumps(environment(), indent=2))
        return run

    @classmethod
    def reopen(cls, path: str | Path, writer: bool = True) -> tuple["RunDirectory", Recipe]:
        """An interrupted run (given by its final name or its ``.NAME.partial`` folder) and its recipe."""
        path = Path(path)
        if path.name.startswith(".") and path.name.endswith(".partial"):
            path = path.parent / path.name[1: -len(".partial")]
        run = cls(path, writer)
        if run.path.exists() and not run.work.exists():
            if (run.path / "model.json").exists():
                raise GraftError(f"{run.path}: this run is already complete; nothing to resume")
            raise GraftError(f"{run.path}: not a graft run (no {run.work.name} beside it); give the run directory `graft fit` printed")
        if not (run.work / "recipe.yaml").exists():
            raise GraftError(f"{run.work}: no interrupted run here (no recipe.yaml); check the path")
        return run, Recipe.from_yaml(run.work / "recipe.yaml")

    def log(self, **record: Any) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.writer:
            with (self.work / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def write_json(self, name: str, data: Any) -> None:
        if self.writer:
            _atomic_write(self.work / name, json.dumps(data, indent=2, default=str))

    # --- resume state -------------------------------------------------------------------------
    def save_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, best: Optional[dict[str, torch.Tensor]],
                        state: dict[str, Any]) -> None:
        """Write weights, optimizer tensors and JSON state into a fresh folder, then swap it in."""
        if not self.writer:
            return
        tmp = self.work / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(_plain(model.state_dict()), str(tmp / "model.safetensors"))
        if best is not None:
            save_file(_plain(best), str(tmp / "best.safetensors"))
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "param_groups": groups}))
        old = self.work / "checkpoint.old"
        current = self.work / "checkpoint"
        if current.exists():
            os.replace(current, old)
        os.replace(tmp, current)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> Optional[dict[str, Any]]:
        """The last checkpoint as {"model", "best", "optimizer", "state"}, or None."""
        folder = self._complete_checkpoint()
        if folder is None:
            return None
        state = read_json(folder / "state.json", "--resume", dict)
        if "param_groups" not in state or "loop" not in state:
            raise GraftError(f"{folder / 'state.json'}: not a graft checkpoint state; remove {folder} to restart the run from its beginning")
        best = folder / "best.safetensors"
        fix = f"remove {folder} to restart the run from its beginning"
        return {"model": read_tensors(folder / "model.safetensors", fix),
                "best": read_tensors(best, fix) if best.exists() else None,
                "optimizer": _unflatten_optimizer(read_tensors(folder / "optimizer.safetensors", fix), state.pop("param_groups")),
                "state": state}

    def _complete_checkpoint(self) -> Optional[Path]:
        """The newest complete checkpoint folder. :meth:`save_checkpoint` writes ``checkpoint.tmp`` (state.json last),
        renames ``checkpoint`` to ``checkpoint.old``, then ``checkpoint.tmp`` to ``checkpoint``: a kill between the two
        renames leaves no ``checkpoint`` but a complete ``checkpoint.tmp``, which is the newer one."""
        for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
            if (self.work / name / "state.json").exists():
                return self.work / name
        return None

    # --- what a resumed run must agree with ------------------------------------------------------
    def check_data(self, sets: dict[str, Any]) -> None:
        """Record the fingerprints of the run's image sets (``data.json``) at the start; on resume, refuse other images."""
        prints = {name: images.fingerprint() for name, images in sets.items() if images is not None}
        file = self.work / "data.json"
        if not self.writer:
            return
        if not file.exists():
            _atomic_write(file, json.dumps(prints, indent=2))
            return
        saved = read_json(file, "--resume", dict)
        changed = sorted(name for name in set(saved) | set(prints) if saved.get(name) != prints.get(name))
        if changed:
            raise GraftError(f"{self.path}: the {' and '.join(changed)} images differ from those this run started with "
                             f"(fingerprints in {file}); put the original data back or start a new run")

    def discard_if_untrained(self) -> None:
        """Remove a run folder that failed before any training was saved, so the same command can simply be run again."""
        if self.writer and self.work.exists() and self._complete_checkpoint() is None and not (self.work / "parts").exists():
            shutil.rmtree(self.work, ignore_errors=True)

    def records(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl so far (a line cut short by a kill is left out)."""
        file = self.work / "metrics.jsonl"
        records = []
        for line in file.read_text().splitlines() if file.exists() else []:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def seconds_before(self) -> float:
        """Seconds spent by the earlier processes of a run being resumed (call it before this process logs): the time
        each process spent between its first and last record of metrics.jsonl; each resumed process starts at a 'resume'."""
        spans, first, last = 0.0, None, None
        for record in self.records():
            if record.get("event") == "resume" and first is not None:
                spans, first = spans + (last - first), None
            first = record["time"] if first is None else first
            last = record["time"]
        return spans + (last - first if first is not None else 0.0)

    def returned_model(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Validation accuracy of the model a route returned and which epoch it is (0: the starting model), from the
        training loop's last 'returned' record; routes without that loop report their best epoch."""
        returned = [r for r in self.records() if r.get("event") == "returned"]
        if returned:
            return {"val_accuracy": returned[-1]["val_accuracy"], "returned_epoch": returned[-1]["returned_epoch"]}
        if history and "val_accuracy" in history[0]:
            return {"val_accuracy": max(h["val_accuracy"] for h in history)}
        return {}

    # --- finished parts of a route that trains several models in a row (pseudo-label rounds) --
    def save_part(self, name: str, model: nn.Module, meta: dict[str, Any]) -> None:
        """Keep a finished sub-model; its epoch checkpoint is dropped first, so a checkpoint always
        belongs to the first part that is not saved (an interruption in between only repeats that part)."""
        if not self.writer:
            return
        shutil.rmtree(self.work / "checkpoint", ignore_errors=True)
        folder = self.work / "parts"
        folder.mkdir(exist_ok=True)
        save_file(_plain(model.state_dict()), str(folder / f"{name}.safetensors"))
        _atomic_write(folder / f"{name}.json", json.dumps(meta, default=str))

    def load_part(self, name: str) -> Optional[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """(weights, meta) of a part saved by :meth:`save_part`, or None."""
        meta = self.work / "parts" / f"{name}.json"
        if not meta.exists():
            return None
        fix = f"remove {meta} to train that part again"
        return read_tensors(self.work / "parts" / f"{name}.safetensors", fix), read_json(meta, "--resume", dict)

    # --- completion ---------------------------------------------------------------------------
    def save_model(self, model: nn.Module, meta: dict[str, Any]) -> None:
        if self.writer:
            save_file(_plain(model.state_dict()), str(self.work / "model.safetensors"))
            self.write_json("model.json", meta)

    def finish(self) -> Path:
        """Drop the resume state and move the run into place."""
        if self.writer:
            shutil.rmtree(self.work / "checkpoint", ignore_errors=True)
            shutil.rmtree(self.work / "parts", ignore_errors=True)
            os.replace(self.work, self.path)
        return self.path


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{slot}"] = value.detach().cpu().contiguous()
            elif value is not None:
                tensors[f"{index}/{slot}"] = torch.tensor(value)
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, slot = key.split("/", 1)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": groups}


@dataclass
class Run:
    """A finished run, loaded for evaluation, prediction, export or transfer."""

    path: Path
    model: nn.Module
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def preprocessing(self) -> Any:
        from graft.data.transforms import Preprocessing

        return Preprocessing.from_dict(self.meta["preprocessing"])

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    def plot(self, kind: str = "curves") -> "Figure":
        """A new matplotlib Figure (no pyplot) of this run: curves | confusion | per_class | top_losses."""
        from graft.run_report import plot_run

        return plot_run(self.path, kind)

    def report(self) -> "RunReport":
        """report.html drawn again from this run's files (picking up `graft analyze`'s pages), as an object a Jupyter
        cell shows as HTML."""
        from graft.run_report import RunReport, write_run_report

        return RunReport(write_run_report(self.path))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, backbone={self.meta['backbone']!r}, route={self.meta['route']!r}, metrics={self.metrics})"


def load_run(path: str | Path) -> Run:
    """Rebuild a finished run's model from ``model.json`` + ``model.safetensors`` (no hub access)."""
    from graft.backbones import create_model

    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.exists():
        hint = " (it was interrupted: `graft fit --resume` it)" if partial_path(path).exists() else ""
        raise GraftError(f"{path}: not a finished graft run{hint}; give a directory written by `graft fit`")
    meta = read_json(meta_path, "RUN", dict)
    missing = [key for key in ("backbone", "classes", "preprocessing", "route") if key not in meta]
    if missing or not isinstance(meta["classes"], list) or not meta["classes"]:
        raise GraftError(f"{meta_path}: not a graft run description (missing or empty {missing or ['classes']}); "
                         "give a directory written by `graft fit`")
    import graft.growth  # noqa: F401 - registers the grown heads ("grow" kind) with graft.heads
    from graft.heads import restore_head

    def build(backbone: str, head: Optional[dict[str, Any]]) -> nn.Module:
        # adaptation layers (adapt, patches), grown networks (grow-*)
        return restore_head(create_model(backbone, len(meta["classes"]), pretrained=False), head)

    if meta.get("ensemble"):  # route auto's ensemble: every member's network in one module (graft.ensembles)
        from graft.ensembles import Ensemble

        members = meta["ensemble"]["members"]
        model: nn.Module = Ensemble([build(m["backbone"], m.get("head")) for m in members], [m["weight"] for m in members])
    else:
        model = build(meta["backbone"], meta.get("info", {}).get("head"))
    state = read_tensors(path / "model.safetensors", "copy the run again or train it again")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k, v in state.items() if k in expected and expected[k].shape != v.shape]
    if missing or unexpected or wrong:  # one line, not torch's list of every mismatched tensor
        raise GraftError(f"{path}/model.safetensors does not match backbone '{meta['backbone']}' ({len(missing)} tensors missing, "
                         f"{len(unexpected)} unexpected, {len(wrong)} of another shape, e.g. {(missing + unexpected + wrong)[0]}); "
                         "model.json and the weights come from different runs")
    model.load_state_dict(state, strict=True)
    return Run(path, model.eval(), meta)
