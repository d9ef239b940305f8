"""Bad input never gets a traceback: damaged run directories, interrupted runs, the arguments of evaluate, predict,
export and scenes, and a few cases as real `python -m graft` subprocesses.

Each case is one `graft: error:` line naming the file or flag (exit 2); a failed resume keeps the interrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import make_images
from fuzzing import (SRC, TINY, assert_one_line_error, bomb, broken, images_of, labels_of, partials, png, run_cli, toy,
                     write_npz)


# --- 1. damaged run directories, for every command that reads one -----------------------------------------------------
@pytest.fixture(scope="module")
def finished_and_partial(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a finished run, an interrupted run's final name, its data) made once for the module."""
    import graft

    root = tmp_path_factory.mktemp("runs")
    data = toy(root / "toy.npz")
    overrides = ["data.image_size=16", "model.channels_last=false", "train.augment.preset=none", "train.min_steps=0"]
    graft.fit(data, route="scratch", backbone="graft_convnet_s", out=root / "done", quiet=True, overrides=[*overrides, "train.stages=all:1"])

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        graft.fit(data, route="scratch", backbone="graft_convnet_s", out=root / "cut", quiet=True, callbacks=[interrupt],
                  overrides=[*overrides, "train.stages=all:3"])
    return root / "done", root / "cut", data


def _edit_meta(**changes: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        meta = json.loads((run / "model.json").read_text())
        (run / "model.json").write_text(json.dumps({**meta, **changes}))
    return edit


RUN_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "no model.json": (lambda run: (run / "model.json").unlink(), "not a finished graft run"),
    "empty model.json": (lambda run: (run / "model.json").write_text(""), "model.json: damaged"),
    "invalid model.json": (lambda run: (run / "model.json").write_text("{"), "model.json: damaged"),
    "model.json a list": (lambda run: (run / "model.json").write_text("[]"), "holds a list"),
    "model.json without keys": (lambda run: (run / "model.json").write_text('{"route": "x"}'), "not a graft run description"),
    "no weights": (lambda run: (run / "model.safetensors").unlink(), "model.safetensors: missing"),
    "truncated weights": (lambda run: (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:200]),
                          "not a readable safetensors"),
    "text weights": (lambda run: (run / "model.safetensors").write_text("hello"), "not a readable safetensors"),
    "other backbone": (_edit_meta(backbone="graft_convnet_m"), "does not match backbone 'graft_convnet_m'"),
    "unknown backbone": (_edit_meta(backbone="no_such_net_xyz"), "no_such_net_xyz"),
}
RUN_COMMANDS = {
    "evaluate": lambda run, data, image: ["evaluate", run, data],
    "predict": lambda run, data, image: ["predict", run, image],
    "export": lambda run, data, image: ["export", run, "--format", "torchscript"],
    "grow": lambda run, data, image: ["grow", run, data, "--quiet", "--set", "data.image_size=16"],
}


@pytest.mark.parametrize("command", RUN_COMMANDS)
@pytest.mark.parametrize("damage", RUN_DAMAGE)
def test_damaged_run_is_one_line(damage, command, finished_and_partial, tmp_path, capsys):
    done, _, data = finished_and_partial
    run = shutil.copytree(done, tmp_path / "run")
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    edit, names = RUN_DAMAGE[damage]
    edit(run)
    code, _, err = run_cli(RUN_COMMANDS[command](run, data, image), capsys)
    assert_one_line_error(code, err, names)
    assert str(run) in err or "no_such_net_xyz" in err
    assert not partials(tmp_path)


def _resume_edit(relative: str, content: str | bytes | None = None, cut: bool = False) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        file = work / relative
        if cut:
            file.write_bytes(file.read_bytes()[:100])
        elif isinstance(content, bytes):
            file.write_bytes(content)
        else:
            file.write_text(content or "")
    return edit


RESUME_DAMAGE = {
    "garbage state.json": (_resume_edit("checkpoint/state.json", "{not json"), "state.json: damaged"),
    "state.json a list": (_resume_edit("checkpoint/state.json", "[1, 2]"), "state.json: holds a list"),
    "state.json without loop": (_resume_edit("checkpoint/state.json", '{"x": 1}'), "not a graft checkpoint state"),
    "truncated checkpoint": (_resume_edit("checkpoint/model.safetensors", cut=True), "checkpoint/model.safetensors"),
    "text optimizer": (_resume_edit("checkpoint/optimizer.safetensors", "pickle?"), "optimizer.safetensors"),
    "garbage recipe.yaml": (_resume_edit("recipe.yaml", "train: ["), "recipe.yaml: cannot read recipe"),
    "tag in recipe.yaml": (_resume_edit("recipe.yaml", "train: !!python/object/apply:os.system [ls]\n"), "recipe.yaml"),
    "bad value in recipe.yaml": (_resume_edit("recipe.yaml", "train:\n  lr: -1\n"), "train.lr"),
    "binary recipe.yaml": (_resume_edit("recipe.yaml", b"\xff\xfe\x00\x01"), "recipe.yaml"),
    "recipe.yaml of another backbone": (lambda work: (work / "recipe.yaml").write_text(
        (work / "recipe.yaml").read_text().replace("graft_convnet_s", "graft_convnet_m")), "does not fit the recipe's model"),
}


@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_damaged_interrupted_run_is_one_line_and_kept(damage, finished_and_partial, tmp_path, capsys):
    _, cut, _ = finished_and_partial
    work = shutil.copytree(cut.parent / f".{cut.name}.partial", tmp_path / ".cut.partial")
    edit, names = RESUME_DAMAGE[damage]
    edit(work)
    code, _, err = run_cli(["fit", "--resume", tmp_path / "cut"], capsys)
    assert_one_line_error(code, err, names)
    assert work.exists()  # the user's interrupted run is never removed by a failed resume


