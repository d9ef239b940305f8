"""``graft pretrain``: make a backbone when no suitable pretrained one exists (DESIGN.md routes 6 and 7).

* ``supervised``: train ``arch`` from random weights on a labelled source dataset (the ``scratch``
  route of :func:`graft.api.fit`, BatchNorm statistics learnt).
* ``exemplar``: Exemplar-CNN (Dosovitskiy et al. 2014) on unlabelled images: every seed patch is a
  surrogate class, its transformed copies the training images (route ``exemplar``, :mod:`graft.routes.exemplar`).

Both write an ordinary run directory whose backbone any route takes as ``--backbone run:PATH``
(or ``--weights PATH``), and both continue an interrupted run with ``resume=``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from graft.errors import GraftError
from graft.fitting import fit
from graft.recipe import Recipe
from graft.runs import Run

OBJECTIVES = ("supervised", "exemplar")
# training from random weights: BatchNorm learns its statistics, one learning rate for every layer
SUPERVISED_DEFAULTS = ["train.bn_mode=train"]


def pretrain(data: Any = None, objective: str = "supervised", arch: Optional[str] = None, *, out: Optional[str | Path] = None,
             recipe: Optional[Recipe] = None, overrides: Sequence[str] = (), quiet: bool = False,
             resume: Optional[str | Path] = None, callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Pretrain backbone ``arch`` on ``data`` by ``objective`` and return the finished :class:`Run`.

    >>> source = graft.pretrain("cifar10_train.npz", "exemplar", "exemplar-64c5-64c5-128f", overrides=["exemplar.classes=2000"])
    >>> graft.fit("target/", route="lpft", backbone=f"run:{source.path}")
    """
    if resume is not None:  # the run's recorded route (scratch or exemplar) continues through the same lifecycle
        return fit(resume=resume, overrides=overrides, quiet=quiet, callbacks=callbacks)
    if objective not in OBJECTIVES:
        raise GraftError(f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    if not arch:
        raise GraftError("give the architecture to pretrain, e.g. --arch exemplar-64c5-64c5-128f or --arch graft_convnet_m")
    if objective == "supervised":
        return fit(data, route="scratch", backbone=arch, out=out, recipe=recipe, quiet=quiet, callbacks=callbacks,
                   overrides=[*SUPERVISED_DEFAULTS, "model.pretrained=false", *overrides])
    return fit(data, route="exemplar", backbone=arch, out=out, recipe=recipe, quiet=quiet, callbacks=callbacks, overrides=overrides)
