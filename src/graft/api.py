"""The Python API: re-exports of the workflows; each CLI command wraps one of these functions."""
from __future__ import annotations

from graft.advice import advise
from graft.analysis import analyze
from graft.comparison import compare
from graft.errors import GraftError
from graft.exporting import export
from graft.fitting import grow
from graft.inference import evaluate, predict, run_scores, select_task
from graft.lifecycle import make_splits, resolve_recipe
from graft.pretraining import pretrain
from graft.protocols import evaluate_features
from graft.recipe import Recipe
from graft.run_report import write_run_report
from graft.runs import Run, load_run
from graft.scene_builder import scenes
from graft.selection import fit  # route auto, else graft.fitting.fit
from graft.train.loop import StopTraining

__all__ = ["fit", "grow", "evaluate", "predict", "export", "scenes", "analyze", "compare", "advise", "load_run", "Recipe", "Run", "GraftError",
           "pretrain", "evaluate_features", "make_splits", "resolve_recipe", "run_scores", "select_task", "write_run_report", "StopTraining"]
