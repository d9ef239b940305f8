"""Experiment loggers: a run's per-epoch metrics, its recipe and its final test metrics, sent to CSV, TensorBoard or MLflow.

``runtime.loggers`` (``graft fit --logger NAME``, repeatable) picks them. CSV and TensorBoard go through Lightning
Fabric's own loggers (``lightning_fabric.loggers``) into ``RUN/logs/csv`` and ``RUN/logs/tensorboard``; MLflow, which
Fabric has no logger for, through mlflow's client, to whatever tracking URI mlflow is configured with
(``MLFLOW_TRACKING_URI``; experiment ``MLFLOW_EXPERIMENT_NAME`` or ``graft``). The loop hands every epoch record to
the callbacks of :func:`graft.fit`; :class:`ExperimentLoggers` is one of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from graft.errors import GraftError
from graft.recipe import Recipe

LOGGERS = ("csv", "tensorboard", "mlflow")
# which extra installs what each logger needs (csv needs nothing beyond graft's own dependencies)
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


class Sink(Protocol):
    def hyperparameters(self, values: dict[str, Any]) -> None: ...
    def metrics(self, values: dict[str, float], step: int) -> None: ...
    def close(self, status: str) -> None: ...


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and None become text (what every logger accepts)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (event names, stage names and flags are left out)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class FabricSink:
    """Lightning Fabric's CSVLogger or TensorBoardLogger, writing into ``folder/logs/<kind>``."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        if kind == "csv":
            from lightning_fabric.loggers import CSVLogger

            self.logger: Any = CSVLogger(root_dir=str(folder), name="logs", version="csv", flush_logs_every_n_steps=1)
        else:
            from lightning_fabric.loggers import TensorBoardLogger

            self.logger = TensorBoardLogger(root_dir=str(folder), name="logs", version="tensorboard", default_hp_metric=False)

    def hyperparameters(self, values: dict[str, Any]) -> None:
        if self.kind == "csv":  # Fabric's CSVLogger has no hyperparameters; hparams.yaml beside metrics.csv, as Lightning's own
            import yaml

            folder = Path(self.logger.experiment.log_dir)  # the writer first: it warns about a folder that has files
            (folder / "hparams.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        else:
            self.logger.log_hyperparams(values)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.logger.log_metrics(values, step=step)

    def close(self, status: str) -> None:
        self.logger.finalize(status)


class MlflowSink:
    """One MLflow run per graft run, named after the run directory and tagged with its route and backbone."""

    def __init__(self, name: str, tags: dict[str, str]) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        self.client = mlflow.MlflowClient()
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "graft")
        try:
            experiment = self.client.get_experiment_by_name(experiment_name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        except MlflowException as error:
            raise GraftError(f"mlflow logger: tracking URI {mlflow.get_tracking_uri()} refused the run ({error.message.splitlines()[0]}); "
                             "set MLFLOW_TRACKING_URI to a store you can write (a file store also needs MLFLOW_ALLOW_FILE_STORE=true)") from error

    def hyperparameters(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in values.items()]
        for start in range(0, len(params), 100):  # mlflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start: start + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")


def require(names: list[str]) -> None:
    """Refuse unknown logger names and loggers whose optional dependency is missing, naming the extra to install."""
    for name in names:
        if name not in LOGGERS:
            raise GraftError(f"unknown logger '{name}' (runtime.loggers); choose from {', '.join(LOGGERS)}, e.g. --logger csv")
        if name in EXTRAS:
            module, extra = EXTRAS[name]
            try:
                __import__(module)
            except ImportError as error:
                raise GraftError(f"--logger {name} needs the '{module}' package: pip install 'graft-learn[{extra}]'") from error


class ExperimentLoggers:
    """A :func:`graft.fit` callback sending each epoch record to every chosen logger.

    Built before the run directory exists (so a missing extra stops the run before anything is written), then
    :meth:`start`-ed on the run, called once per epoch, and :meth:`finish`-ed with the run's final metrics.
    Steps count epochs over all stages (1, 2, ...); a resumed run continues the count from its ``metrics.jsonl``.
    """

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.names = list(dict.fromkeys(recipe.runtime.loggers))  # each logger once, in the order given
        require(self.names)
        self.sinks: list[Sink] = []
        self.step = 0
        self.epoch_keys: set[str] = {"seconds", "val_accuracy", "val_loss", "train_loss", "train_accuracy"}

    def start(self, folder: Path, name: str, writer: bool = True) -> "ExperimentLoggers":
        """Open the loggers for the run being written in ``folder`` (non-writing DDP ranks log nothing)."""
        if not writer or not self.names:
            return self
        self.step = _epochs_logged(folder / "metrics.jsonl")
        tags = {"graft.route": self.recipe.route, "graft.backbone": self.recipe.model.backbone, "graft.run": name}
        self.sinks = [MlflowSink(name, tags) if kind == "mlflow" else FabricSink(kind, folder) for kind in self.names]
        if self.step == 0:  # a resumed run logged its recipe when it started
            hyperparameters = flatten(self.recipe.to_dict())
            for sink in self.sinks:
                sink.hyperparameters(hyperparameters)
        return self

    def __call__(self, record: dict[str, Any]) -> None:
        self.step += 1
        values = numbers(record)
        self.epoch_keys.update(values)
        for sink in self.sinks:
            sink.metrics(values, self.step)

    def finish(self, metrics: dict[str, Any], status: str = "success") -> None:
        """Log the run's final metrics (test accuracy or mAP, best validation accuracy, seconds) and close every logger."""
        # a name also logged per epoch gets final_ (final_val_accuracy: the kept epoch's; final_seconds: the whole run's)
        values = {f"final_{k}" if k in self.epoch_keys else k: v for k, v in numbers(metrics).items()}
        for sink in self.sinks:
            if values:
                sink.metrics(values, self.step + 1)
            sink.close(status)
        self.sinks = []


def _epochs_logged(path: Path) -> int:
    """Epoch records already in a run's metrics.jsonl (those of a run being resumed)."""
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("event") == "epoch")

