"""``graft compare``: several routes on the same split under a time budget, cheapest first, with a leaderboard.

Order: routes registered ``features_only`` (a head on cached features) before routes that train the
backbone; seeds run round by round (every route's seed 0 before any seed 1), so a tight budget still
gives one result per route. Before each run its time is estimated from throughput measured on this
machine (one timed inference batch and one timed training step), corrected by the ratio of measured
to estimated time of the runs already done; a run that would overrun the budget is skipped, and a
running one is stopped at the end of the epoch that used the budget up. Both are said in the leaderboard.
"""
from __future__ import annotations

import itertools
import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import timm
import torch

from graft.analysis import read_history
from graft.backbones import create_model
from graft.console import Reporter
from graft.data.transforms import TransformedImages, eval_transform, resolve_preprocessing
from graft.errors import GraftError
from graft.fitting import fit
from graft.lifecycle import Lifecycle, resolve_recipe
from graft.placement import Placement
from graft.report import plot_route_curves, save_figure, table, write_html
from graft.report_data import read_records
from graft.routes import get_route, route_names
from graft.runs import load_run, partial_path
from graft.train.groups import parse_stages
from graft.train.loop import StopTraining, stretch_factor, train_batch_size


class BudgetStop(Exception):
    """Raised by the epoch callback when the next epoch would overrun the budget."""


@dataclass
class Entry:
    """One (route, seed) of a comparison. ``status``: done, skipped (before it started), stopped (budget reached) or failed."""

    route: str
    seed: int
    status: str
    test_accuracy: Optional[float] = None
    seconds: float = 0.0
    estimate: float = 0.0
    run: Optional[str] = None
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Comparison:
    entries: list[Entry]
    leaderboard: list[dict[str, Any]]
    budget: Optional[float]
    seconds: float
    folder: Path
    report: Optional[Path] = None