def test_resume_refuses_recipe_changes_naming_them(finished_and_partial, tmp_path, capsys):
    _, cut, _ = finished_and_partial
    shutil.copytree(cut.parent / f".{cut.name}.partial", tmp_path / ".cut.partial")
    code, _, err = run_cli(["fit", "--resume", tmp_path / "cut", "--lr", "0.5", "--set", "train.weight_decay=0"], capsys)
    assert_one_line_error(code, err, "cannot change train.lr, train.weight_decay")


@pytest.mark.parametrize("target", ["plain folder", "finished run", "missing"])
def test_resume_of_something_not_interrupted(target, finished_and_partial, tmp_path, capsys):
    done, _, _ = finished_and_partial
    path = {"plain folder": tmp_path, "finished run": done, "missing": tmp_path / "nothing"}[target]
    code, _, err = run_cli(["fit", "--resume", path], capsys)
    names = {"plain folder": "not a graft run", "finished run": "already complete", "missing": "no interrupted run here"}[target]
    assert_one_line_error(code, err, names)


def test_resume_after_the_data_changed_is_refused(tmp_path, capsys):
    import graft

    data = toy(tmp_path / "toy.npz")

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        graft.fit(data, route="scratch", backbone="graft_convnet_s", out=tmp_path / "cut", quiet=True, callbacks=[interrupt],
                  overrides=["data.image_size=16", "train.augment.preset=none", "train.min_steps=0", "train.stages=all:3"])
    images, labels = make_images(36, 3, seed=5)  # replaced by other images of the same classes
    write_npz(data, images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    code, _, err = run_cli(["fit", "--resume", tmp_path / "cut"], capsys)
    assert_one_line_error(code, err, "images differ from those this run started with")
    assert partials(tmp_path)


# --- 2. arguments of evaluate, predict, export and scenes --------------------------------------------------------------
ARGUMENT_CASES = {
    "predict --top-k 0": (lambda run, tmp: ["predict", run, png(tmp), "--top-k", "0"], "--top-k 0"),
    "predict --top-k -1": (lambda run, tmp: ["predict", run, png(tmp), "--top-k", "-1"], "--top-k -1"),
    "predict a folder": (lambda run, tmp: ["predict", run, tmp], "is a folder"),
    "predict a missing file": (lambda run, tmp: ["predict", run, tmp / "nope.png"], "image not found"),
    "predict a bomb": (lambda run, tmp: ["predict", run, bomb(tmp / "bomb.png")], "declares 20000x20000 pixels"),
    "predict a broken image": (lambda run, tmp: ["predict", run, broken(tmp / "broken.png")], "cannot read image"),
    "export --atol -1": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "-1"], "--atol -1"),
    "export --atol nan": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "nan"], "--atol nan"),
    "export --atol inf": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "inf"], "--atol inf"),
    "export --out missing folder": (lambda run, tmp: ["export", run, "--format", "torchscript", "--out", tmp / "no" / "m.pt"], "missing folder"),
    "export --out a folder": (lambda run, tmp: ["export", run, "--format", "torchscript", "--out", tmp], "is a folder"),
    "evaluate missing data": (lambda run, tmp: ["evaluate", run, tmp / "none.npz"], "DATA does not exist"),
    "evaluate other classes": (lambda run, tmp: ["evaluate", run, write_npz(tmp / "o.npz", images=images_of(), labels=labels_of(),
                                                                             classes=np.array(["x", "y", "z"]))], "not among the training classes"),
    "evaluate unlabelled": (lambda run, tmp: ["evaluate", run, write_npz(tmp / "u.npz", images=images_of())], "have no label"),
    "evaluate --task": (lambda run, tmp: ["evaluate", run, toy(tmp / "t.npz"), "--task", "3"], "not a multi-task run"),
    "predict --task": (lambda run, tmp: ["predict", run, png(tmp), "--task", "a"], "not a multi-task run"),
    "scenes --count -1": (lambda run, tmp: ["scenes", toy(tmp / "t.npz"), tmp / "s", "--count", "-1"], "--count -1"),
    "scenes --size 0": (lambda run, tmp: ["scenes", toy(tmp / "t.npz"), tmp / "s", "--size", "0"], "--size 0"),
}


@pytest.mark.parametrize("case", ARGUMENT_CASES)
def test_bad_argument_is_one_line(case, finished_and_partial, tmp_path, capsys):
    done, _, _ = finished_and_partial
    build, names = ARGUMENT_CASES[case]
    code, _, err = run_cli(build(done, tmp_path), capsys)
    assert_one_line_error(code, err, names)


# --- 3. a few as real subprocesses: the installed entry point, its exit status and stderr ---------------------------------
def _subprocess(args: list[object], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "graft", *map(str, args)], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("case", ["npz", "option", "resume", "export"])
def test_subprocess_error_is_one_line(case, finished_and_partial, tmp_path):
    done, _, _ = finished_and_partial
    bad = tmp_path / "bad.npz"
    bad.write_text("not an archive")
    args, names = {"npz": (["fit", bad, *TINY], str(bad)), "option": (["fit", toy(tmp_path / "toy.npz"), *TINY, "--lr", "nan"], "--lr"),
                   "resume": (["fit", "--resume", tmp_path], "not a graft run"),
                   "export": (["export", done, "--atol", "nan"], "--atol nan")}[case]
    result = _subprocess(args, tmp_path)
    assert_one_line_error(result.returncode, result.stderr, names)
    assert not partials(tmp_path)
