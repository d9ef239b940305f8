"""Shared helpers of the bench scripts: the ../shared assets, subsets, mean ± std tables, incremental JSON."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET = SHARED / "weights" / "mobilenetv2_100.imagenet.timm.safetensors"
# benches whose results were measured before graft stretched tiny schedules to ``train.min_steps`` keep their epochs
# as given, so that their commands reproduce the published numbers (transfer_basics and source_transfer use the default)
EPOCHS_AS_GIVEN = "train.min_steps=0"

if os.environ.get("GRAFT_THREADS"):  # e.g. GRAFT_THREADS=1 to run two benches side by side on two cores
    import torch

    torch.set_num_threads(int(os.environ["GRAFT_THREADS"]))


def require_shared() -> None:
    if not MOBILENET.exists():
        raise SystemExit(f"{SHARED}: the shared datasets and weights are missing; set GRAFT_SHARED to the shared/ folder")


def subset_npz(source: Path, per_class: int, seed: int, folder: Path) -> Path:
    """Write ``per_class`` images of each class of ``source`` (seeded) to an .npz and return its path."""
    from graft.data.split import per_class_subset

    out = folder / f"{source.stem}_{per_class}pc_s{seed}.npz"
    if not out.exists():
        data = np.load(source)
        idx = per_class_subset(data["labels"], per_class, seed)
        np.savez(out, images=data["images"][idx], labels=data["labels"][idx], classes=data["classes"])
    return out


def pool_npz(per_class: int, seed: int, size: Optional[int], folder: Path, source: Optional[Path] = None) -> Path:
    """Training images of ``source`` (CIFAR-10 by default) outside the labelled subset of ``subset_npz(source, per_class,
    seed)``: ``size`` of them (seeded; all if fewer are left), or all of them (None), with their labels kept for --audit only."""
    from graft.data.split import per_class_subset

    source = source or SHARED / "datasets" / "cifar10_train.npz"
    prefix = "" if source.name == "cifar10_train.npz" else f"{source.stem}_"  # CIFAR pools keep the names semi.py made
    out = folder / f"{prefix}pool_{per_class}pc_s{seed}_{size or 'all'}.npz"
    if not out.exists():
        data = np.load(source)
        rest = np.setdiff1d(np.arange(len(data["labels"])), per_class_subset(data["labels"], per_class, seed))
        chosen = rest if size is None or size >= len(rest) else np.sort(np.random.default_rng(1000 + seed).choice(rest, size, replace=False))
        np.savez(out, images=data["images"][chosen], labels=data["labels"][chosen], classes=data["classes"])
    return out


def add_result_options(parser: Any, name: str) -> None:
    """``--out`` (bench/results/NAME.json) and ``--table`` (print the saved results' table and stop), as every bench has."""
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / f"{name}.json"))
    parser.add_argument("--table", action="store_true", help="only print the table of the results saved in --out")


def printed_table(args: Any, printer: Callable[[dict], None]) -> bool:
    """With ``--table``: print the table of the results saved in ``--out`` and return True (the bench then stops)."""
    if args.table:
        printer(json.loads(Path(args.out).read_text()))
    return bool(args.table)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def add_row(path: Path, row: dict[str, Any], keep: Callable[[dict[str, Any]], bool] = lambda r: True, **fields: Any) -> dict[str, Any]:
    """Append ``row`` to ``path``'s "runs" under a file lock, re-reading the file first, so several processes of
    one bench (e.g. one per task, one CPU thread each) can add to the same results; rows ``keep`` rejects
    (made with other settings) are dropped, and ``fields`` (config, ...) are set."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {"runs": []}
        data["runs"] = [r for r in data["runs"] if keep(r)] + [row]
        data.update(fields)
        save(path, data)
    return data


def min_steps_of(route: str) -> int:
    """The step floor a route's runs get by default: 0 for routes that train no backbone on images (``linear``)
    or whose head starts trained (``lpft``), from the route registry."""
    from graft.recipe import Recipe
    from graft.routes import get_route

    spec = get_route(route)
    return 0 if spec.features_only or not spec.min_steps else Recipe().train.min_steps


def head_init_of(route: str) -> str:
    """How a route's new head starts by default (``model.head_init``); "-" for routes where it does not matter: the
    probe's head (``linear``, ``lpft``) is fitted, not trained from its start, and ``scratch`` is random throughout."""
    from graft.recipe import Recipe
    from graft.routes import get_route

    spec = get_route(route)
    trains_new_head = spec.pretrained and spec.min_steps and not spec.features_only
    return Recipe().model.head_init if trains_new_head else "-"


def current(row: dict[str, Any]) -> bool:
    """Rows made under another step floor or another head initialisation measured another model: they are redone
    (a bench row records both; rows from before ``model.head_init`` existed had the library's initialisation)."""
    expected = head_init_of(row["route"])
    return row.get("min_steps", 0) == min_steps_of(row["route"]) and (expected == "-" or row.get("head_init", "library") == expected)


def save(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