def parse_budget(text: Optional[str | float]) -> Optional[float]:
    """'20m' / '90s' / '1.5h' / '1200' -> seconds (None: no budget)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    value, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        raise GraftError(f"budget '{text}' is not a duration; e.g. --budget 20m, 90s or 1.5h") from None
    if seconds <= 0:
        raise GraftError(f"budget '{text}' must be positive")
    return seconds


def default_routes() -> list[str]:
    """Registered routes suited to plain single-label DATA: those needing no unlabelled images or teacher
    (and registered ``compared``)."""
    return [n for n in route_names() if not get_route(n).unlabeled and get_route(n).compared]


def order_routes(routes: Sequence[str]) -> list[str]:
    """Cached-feature routes first, then the rest, each in the given order."""
    known = route_names()
    unknown = [r for r in routes if r not in known]
    if unknown:
        raise GraftError(f"unknown route(s) {unknown}; choose from {', '.join(known)}")
    return sorted(dict.fromkeys(routes), key=lambda r: 0 if get_route(r).features_only else 1)


@dataclass
class Throughput:
    """Seconds per image on this machine: inference (eval mode, no grad) and one training step (forward + backward)."""

    infer: float
    train: float


def measure_throughput(recipe: Any, images: Any, batch: int = 32, placement: Placement = Placement()) -> Throughput:
    """Time one inference batch and one training step of the recipe's backbone on ``batch`` of ``images`` (after a warm-up),
    on ``placement``'s device under its precision (the runs' own)."""
    model = create_model(recipe.model.backbone, len(images.classes), weights=recipe.model.weights, pretrained=recipe.model.pretrained)
    device = placement.target(model)
    model = model.to(device)
    pre = resolve_preprocessing(timm.data.resolve_model_data_config(model), recipe.data)
    data = TransformedImages(images, eval_transform(pre))
    readable = (item for item in map(data.__getitem__, range(len(images))) if item is not None)  # None: a file that did not decode
    x = torch.stack([item[0] for item in itertools.islice(readable, batch)]).to(device)
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    if recipe.model.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    timings = []
    for train in (False, True):
        model.train(train)
        for attempt in range(2):  # the first pass warms up allocators and kernels
            started = time.perf_counter()
            with placement.autocast(device):
                if train:
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                else:
                    with torch.inference_mode():
                        model(x)
            if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
        timings.append(elapsed / len(x))
    return Throughput(*timings)


def estimate_seconds(route: str, recipe: Any, sizes: dict[str, int], speed: Throughput) -> float:
    """Expected seconds of one run: features of every image for cached-feature routes; otherwise every epoch
    of the recipe's stages (stretched to ``train.min_steps``) over the training images plus validation, and the test images once.
    An epoch of a ``new`` stage (only the new head trains: no backbone gradients) costs an inference pass per image,
    any other a training step (measured: finetune on 8,500 CIFAR-10 images at 96 px, ``new:1,all:4``, took 245 s; priced
    at a training step per stage it was estimated at 316 s, at an inference pass for ``new`` 274 s)."""
    spec = get_route(route)
    everything = sum(sizes.values()) * speed.infer
    if spec.features_only:
        return everything
    stages = parse_stages(recipe.train.stages)
    batch = train_batch_size(sizes["train"], recipe.data.batch_size)
    steps = max(1, sizes["train"] // batch)
    floor = recipe.train.min_steps if spec.min_steps else 0
    stretch = stretch_factor(steps, stages, floor)
    return everything + sum(s.epochs * stretch * (sizes["train"] * (speed.infer if s.train == "new" else speed.train) + sizes["val"] * speed.infer)
                            for s in stages)


def compare(data: Any, routes: Optional[Sequence[str]] = None, backbone: Optional[str] = None, weights: Optional[str] = None, *,
            val: Any = None, test: Any = None, seeds: int = 1, budget: Optional[str | float] = None, out: Optional[str | Path] = None,
            overrides: Sequence[str] = (), quiet: bool = False) -> Comparison:
    """Run ``routes`` (default: :func:`default_routes`) for ``seeds`` seeds on the same split of ``data``; return the leaderboard.

    Writes each run plus ``leaderboard.json`` and a self-contained ``report.html`` to ``out``.
    """
    limit = parse_budget(budget)
    reporter = Reporter(quiet=quiet)
    order = order_routes(list(routes) if routes else default_routes())
    if seeds < 1:
        raise GraftError(f"--seeds must be at least 1, got {seeds}")
    folder = Path(out) if out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
    if folder.exists() and any(folder.iterdir()):
        raise GraftError(f"{folder}: comparison folder exists and is not empty; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    base = resolve_recipe(None, overrides, **{"model.backbone": backbone, "model.weights": weights, "data.train": _path(data),
                                              "data.val": _path(val), "data.test": _path(test)})
    life = Lifecycle.for_inference(quiet=quiet, recipe=base)  # the device and precision every run of the comparison gets
    train, val_set, test_set = life.splits()
    sizes = {"train": len(train), "val": 0 if val_set is None else len(val_set), "test": 0 if test_set is None else len(test_set)}
    speed = measure_throughput(base, train, placement=life.placement)
    reporter.print(f"throughput: {1 / speed.infer:.0f} images/s inference, {1 / speed.train:.0f} images/s training; "
                   f"routes in order: {', '.join(order)}" + (f"; budget {limit:.0f} s" if limit else ""))
    runner = BudgetedRunner(started, limit, sizes, speed, reporter)
    entries: list[Entry] = []
    for seed in range(seeds):
        for route in order:
            recipe = base.override([f"runtime.seed={seed}"])
            entry, run = runner.run(route, seed, recipe, folder / f"{route}-s{seed}", data, val, test)
            entries.append(entry)
            if run is not None:
                entry.test_accuracy = run.metrics.get("test_accuracy")
                reporter.print(f"{route} seed {seed}: test accuracy {_percent(entry.test_accuracy)} in {entry.seconds:.0f} s "
                               f"(estimated {entry.estimate:.0f} s)")
    comparison = Comparison(entries, leaderboard(entries, order), limit, round(time.time() - started, 1), folder)
    (folder / "leaderboard.json").write_text(json.dumps({"leaderboard": comparison.leaderboard, "budget_seconds": limit,
                                                         "seconds": comparison.seconds, "sizes": sizes, "throughput": asdict(speed),
                                                         "entries": [asdict(e) for e in entries]}, indent=1, default=str))
    comparison.report = write_comparison_report(comparison, f"graft compare: {Path(str(data)).name} on {base.model.backbone}")
    return comparison


class BudgetedRunner:
    """Runs routes one after another under one time budget (``limit`` seconds from ``started``; None: no budget).

    Before each run its time is estimated (:func:`estimate_seconds`, corrected by the ratio of measured to estimated
    time of the first run of its kind; a route that already ran is expected to take what it took); a run that would
    overrun is skipped, a running one is stopped at the end of the epoch that used the budget up (:class:`_BudgetWatch`).
    `graft compare` and route auto (:mod:`graft.selection`) share it. ``keep_stopped`` (route auto): a run
    the budget stops ends with its best epoch so far (:class:`graft.train.loop.StopTraining`) and is returned, with status
    "stopped"; otherwise (`graft compare`, whose leaderboard compares whole runs) it is thrown away."""

    def __init__(self, started: float, limit: Optional[float], sizes: dict[str, int], speed: Throughput, reporter: Reporter,
                 keep_stopped: bool = False) -> None:
        self.started, self.limit, self.sizes, self.speed, self.reporter = started, limit, sizes, speed, reporter
        self.keep_stopped = keep_stopped
        self.correction: dict[bool, float] = {}
        self.measured: dict[str, float] = {}

    def run(self, route: str, seed: int, recipe: Any, target: Path, data: Any, val: Any, test: Any,
            overrides: Sequence[str] = (), exempt: bool = False, callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
            reuse: bool = False) -> tuple[Entry, Any]:
        """Fit ``route`` with ``recipe`` (+ ``overrides``) into ``target`` unless the budget forbids it (``exempt``: never
        skipped or stopped; ``callbacks`` get its epoch records as in :func:`graft.fit`); (the entry, the finished run or None).
        ``reuse`` (a resumed route auto): a run already finished at ``target`` is taken as it is, an interrupted one resumed."""
        if reuse and (target / "model.json").exists():
            run = load_run(target)
            seconds = float(run.metrics.get("seconds", 0.0))
            halted = [r["reason"] for r in read_records(target / "metrics.jsonl") if r.get("event") == "halted"]
            self.measured[route] = seconds
            self.reporter.print(f"{route} seed {seed}: finished before the interruption, taken from {target}")
            return Entry(route, seed, "stopped" if halted else "done", None, seconds, seconds, str(target), reason="; ".join(halted),
                         history=read_history(target)), run
        resume = partial_path(target) if reuse and partial_path(target).exists() else None
        cheap = get_route(route).features_only
        estimate = self.measured.get(route) or estimate_seconds(route, recipe, self.sizes, self.speed) * self.correction.get(cheap, 1.0)
        elapsed = time.time() - self.started
        if self.limit is not None and not exempt and elapsed + estimate > self.limit:
            entry = Entry(route, seed, "skipped", estimate=estimate,
                          reason=f"estimated {estimate:.0f} s, {max(self.limit - elapsed, 0):.0f} s of the budget left")
            self.reporter.print(f"[yellow]skip[/] {route} seed {seed}: {entry.reason}")
            return entry, None
        watch = _BudgetWatch(self.started, None if exempt else self.limit, halt=self.keep_stopped)
        run_started = time.time()
        try:
            if resume is not None:  # its own recipe and split, saved when it started
                run = fit(resume=resume, quiet=True, callbacks=[watch, *callbacks])
            else:
                run = fit(data, route=route, recipe=recipe, val=val, test=test, out=target, quiet=True, callbacks=[watch, *callbacks],
                          overrides=overrides)
        except (BudgetStop, GraftError) as stop:  # a route that cannot run on this data fails alone; the others go on
            shutil.rmtree(partial_path(target), ignore_errors=True)
            status = "stopped" if isinstance(stop, BudgetStop) else "failed"
            self.reporter.print(f"[yellow]{status}[/] {route} seed {seed}: {stop}")
            return Entry(route, seed, status, seconds=round(time.time() - run_started, 1), estimate=estimate, reason=str(stop)), None
        seconds = round(time.time() - run_started, 1)
        if watch.reached is not None:  # kept with its best epoch so far; its time is no measure of a whole run
            self.reporter.print(f"[yellow]stopped[/] {route} seed {seed}: {watch.reached}; kept with its best epoch so far")
            return Entry(route, seed, "stopped", None, seconds, round(estimate, 1), str(run.path), watch.reached,
                         history=read_history(run.path)), run
        if route not in self.measured:
            self.correction[cheap] = seconds / max(estimate_seconds(route, recipe, self.sizes, self.speed), 1e-9)
        self.measured[route] = seconds
        return Entry(route, seed, "done", None, seconds, round(estimate, 1), str(run.path), history=read_history(run.path)), run


class _BudgetWatch:
    """Epoch callback: stop a run at the end of the epoch that used the budget up.

    (A callback cannot tell a route's last epoch, so it does not stop early on a forecast: that could throw away a
    run at its very end. Runs that would overrun are skipped before they start instead.) ``halt``: end the run with its
    best epoch so far (:class:`graft.train.loop.StopTraining`) instead of throwing it away (:class:`BudgetStop`)."""

    def __init__(self, started: float, limit: Optional[float], halt: bool = False) -> None:
        self.started, self.limit, self.halt = started, limit, halt
        self.reached: Optional[str] = None  # why it stopped the run

    def __call__(self, record: dict[str, Any]) -> None:
        now = time.time()
        if self.limit is not None and now - self.started > self.limit:
            self.reached = (f"budget reached after epoch {record.get('epoch')} of stage {record.get('stage_name')} "
                            f"({now - self.started:.0f} of {self.limit:.0f} s used)")
            raise (StopTraining if self.halt else BudgetStop)(self.reached)


def leaderboard(entries: Sequence[Entry], order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per route: mean ± std test accuracy over finished seeds, mean seconds, what was skipped or stopped; best first."""
    rows = []
    for route in order:
        mine = [e for e in entries if e.route == route]
        done = [e for e in mine if e.status == "done" and e.test_accuracy is not None]
        accuracies = [e.test_accuracy for e in done]
        notes = [f"seed {e.seed} {e.status}: {e.reason}" for e in mine if e.status != "done"]
        rows.append({"route": route, "accuracy": statistics.mean(accuracies) if accuracies else float("nan"),
                     "std": statistics.stdev(accuracies) if len(accuracies) > 1 else (0.0 if accuracies else float("nan")),
                     "seeds": len(done), "seconds": statistics.mean([e.seconds for e in done]) if done else float("nan"),
                     "notes": "; ".join(notes)})
    return sorted(rows, key=lambda r: -r["accuracy"] if r["accuracy"] == r["accuracy"] else np.inf)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}%"


