"""Route ``auto`` (``graft fit DATA --route auto [--budget 15m]``): measure, try, pick and combine, by validation only.

1. Measure the training split as `graft advise` does (size, closeness to the backbone's source).
2. Fit candidates on the run's own train/val split, none of them given a test split (``data.hold_out_test``):
   the probe (``linear``, always run, with validation held out of its fit: ``linear.pool_validation=false``, so its
   validation accuracy is honest), the other cached-feature routes, then the gradient routes in advise's order
   followed by ``lpft`` and ``finetune`` when advise left them out,
   skipped or stopped by the budget as in `graft compare` (:class:`graft.comparison.BudgetedRunner`); a candidate the
   budget stops is kept with its best epoch on validation so far.
   They live in ``RUN/candidates/<route>``.
3. Score every finished candidate's validation probabilities; the winner is the best validation accuracy (ties: the
   lower validation log-loss). With two or more candidates, greedy ensemble selection with replacement (Caruana et al.
   2004, :func:`graft.ensembles.greedy_selection`) on the same validation probabilities; an ensemble of two or more
   members that beats the best single candidate on validation *clearly* is the result (route ``ensemble``).
4. Horizontal-flip test-time augmentation is kept only when it raises the winner's validation accuracy clearly (and
   never for runs trained without flips).
5. Only then is the test split read: the winner is evaluated on it once. The result is an ordinary run directory of the
   winner (its recipe, weights, curves), whose model.json ``auto`` key and report hold the leaderboard (validation
   numbers), the measurements and why the winner won.

"Clearly" (:data:`CLEAR_GAIN`): the gain passes a one-sided exact McNemar test at that level on the validation images
(:func:`graft.ensembles.gain_p_value`). A gain of three or four images out of 524 passes on accuracy alone and was
measured to cost 1.6-3.0 points on test (PneumoniaMNIST, bench/auto.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from graft import fitting
from graft.advice import advise
from graft.comparison import BudgetedRunner, default_routes, measure_throughput, order_routes, parse_budget
from graft.data.sources import ImageSet
from graft.ensembles import Ensemble, accuracy_and_log_loss, gain_p_value, greedy_selection, same_preprocessing
from graft.errors import GraftError
from graft.evaluation import evaluate_logits
from graft.inference import resolve_tta, run_probabilities, run_scores
from graft.lifecycle import Lifecycle, as_path, resolve_recipe
from graft.placement import Placement
from graft.recipe import Recipe
from graft.routes import get_route
from graft.run_files import absolute_paths, resume_recipe
from graft.runs import Run, RunDirectory

AUTO = "auto"
SETTINGS = "auto_settings.json"  # what a resumed auto run must keep: its budget and the fit_auto keywords
PROBE = "linear"  # always fitted, whatever the budget: the floor auto returns when nothing else fits in it
# tried after advise's ranking when it leaves them out (e.g. finetune for few labels), while the budget lasts: measured
# on CIFAR-10 with 100 labels/class, finetune beats advise's picks (bench/results/transfer_basics.json)
TRANSFER = ("lpft", "finetune")
CLEAR_GAIN = 0.05  # an ensemble or flips must beat the plain winner on validation at this one-sided McNemar p-value


def fit(data: Any = None, route: Optional[str] = None, backbone: Optional[str] = None, weights: Optional[str] = None, *,
        val: Any = None, test: Any = None, out: Optional[str | Path] = None, recipe: Optional[Recipe] = None,
        overrides: Sequence[str] = (), quiet: bool = False, progress: bool = True, resume: Optional[str | Path] = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), budget: Optional[str | float] = None, **auto: Any) -> Run:
    """Train a classifier on ``data`` by ``route`` and return the finished :class:`Run`: any route by
    :func:`graft.fitting.fit`; ``route="auto"`` measures the data, tries routes within ``budget`` (e.g. "15m") and keeps
    the best on validation, or their ensemble (:func:`fit_auto`, whose keywords ``routes``, ``ensemble`` and ``tta`` it takes).

    >>> run = graft.fit("train.npz", route="auto", backbone="mobilenetv2_100", weights="mnv2.safetensors", budget="15m")
    >>> run.meta["route"], run.metrics["test_accuracy"]  # the winner (or "ensemble"); model.json's "auto" says why
    """
    if resume is not None:
        _, saved = RunDirectory.reopen(resume)
        if saved.route == AUTO:
            if budget is not None or auto:
                raise GraftError(f"--resume {resume}: a resumed route auto keeps its budget and settings; leave them out")
            return fit_auto(resume=resume, overrides=overrides, quiet=quiet, callbacks=callbacks)
    elif (route if route is not None else recipe.route if recipe is not None else None) == AUTO:
        return fit_auto(data, backbone, weights, val=val, test=test, out=out, recipe=recipe, overrides=overrides, quiet=quiet,
                        budget=budget, callbacks=callbacks, **auto)
    if budget is not None or auto:
        given = "--budget" if budget is not None else ", ".join(auto)
        raise GraftError(f"{given} applies to --route auto (and `graft compare`); leave it out for route {route or 'the recipe route'}")
    return fitting.fit(data, route, backbone, weights, val=val, test=test, out=out, recipe=recipe, overrides=overrides, quiet=quiet,
                       progress=progress, resume=resume, callbacks=callbacks)


def fit_auto(data: Any = None, backbone: Optional[str] = None, weights: Optional[str] = None, *, val: Any = None, test: Any = None,
             out: Optional[str | Path] = None, recipe: Optional[Recipe] = None, overrides: Sequence[str] = (), quiet: bool = False,
             budget: Optional[str | float] = None, routes: Optional[Sequence[str]] = None, ensemble: str = "auto",
             tta: str = "auto", callbacks: Sequence[Callable[[dict[str, Any]], None]] = (), resume: Optional[str | Path] = None) -> Run:
    """Route auto on ``data``: the winner's run (see the module docstring).

    ``routes``: the candidates (default: the cached-feature routes, then advise's ranking); the probe always runs.
    ``ensemble``: auto (when it wins on validation), never, or always (equal weights on every finished candidate: for tests
    and studies). ``tta``: auto (flip when it wins on validation), none or flip. ``callbacks`` get every candidate's
    epoch records (each with its ``route``), as in :func:`graft.fit`. ``resume``: an interrupted auto run, continued with its
    own recipe, budget and settings: finished candidates are taken as they are, an interrupted one resumes from its
    checkpoint, and the budget counts the time the earlier processes spent.
    """
    if resume is not None:
        reopened, saved = RunDirectory.reopen(resume)
        base = resume_recipe(saved, list(overrides), Path(resume)).override(["runtime.quiet=true"] * quiet)
        if not (reopened.work / SETTINGS).exists():
            raise GraftError(f"--resume {resume}: this auto run has no {SETTINGS} (it was started by an older graft); "
                             "run `graft fit ... --route auto` again with another --out")
        settings = json.loads((reopened.work / SETTINGS).read_text())
        limit, routes, ensemble, tta = (settings[k] for k in ("budget_seconds", "routes", "ensemble", "tta"))
    else:
        limit = parse_budget(budget)
        base = resolve_recipe(recipe, overrides, route=AUTO, **{"model.backbone": backbone, "model.weights": weights,
                              "data.train": as_path(data), "data.val": as_path(val), "data.test": as_path(test),
                              "runtime.out": None if out is None else str(out), "runtime.quiet": quiet or None})
    if ensemble not in ("auto", "never", "always") or tta not in ("auto", "none", "flip"):
        raise GraftError(f"ensemble={ensemble!r}, tta={tta!r}: choose ensemble auto, never or always and tta auto, none or flip")
    if base.runtime.devices != "1":
        raise GraftError(f"--devices {base.runtime.devices}: route auto fits its candidates one after another on one device; "
                         "leave out --devices (or fit one route on several devices)")
    life = Lifecycle.start(base)
    reporter = life.reporter
    train, val_set, test_set = life.splits()
    if train.multilabel:
        raise GraftError(f"{train.origin}: route auto covers single-label data; this set has several labels per image "
                         "(use --route finetune or adapt)")
    if val_set is None or not len(val_set):
        raise GraftError("route auto picks by validation accuracy and there is no validation split; give --val DATA or a "
                         "--val-fraction above 0")
    advice = advise(train, base.model.backbone, base.model.weights, val=val_set, seed=base.runtime.seed,
                    overrides=_measuring_overrides(base), quiet=True)
    order = order_routes(list(routes) if routes else [*[r for r in default_routes() if get_route(r).features_only], *advice.routes, *TRANSFER])
    order = order_routes([PROBE, *order]) if PROBE not in order else order
    reporter.print(f"route auto: {advice.size} + {advice.similarity} ({advice.measured}); candidates in order: {', '.join(order)}"
                   + (f"; budget {limit:.0f} s" if limit else ""))
    run, _, _ = life.open_run(resume, data={"train": train, "val": val_set, "test": test_set})
    started = life.started  # a resumed run: less the seconds its earlier processes spent (the budget counts them)
    if resume is None:
        run.write_json(SETTINGS, {"budget_seconds": limit, "routes": list(routes) if routes else None, "ensemble": ensemble, "tta": tta})
    run.log(event="auto", order=order, budget_seconds=limit)
    # candidates get the same train and val images and no test images (a given --test file is not passed on at all)
    held_out = ["data.test=null", "data.test_fraction=0"] if base.data.test else ["data.hold_out_test=true"]
    candidate_recipe = base.override([*held_out, "linear.pool_validation=false"])
    speed = measure_throughput(base, train, placement=life.placement)
    tested = len(test_set) if test_set is not None else 0
    runner = BudgetedRunner(started, limit, {"train": len(train), "val": len(val_set), "test": 0}, speed, reporter, keep_stopped=True)
    library: dict[str, tuple[Run, np.ndarray]] = {}
    rates: dict[str, float] = {}  # seconds per image of each finished candidate's scoring, measured on validation
    rows = []
    # a resumed run has only its recipe's paths (a set given in memory was recorded by its origin)
    given_train, given_val = (data, val) if resume is None else (base.data.train, base.data.val)
    for name in order:
        try:
            entry, candidate = runner.run(name, base.runtime.seed, candidate_recipe, run.work / "candidates" / name, given_train, given_val,
                                          None, exempt=name == PROBE, callbacks=[_tagged(c, name) for c in callbacks],
                                          reuse=resume is not None)
        except KeyboardInterrupt:
            life.interrupted(run, "graft fit")
            raise
        row = {"route": name, "status": entry.status, "val_accuracy": None, "val_log_loss": None, "seconds": entry.seconds,
               "estimated_seconds": round(entry.estimate, 1), "run": f"candidates/{name}" if candidate is not None else None,
               "reason": entry.reason}
        if candidate is not None:
            _check_same_split(candidate, train, val_set)
            scoring = time.time()
            probabilities = run_probabilities(candidate, run_scores(candidate, val_set, placement=life.placement, tta="none"))
            rates[name] = (time.time() - scoring) / len(val_set)
            library[name] = (candidate, probabilities)
            row["val_accuracy"], row["val_log_loss"] = accuracy_and_log_loss(probabilities, val_set.labels)
            reporter.print(f"{name}: validation accuracy {100 * row['val_accuracy']:.1f}% in {entry.seconds:.0f} s")
        rows.append(row)
        run.log(event="candidate", **{k: row[k] for k in ("route", "status", "val_accuracy", "seconds")})
    if not library:
        raise GraftError("route auto: no candidate finished (" + "; ".join(f"{r['route']} {r['status']}: {r['reason']}" for r in rows)
                         + "); give a larger --budget or check the data")
    done = sorted((r for r in rows if r["val_accuracy"] is not None), key=lambda r: (-r["val_accuracy"], r["val_log_loss"]))
    best = done[0]
    clock = _ScoringClock(started, limit, rates, len(val_set), tested)
    model, meta, chosen_probabilities, why, combined = _choose(library, best, val_set, ensemble, base, run.path, clock)
    chosen_accuracy = accuracy_and_log_loss(chosen_probabilities, val_set.labels)[0]
    chosen = Run(run.path, model, meta)
    members = [m["route"] for m in meta["ensemble"]["members"]] if meta["route"] == "ensemble" else [best["route"]]
    tta_choice = _choose_tta(chosen, val_set, chosen_probabilities, tta, life.placement, clock, members)
    meta["tta"] = tta_choice["used"]
    if tta_choice["used"] == "flip":
        chosen_accuracy = tta_choice["val_accuracy_flip"]
    evaluation, logits, metrics = None, None, {}
    if test_set is not None and len(test_set):  # the first and only time the test split is read
        logits = run_scores(chosen, test_set, placement=life.placement, tta=meta["tta"])
        evaluation = evaluate_logits(logits, test_set.labels, test_set.classes)
        metrics = {"test_accuracy": evaluation.accuracy, "test_count": evaluation.count}
    meta["metrics"] = {**{k: v for k, v in meta.get("metrics", {}).items() if not k.startswith("test_")},
                       "seconds": round(time.time() - started, 2), **metrics, "val_accuracy": chosen_accuracy}
    meta["auto"] = {"winner": meta["route"], "why": why, "leaderboard": rows, "measurements": advice.to_dict(), "order": order,
                    "budget_seconds": limit, "scoring_seconds_per_image": {k: round(v, 6) for k, v in rates.items()}, "ensemble": combined, "tta": tta_choice,
                    "candidates": "candidates",
                    "selected_on": f"validation split ({len(val_set)} images); test split read once, by the winner"}
    reporter.print(f"route auto: {why}")
    return life.finish_run(run, model, meta, evaluation, splits={"train": train, "val": val_set, "test": test_set}, test_logits=logits)


class _ScoringClock:
    """What the result's optional last steps cost against what is left of the budget: scoring ``passes`` x the images of
    a split with ``members`` costs the sum of their measured seconds per image (an ensemble runs every member).
    An ensemble or flips are used only when their scoring fits; the winner's one plain test pass is never refused, so
    it alone can end after the budget. (Keeping time back for it instead was measured to skip ``finetune`` on CIFAR-10
    with 1,000 labels/class, whose estimate only just fits 1.5x ``lpft``'s time: 76 % instead of 84 %.)"""

    def __init__(self, started: float, limit: Optional[float], rates: dict[str, float], val: int, test: int) -> None:
        self.started, self.limit, self.rates, self.sizes = started, limit, rates, {"val": val, "test": test}

    def cost(self, members: Sequence[str], **passes: int) -> float:
        return sum(self.rates[m] for m in members) * sum(n * self.sizes[split] for split, n in passes.items())

    def refusal(self, what: str, members: Sequence[str], **passes: int) -> Optional[str]:
        """Why ``what`` does not fit in the budget left (None: it fits, or there is no budget)."""
        if self.limit is None:
            return None
        cost, left = self.cost(members, **passes), self.limit - (time.time() - self.started)
        return None if cost <= left else f"{what} would take about {cost:.0f} s and {max(left, 0):.0f} s of the budget are left"


def _tagged(callback: Callable[[dict[str, Any]], None], route: str) -> Callable[[dict[str, Any]], None]:
    """``callback`` of a candidate's epoch records, each told which candidate it is of."""
    return lambda record: callback({**record, "route": route})


def _measuring_overrides(recipe: Recipe) -> list[str]:
    """The recipe keys advise's measurement must share with the runs (input size, preprocessing, device)."""
    keys = {"data.image_size": recipe.data.image_size, "data.crop_pct": recipe.data.crop_pct, "data.interpolation": recipe.data.interpolation,
            "model.pretrained": recipe.model.pretrained, "runtime.accelerator": recipe.runtime.accelerator,
            "runtime.precision": recipe.runtime.precision, "runtime.threads": recipe.runtime.threads}
    return [f"{key}={json.dumps(value)}" for key, value in keys.items() if value is not None]


def _check_same_split(candidate: Run, train: ImageSet, val: ImageSet) -> None:
    """Ensemble weights and the choice are only fair on one validation split: a candidate on other images is a bug, not a result."""
    prints = json.loads((candidate.path / "data.json").read_text()) if (candidate.path / "data.json").exists() else {}
    if prints.get("train") != train.fingerprint() or prints.get("val") != val.fingerprint() or "test" in prints:
        raise GraftError(f"{candidate.path}: this candidate was fitted on other images than route auto's train/val split")


def _choose(library: dict[str, tuple[Run, np.ndarray]], best: dict[str, Any], val: ImageSet, ensemble: str, base: Recipe,
            path: Path, clock: _ScoringClock) -> tuple[Any, dict[str, Any], np.ndarray, str, dict[str, Any]]:
    """(model, meta, validation probabilities, why, the ensemble attempt) of the result: the best candidate, or an
    ensemble (ensemble auto: only when it beats the best candidate clearly, :data:`CLEAR_GAIN`, and scoring the test
    split with all its members fits in the budget left)."""
    winner, single = library[best["route"]]
    # members must take one input: candidates whose preprocessing differs from the winner's are left out of the library
    names = [n for n, (r, _) in library.items() if same_preprocessing([r.meta["preprocessing"], winner.meta["preprocessing"]])]
    combined: dict[str, Any] = {"tried": False, "reason": "fewer than two finished candidates with the same preprocessing"}
    weights: Optional[np.ndarray] = None
    if ensemble != "never" and len(names) >= 2:
        selection = greedy_selection([library[n][1] for n in names], val.labels)
        weights = selection.weights if ensemble == "auto" else np.full(len(names), 1 / len(names))
        mixed = sum(w * library[n][1] for w, n in zip(weights, names))
        accuracy, loss = accuracy_and_log_loss(mixed, val.labels)
        members = {n: round(float(w), 4) for n, w in zip(names, weights) if w > 0}
        p_value = gain_p_value(mixed.argmax(1) == val.labels, single.argmax(1) == val.labels)
        combined = {"tried": True, "method": "greedy selection with replacement (Caruana et al. 2004)" if ensemble == "auto" else "equal weights",
                    "weights": members, "val_accuracy": accuracy, "val_log_loss": loss,
                    "gain_val": accuracy - best["val_accuracy"], "p_value": round(p_value, 4), "used": False}
        better = accuracy > best["val_accuracy"]
        wins = len(members) >= 2 and (ensemble == "always" or (better and p_value <= CLEAR_GAIN))
        late = clock.refusal("scoring the test split with the ensemble", members, test=1) if wins and ensemble == "auto" else None
        if late is not None:
            combined["reason"] = f"not used: {late}"
        elif len(members) >= 2 and better and not wins:
            combined["reason"] = (f"not used: its gain of {100 * (accuracy - best['val_accuracy']):+.1f} points could be luck "
                                  f"(one-sided McNemar p = {p_value:.2f} > {CLEAR_GAIN})")
        elif wins:
            combined["used"] = True
            chosen = [n for n in names if n in members]
            model = Ensemble([library[n][0].model for n in chosen], [members[n] for n in chosen])
            meta = {"backbone": winner.meta["backbone"], "route": "ensemble", "classes": winner.classes,
                    "preprocessing": winner.meta["preprocessing"], "metrics": {}, "history": [], "info": {},
                    "skipped_files": winner.meta.get("skipped_files", []), "recipe": base.to_dict(), "multilabel": False,
                    "ensemble": {"members": [{"run": f"candidates/{n}", "route": n, "backbone": library[n][0].meta["backbone"],
                                              "head": library[n][0].meta.get("info", {}).get("head"), "weight": members[n]} for n in chosen]}}
            why = (f"the ensemble {' + '.join(f'{members[n]:.2f} x {n}' for n in chosen)} has validation accuracy {100 * accuracy:.1f}%, "
                   f"{100 * (accuracy - best['val_accuracy']):+.1f} points over the best single candidate {best['route']}")
            return model, meta, mixed, why, combined
    runner_up = [r for r in library if r != best["route"]]
    why = (f"{best['route']} has the best validation accuracy ({100 * best['val_accuracy']:.1f}%) of {len(library)} finished "
           f"candidate(s)" + ("" if not combined.get("tried") else f"; the ensemble ({100 * combined['val_accuracy']:.1f}%) was "
                                 + (combined["reason"] if "reason" in combined else "not better"))
           + ("" if runner_up else "; no other candidate finished"))
    meta = dict(winner.meta)
    values = Recipe.from_dict(meta["recipe"]).override([f"data.test={json.dumps(base.data.test)}", f"data.test_fraction={base.data.test_fraction}",
                                                        "data.hold_out_test=false"])
    meta["recipe"] = values.to_dict()
    _adopt_files(winner.path, path, values)
    return winner.model, meta, single, why, combined


def _adopt_files(candidate: Path, final: Path, recipe: Recipe) -> None:
    """The run becomes the winner's: its recipe (with the run's test split) and its training records (the curves)."""
    work = RunDirectory(final).work
    (work / "recipe.yaml").write_text(absolute_paths(recipe).to_yaml())
    records = (candidate / "metrics.jsonl").read_text() if (candidate / "metrics.jsonl").exists() else ""
    with (work / "metrics.jsonl").open("a") as handle:
        handle.write("".join(line + "\n" for line in records.splitlines() if '"event": "done"' not in line))


def _choose_tta(chosen: Run, val: ImageSet, probabilities: np.ndarray, tta: str, placement: Placement, clock: _ScoringClock,
                members: Sequence[str]) -> dict[str, Any]:
    """Whether the result answers with flip averaging: kept (tta auto) only when it raises validation accuracy clearly
    over the plain validation ``probabilities`` (:data:`CLEAR_GAIN`), and tried only when the check on validation and a
    flipped test scoring fit in the budget left."""
    if tta == "none":
        return {"used": "none", "reason": "tta none was asked for"}
    try:
        resolve_tta(chosen, "flip")
    except GraftError as refused:
        if tta == "flip":
            raise
        return {"used": "none", "reason": str(refused)}
    late = None if tta == "flip" else clock.refusal("flip TTA (its check on validation and the flipped test scoring)", members,
                                                     val=2, test=2)
    if late is not None:
        return {"used": "none", "reason": f"not tried: {late}"}
    right = run_scores(chosen, val, placement=placement, tta="flip").argmax(1) == val.labels
    plain_right = probabilities.argmax(1) == val.labels
    plain, flipped, p_value = float(plain_right.mean()), float(right.mean()), gain_p_value(right, plain_right)
    used = "flip" if tta == "flip" or (flipped > plain and p_value <= CLEAR_GAIN) else "none"
    return {"used": used, "val_accuracy_plain": plain, "val_accuracy_flip": flipped, "p_value": round(p_value, 4),
            "reason": "asked for" if tta == "flip" else (f"validation accuracy {100 * plain:.1f}% plain, {100 * flipped:.1f}% with flips"
                                                         f" (one-sided McNemar p = {p_value:.2f}; used at p <= {CLEAR_GAIN})")}


__all__ = ["AUTO", "fit", "fit_auto"]
