"""Experiment loggers (--logger csv|tensorboard|mlflow): what a run logged is read back from each logger's own files."""
import csv
import json
import sys

import pytest
import yaml

import graft
from graft.cli import main
from graft.errors import GraftError
from graft.runs import partial_path

from conftest import FAST

tensorboard = pytest.importorskip("tensorboard", reason="tensorboard not installed: pip install 'graft-learn[tensorboard]'")
mlflow = pytest.importorskip("mlflow", reason="mlflow not installed: pip install 'graft-learn[mlflow]'")


def epoch_records(run_path):
    lines = (run_path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "epoch"]


def test_every_logger_reads_back_epochs_recipe_and_test_metrics(toy_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this switch
    out = tmp_path / "logged"
    main(["fit", str(toy_npz), "--route", "scratch", "--backbone", "graft_convnet_s", "--out", str(out), "--quiet", "--lr", "0.002",
          "--logger", "csv", "--logger", "tensorboard", "--logger", "mlflow", *[f"--set={o}" for o in [*FAST, "train.stages=all:3"]]])
    run = graft.load_run(out)
    epochs = epoch_records(out)
    assert len(epochs) == 3 and run.meta["recipe"]["runtime"]["loggers"] == ["csv", "tensorboard", "mlflow"]

    # CSV (Lightning Fabric's CSVLogger): one row per epoch with the loop's numbers, then the final metrics
    rows = list(csv.DictReader((out / "logs" / "csv" / "metrics.csv").open()))
    per_epoch = [r for r in rows if r["train_loss"]]
    assert [int(r["step"]) for r in per_epoch] == [1, 2, 3]
    assert [float(r["train_loss"]) for r in per_epoch] == pytest.approx([e["train_loss"] for e in epochs])
    assert [float(r["val_accuracy"]) for r in per_epoch] == pytest.approx([e["val_accuracy"] for e in epochs])
    final = [r for r in rows if r["test_accuracy"]]
    assert len(final) == 1 and float(final[0]["test_accuracy"]) == pytest.approx(run.metrics["test_accuracy"])
    hparams = yaml.safe_load((out / "logs" / "csv" / "hparams.yaml").read_text())
    assert hparams["train.lr"] == 0.002 and hparams["route"] == "scratch" and hparams["model.backbone"] == "graft_convnet_s"

    # TensorBoard (Fabric's TensorBoardLogger): event files read by tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "tensorboard")).Reload()
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [1, 2, 3]
    assert [e.value for e in losses] == pytest.approx([e["train_loss"] for e in epochs], rel=1e-6)
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(run.metrics["test_accuracy"], rel=1e-6)

    # MLflow (its own client on the local file store): one run named after the run directory
    client = mlflow.MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (found,) = client.search_runs([client.get_experiment_by_name("graft").experiment_id])
    assert found.info.run_name == "logged" and found.info.status == "FINISHED"
    assert found.data.params["train.lr"] == "0.002" and found.data.params["train.stages"] == "all:3"
    assert found.data.tags["graft.route"] == "scratch"
    history = client.get_metric_history(found.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(i + 1, pytest.approx(e["val_accuracy"])) for i, e in enumerate(epochs)]
    assert found.data.metrics["test_accuracy"] == pytest.approx(run.metrics["test_accuracy"])
    assert found.data.metrics["final_val_accuracy"] == pytest.approx(run.metrics["val_accuracy"])


def test_unknown_logger_refused_before_anything_is_written(toy_npz, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", str(toy_npz), "--route", "scratch", "--backbone", "graft_convnet_s", "--no-pretrained", "--quiet", "--out", str(tmp_path / "x"),
              "--set", "runtime.loggers=[wandb]"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("graft: error: unknown logger 'wandb'") and "csv, tensorboard, mlflow" in error and "\n" not in error
    assert not (tmp_path / "x").exists() and not partial_path(tmp_path / "x").exists()


def test_missing_extra_named_in_the_error(toy_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail as on a machine without the extra
    with pytest.raises(GraftError, match=r"pip install 'graft-learn\[mlflow\]'"):
        graft.fit(toy_npz, route="scratch", backbone="graft_convnet_s", out=tmp_path / "y", quiet=True,
                  overrides=[*FAST, "model.pretrained=false", "runtime.loggers=[csv,mlflow]"])
    assert not partial_path(tmp_path / "y").exists()