def _path(value: Any) -> Any:
    return None if value is None else str(value)


def leaderboard_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """The leaderboard as printed: accuracy 'mean ± std' in percent."""
    return [{"rank": i + 1, "route": r["route"],
             "test accuracy": "-" if r["seeds"] == 0 else f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f}" if r["seeds"] > 1 else _percent(r["accuracy"]),
             "seeds": r["seeds"], "seconds per run": "-" if r["seeds"] == 0 else f"{r['seconds']:.0f}", "notes": r["notes"]}
            for i, r in enumerate(comparison.leaderboard)]


def print_leaderboard(comparison: Comparison, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    budget = f", budget {comparison.budget:.0f} s" if comparison.budget else ""
    board = Table(title=f"leaderboard ({comparison.seconds:.0f} s in all{budget})")
    rows = leaderboard_rows(comparison)
    for column in rows[0] if rows else []:
        board.add_column(column, justify="left" if column in ("route", "notes") else "right")
    for row in rows:
        board.add_row(*[str(v) for v in row.values()])
    (console or Console()).print(board)


def write_comparison_report(comparison: Comparison, title: str) -> Path:
    """report.html: the leaderboard (``<table id="leaderboard">``) and every route's curves (first seed) on one chart."""
    histories = {}
    for entry in comparison.entries:
        if entry.status == "done" and entry.history and entry.route not in histories:
            histories[entry.route] = entry.history
    images = [save_figure(plot_route_curves(histories), comparison.folder / "curves.png")] if histories else []
    runs = [{"route": e.route, "seed": e.seed, "status": e.status, "test accuracy": e.test_accuracy if e.test_accuracy is not None else float("nan"),
             "seconds": e.seconds, "estimated seconds": round(e.estimate, 1), "run or reason": e.run or e.reason} for e in comparison.entries]
    sections = [("Leaderboard", table(leaderboard_rows(comparison), id="leaderboard")), ("Runs", table(runs))]
    if not histories:
        sections.append(("Curves", "<p>no route trained in epochs, so there are no curves</p>"))
    return write_html(comparison.folder / "report.html", title, sections, images)
