"""Bad input never gets a traceback: each case is one `graft: error:` line naming the file or flag (exit 2), with no
`.partial` left behind, or, for inputs graft accepts, the documented behaviour (skipped and named, warned).

Most cases call the CLI's entry point in-process on tiny files written to tmp_path; a few run `python -m graft` as a
real subprocess. Every error case fails before training, so the file runs in well under a minute on one thread.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from graft.cli import main

from conftest import make_images

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--route", "scratch", "--backbone", "graft_convnet_s", "--image-size", "16", "--stages", "all:1", "--quiet",
        "--set", "train.min_steps=0", "--set", "model.channels_last=false", "--augment", "none"]


# --- helpers ----------------------------------------------------------------------------------------------------------
def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def partials(root: Path) -> set[Path]:
    return set(root.rglob(".*.partial"))


def assert_one_line_error(code: int, err: str, names: str) -> None:
    """Exit 2, exactly one `graft: error:` line (the last one) naming ``names``, no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("graft: error:")]
    assert code == 2 and len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err
    assert names in errors[0], (names, errors[0])


def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def toy(path: Path, n: int = 36, classes: int = 3) -> Path:
    images, labels = make_images(n, classes)
    return write_npz(path, images=images, labels=labels, classes=np.array(["red", "green", "blue"][:classes]))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a decompression bomb: PIL refuses to decode it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16, 3), 30 + 180 * c + i, np.uint8)).save(root / name / f"{i}.png")
    return root


# --- 1. option values, flags and --set: refused by Recipe.validate before anything is read or created ----------------
OPTION_CASES = [
    (["--image-size", "-5"], "--image-size"), (["--image-size", "0"], "--image-size"), (["--image-size", "100000"], "--image-size"),
    (["--image-size", "3"], "--image-size"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"),
    (["--lr", "inf"], "--lr"), (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-4"], "--batch-size"),
    (["--seed", "-1"], "--seed"), (["--seed", "99999999999"], "--seed"), (["--val-fraction", "1.5"], "--val-fraction"),
    (["--val-fraction", "-0.1"], "--val-fraction"), (["--val-fraction", "1"], "--val-fraction"),
    (["--test-fraction", "1.2"], "--test-fraction"), (["--test-fraction", "-0.5"], "--test-fraction"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "leave no training images"), (["--patience", "-1"], "--patience"),
    (["--patience", "0"], "--patience"), (["--mixup", "-1"], "--mixup"), (["--mixup", "nan"], "--mixup"),
    (["--cutmix", "-2"], "--cutmix"), (["--stages", "all:0"], "--stages"), (["--stages", "garbage"], "stage 'garbage'"),
    (["--stages", "new:1,all:0"], "--stages"), (["--stages", "top-x:2"], "stage 'top-x:2'"), (["--stages", "all:-3"], "stage 'all:-3'"),
    (["--augment", "nonsense"], "--augment"), (["--precision", "garbage"], "--precision"), (["--precision", "8-true"], "--precision"),
    (["--accelerator", "quantum"], "--accelerator"), (["--devices", "0"], "--devices"), (["--devices", "-5"], "--devices"),
    (["--devices", "abc"], "--devices"), (["--strategy", "magic"], "--strategy"), (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"), (["--optimizer", "rmsprop"], "--optimizer"), (["--schedule", "wavy"], "--schedule"),
    (["--bn-mode", "sometimes"], "--bn-mode"), (["--backbone-lr-ratio", "-1"], "--backbone-lr-ratio"),
    (["--temperature", "0"], "--temperature"), (["--kd-alpha", "2"], "--kd-alpha"), (["--threshold", "1.5"], "--threshold"),
    (["--top-k", "0"], "--top-k"), (["--rounds", "0"], "--rounds"), (["--units", "0"], "--units"), (["--lwf", "-1"], "--lwf"),
    (["--train", "top-x"], "grow.train"), (["--route", "nonsense"], "unknown route 'nonsense'"),
]
SET_CASES = [
    ("linear.c_grid=[-1]", "linear.c_grid"), ("linear.c_grid=[]", "linear.c_grid"), ("linear.c_grid=[0]", "linear.c_grid"),
    ("linear.c_grid=[.nan]", "linear.c_grid"), ("linear.max_iter=0", "linear.max_iter"), ("data.crop_pct=0", "data.crop_pct"),
    ("data.crop_pct=1.5", "data.crop_pct"), ("train.label_smoothing=2", "train.label_smoothing"),
    ("train.label_smoothing=-0.1", "train.label_smoothing"), ("data.interpolation=lanczos9", "data.interpolation"),
    ("data.num_workers=-1", "data.num_workers"), ("train.momentum=1.5", "train.momentum"), ("train.weight_decay=-1", "train.weight_decay"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"), ("train.step_gamma=0", "train.step_gamma"), ("train.min_steps=-1", "train.min_steps"),
    ("train.step_epochs=0", "train.step_epochs"), ("train.augment.rotate=400", "train.augment.rotate"),
    ("train.augment.crop_scale=0", "train.augment.crop_scale"), ("adapt.dropout=1", "adapt.dropout"), ("adapt.hidden=0", "adapt.hidden"),
    ("adapt.epochs=0", "adapt.epochs"), ("patches.overlap=1", "patches.overlap"), ("patches.k=0", "patches.k"),
    ("patches.max_lambda=0.5", "patches.max_lambda"), ("pseudo.ramp_start=0.9", "pseudo.ramp_start"), ("grow.gamma=0", "grow.gamma"),
    ("grow.dropout=-0.5", "grow.dropout"), ("exemplar.classes=0", "exemplar.classes"), ("exemplar.scales=[0.5]", "exemplar.scales"),
    ("distill.alpha=-1", "distill.alpha"), ("train.lr=!!python/object/apply:os.system [echo hacked]", "train.lr"),
    ("data.train=!!python/name:os.system", "data.train"), ("train.lr=[unclosed", "train.lr"), ("train.lr={a: 1}", "train.lr"),
    ("train.lr=abc", "train.lr"), ("data.batch_size=1.5", "data.batch_size"), ("model.pretrained=maybe", "model.pretrained"),
    ("train.nonsense=1", "train.nonsense"), ("nosection.x=1", "nosection"), ("train=1", "train"), ("noequals", "noequals"),
    ("runtime.seed=-1", "runtime.seed"), ("data.val_fraction=1", "data.val_fraction"),
]


@pytest.mark.parametrize("flags,names", OPTION_CASES, ids=[" ".join(f) for f, _ in OPTION_CASES])
def test_bad_option_is_one_line(flags, names, tmp_path, capsys):
    data = toy(tmp_path / "toy.npz")
    argv = ["fit", data, *TINY, *flags, "--out", tmp_path / "run"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, names)
    assert not (tmp_path / "run").exists() and not partials(tmp_path)


@pytest.mark.parametrize("assignment,names", SET_CASES, ids=[a for a, _ in SET_CASES])
def test_bad_set_is_one_line(assignment, names, tmp_path, capsys):
    data = toy(tmp_path / "toy.npz")
    code, _, err = run_cli(["fit", data, *TINY, "--set", assignment, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, names)
    assert not (tmp_path / "run").exists() and not partials(tmp_path)
    assert not (tmp_path / "hacked").exists()


def test_missing_gpu_is_refused_before_fabric(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, _, err = run_cli(["fit", toy(tmp_path / "toy.npz"), *TINY, "--accelerator", "gpu"], capsys)
    assert_one_line_error(code, err, "--accelerator gpu")


RECIPE_FILES = {
    "missing": None, "unclosed": "train: [", "tag": "train: !!python/object/apply:os.system [ls]\n", "list": "- 1\n- 2\n",
    "unknown key": "train:\n  speed: 3\n", "bad value": "train:\n  lr: -1\n", "binary": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("kind", RECIPE_FILES)
def test_bad_recipe_file_is_one_line(kind, tmp_path, capsys):
    recipe, text = tmp_path / "recipe.yaml", RECIPE_FILES[kind]
    if isinstance(text, bytes):
        recipe.write_bytes(text)
    elif text is not None:
        recipe.write_text(text)
    code, _, err = run_cli(["fit", toy(tmp_path / "toy.npz"), *TINY, "--recipe", recipe, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, str(recipe))
    assert not partials(tmp_path)


def test_out_naming_a_file_or_an_uncreatable_folder(tmp_path, capsys):
    data, file = toy(tmp_path / "toy.npz"), tmp_path / "a_file"
    file.write_text("x")
    for out, names in ((file, "names an existing file"), (file / "sub", "cannot create")):
        code, _, err = run_cli(["fit", data, *TINY, "--out", out], capsys)
        assert_one_line_error(code, err, str(out))
        assert names in err
    assert not partials(tmp_path)


# --- 2. data files: refused as one line naming the file ----------------------------------------------------------------
def _images(n: int = 12, dtype: object = np.uint8) -> np.ndarray:
    return make_images(n, 3)[0].astype(dtype)


def _labels(n: int = 12) -> np.ndarray:
    return np.arange(n) % 3


def _pixels(value: float, dtype: object = np.float32) -> np.ndarray:
    images = _images().astype(dtype)
    images = images / 255 if np.dtype(dtype).kind == "f" else images
    images.flat[5] = value
    return images


NPZ_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "no pixels (300,0,0,3)": (lambda p: write_npz(p, images=np.zeros((300, 0, 0, 3), np.uint8), labels=np.arange(300) % 2), "no pixels"),
    "two channels": (lambda p: write_npz(p, images=np.zeros((6, 8, 8, 2), np.uint8), labels=_labels(6)), "shape"),
    "2-d images": (lambda p: write_npz(p, images=np.zeros((6, 8), np.uint8), labels=_labels(6)), "shape"),
    "labels (N,1)": (lambda p: write_npz(p, images=_images(), labels=_labels()[:, None]), "(N,) array"),
    "one-hot labels": (lambda p: write_npz(p, images=_images(), labels=np.eye(3)[_labels()]), "one-hot"),
    "scalar label": (lambda p: write_npz(p, images=_images(), labels=np.array(1)), "labels have shape ()"),
    "fewer labels": (lambda p: write_npz(p, images=_images(), labels=_labels(5)), "12 images but 5 labels"),
    "fractional labels": (lambda p: write_npz(p, images=_images(), labels=_labels() + 0.5), "fractional"),
    "nan labels": (lambda p: write_npz(p, images=_images(), labels=np.full(12, np.nan)), "fractional or NaN"),
    "string labels": (lambda p: write_npz(p, images=_images(), labels=np.array(["a", "b", "c"] * 4)), "type <U1"),
    "label out of range": (lambda p: write_npz(p, images=_images(), labels=_labels() * 3, classes=np.array(["a", "b", "c"])), "outside"),
    "label -2": (lambda p: write_npz(p, images=_images(), labels=_labels() - 2), "outside"),
    "one nan pixel": (lambda p: write_npz(p, images=_pixels(np.nan), labels=_labels()), "NaN or infinite"),
    "all nan": (lambda p: write_npz(p, images=np.full((12, 8, 8, 3), np.nan, np.float32), labels=_labels()), "NaN or infinite"),
    "inf pixel": (lambda p: write_npz(p, images=_pixels(np.inf), labels=_labels()), "NaN or infinite"),
    "negative float": (lambda p: write_npz(p, images=_pixels(-0.5), labels=_labels()), "float pixels span"),
    "float above 255": (lambda p: write_npz(p, images=_pixels(300.0), labels=_labels()), "float pixels span"),
    "negative ints": (lambda p: write_npz(p, images=_pixels(-7, np.int32), labels=_labels()), "integer pixels span"),
    "ints above 255": (lambda p: write_npz(p, images=_pixels(4000, np.int32), labels=_labels()), "integer pixels span"),
    "bool images": (lambda p: write_npz(p, images=_images() > 100, labels=_labels()), "type bool"),
    "complex images": (lambda p: write_npz(p, images=_images().astype(np.complex64), labels=_labels()), "type complex64"),
    "object array": (lambda p: np.savez(p, images=np.array([np.zeros(3), "x"], dtype=object), labels=_labels(2)), "Python objects"),
    ".npy renamed": (lambda p: np.save(open(p, "wb"), _images()), "a .npy array"),
    "text renamed": (lambda p: p.write_text("images,labels\n1,2\n"), "not a zip archive"),
    "zero bytes": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (lambda p: (write_npz(p, images=_images(), labels=_labels()), p.write_bytes(p.read_bytes()[:300])), "damaged"),
    "no images key": (lambda p: write_npz(p, pixels=_images(), labels=_labels()), "no 'images' array"),
    "duplicate class names": (lambda p: write_npz(p, images=_images(), labels=_labels(), classes=np.array(["a", "a", "b"])), "more than once"),
    "empty class name": (lambda p: write_npz(p, images=_images(), labels=_labels(), classes=np.array(["a", " ", "b"])), "empty name"),
    "single class": (lambda p: write_npz(p, images=_images(), labels=np.zeros(12, int)), "at least two"),
    "zero images": (lambda p: write_npz(p, images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, int)), "no readable images"),
}


def _csv(text: str | bytes, images: bool = True) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        if images:
            image_folder(path.parent / "imgs")
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return build


CSV_CASES = {
    "latin-1": (_csv("imgs/a/0.png,caf\xe9\n".encode("latin-1")), "not UTF-8"),
    "binary": (_csv(bytes(range(256)) * 4), "not UTF-8"),
    "empty": (_csv(""), "no rows"),
    "header only": (_csv("path,label\n"), "no rows"),
    "one column": (_csv("imgs/a/0.png\nimgs/b/0.png\n"), "is not 'path,label'"),
    "empty label": (_csv("imgs/a/0.png,a\nimgs/b/0.png,\n"), "empty label"),
    "all missing": (_csv("nope/1.png,a\nnope/2.png,b\n", images=False), "no readable images (skipped 2)"),
    "one class": (_csv("".join(f"imgs/a/{i}.png,a\n" for i in range(6))), "at least two"),
}


def _folder_no_classes(root: Path) -> None:
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "loose.png")


def _folder_empty_class(root: Path) -> None:
    image_folder(root)
    (root / "c").mkdir()


def _folder_all_broken(root: Path) -> None:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(b"\x89PNG broken")


FOLDER_CASES = {
    "no class folders": (_folder_no_classes, "no class sub-folders"),
    "empty class folder": (_folder_empty_class, "class folder has no images"),
    "one class": (lambda root: image_folder(root, ("a",)), "at least two"),
    "nothing readable": (_folder_all_broken, "no readable images (skipped 2)"),
    "missing": (lambda root: None, "DATA does not exist"),
    "unknown suffix": (lambda root: root.write_text("x"), "unknown DATA form"),
}


DATA_CASES = {**{f"npz {k}": ("data.npz", *v) for k, v in NPZ_CASES.items()}, **{f"csv {k}": ("data.csv", *v) for k, v in CSV_CASES.items()},
              **{f"folder {k}": ("data.txt" if k == "unknown suffix" else "data", *v) for k, v in FOLDER_CASES.items()}}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_is_one_line(case, tmp_path, capsys):
    name, build, names = DATA_CASES[case]
    data = tmp_path / name
    build(data)
    code, _, err = run_cli(["fit", data, *TINY, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, str(data))
    assert names in err and not partials(tmp_path) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--test", "--val"])
def test_held_out_set_with_unknown_classes(flag, tmp_path, capsys):
    other = write_npz(tmp_path / "other.npz", images=_images(), labels=_labels(), classes=np.array(["cat", "dog", "emu"]))
    code, _, err = run_cli(["fit", toy(tmp_path / "toy.npz"), *TINY, flag, other, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, str(other))
    assert "not among the training classes" in err and not partials(tmp_path)


def test_class_with_too_few_images_says_how_many_were_left(tmp_path, capsys):
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    data = write_npz(tmp_path / "few.npz", images=_images(22), labels=labels, classes=np.array(["a", "b", "c"]))
    code, _, err = run_cli(["fit", data, *TINY, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "class 'c' has 1 image left")
    assert "test share is split off first" in err


# --- 3. damaged run directories, for every command that reads one -----------------------------------------------------
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
    toy(data, n=36).write_bytes(b"")  # replaced by other images of the same classes
    images, labels = make_images(36, 3, seed=5)
    write_npz(data, images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    code, _, err = run_cli(["fit", "--resume", tmp_path / "cut"], capsys)
    assert_one_line_error(code, err, "images differ from those this run started with")
    assert partials(tmp_path)


# --- 4. arguments of evaluate, predict and export ------------------------------------------------------------------------
def _bomb(path: Path) -> Path:
    path.write_bytes(png_header(20000, 20000))
    return path


ARGUMENT_CASES = {
    "predict --top-k 0": (lambda run, tmp: ["predict", run, _png(tmp), "--top-k", "0"], "--top-k 0"),
    "predict --top-k -1": (lambda run, tmp: ["predict", run, _png(tmp), "--top-k", "-1"], "--top-k -1"),
    "predict a folder": (lambda run, tmp: ["predict", run, tmp], "is a folder"),
    "predict a missing file": (lambda run, tmp: ["predict", run, tmp / "nope.png"], "image not found"),
    "predict a bomb": (lambda run, tmp: ["predict", run, _bomb(tmp / "bomb.png")], "declares 20000x20000 pixels"),
    "predict a broken image": (lambda run, tmp: ["predict", run, _broken(tmp / "broken.png")], "cannot read image"),
    "export --atol -1": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "-1"], "--atol -1"),
    "export --atol nan": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "nan"], "--atol nan"),
    "export --atol inf": (lambda run, tmp: ["export", run, "--format", "torchscript", "--atol", "inf"], "--atol inf"),
    "export --out missing folder": (lambda run, tmp: ["export", run, "--format", "torchscript", "--out", tmp / "no" / "m.pt"], "missing folder"),
    "export --out a folder": (lambda run, tmp: ["export", run, "--format", "torchscript", "--out", tmp], "is a folder"),
    "evaluate missing data": (lambda run, tmp: ["evaluate", run, tmp / "none.npz"], "DATA does not exist"),
    "evaluate other classes": (lambda run, tmp: ["evaluate", run, write_npz(tmp / "o.npz", images=_images(), labels=_labels(),
                                                                             classes=np.array(["x", "y", "z"]))], "not among the training classes"),
    "evaluate unlabelled": (lambda run, tmp: ["evaluate", run, write_npz(tmp / "u.npz", images=_images())], "have no label"),
    "evaluate --task": (lambda run, tmp: ["evaluate", run, toy(tmp / "t.npz"), "--task", "3"], "not a multi-task run"),
    "predict --task": (lambda run, tmp: ["predict", run, _png(tmp), "--task", "a"], "not a multi-task run"),
    "scenes --count -1": (lambda run, tmp: ["scenes", toy(tmp / "t.npz"), tmp / "s", "--count", "-1"], "--count -1"),
    "scenes --size 0": (lambda run, tmp: ["scenes", toy(tmp / "t.npz"), tmp / "s", "--size", "0"], "--size 0"),
}


def _png(folder: Path) -> Path:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "x.png")
    return folder / "x.png"


def _broken(path: Path) -> Path:
    path.write_bytes(b"\x89PNG broken")
    return path


@pytest.mark.parametrize("case", ARGUMENT_CASES)
def test_bad_argument_is_one_line(case, finished_and_partial, tmp_path, capsys):
    done, _, _ = finished_and_partial
    build, names = ARGUMENT_CASES[case]
    code, _, err = run_cli(build(done, tmp_path), capsys)
    assert_one_line_error(code, err, names)


# --- 5. a few as real subprocesses: the installed entry point, its exit status and stderr ---------------------------------
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


# --- 6. inputs graft accepts, with the documented behaviour --------------------------------------------------------------
def test_bombs_dangling_links_and_broken_images_are_skipped_and_named(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", per_class=8)
    _bomb(data / "a" / "bomb.png")
    (data / "b" / "huge.png").write_bytes(png_header(65535, 65535))
    (data / "b" / "gone.png").symlink_to(tmp_path / "deleted.png")
    _broken(data / "a" / "broken.png")
    code, out, err = run_cli(["fit", data, *TINY, "--out", tmp_path / "run"], capsys)
    assert code == 0 and "Traceback" not in err, err
    skipped = {Path(s["file"]).name: s["reason"] for s in json.loads((tmp_path / "run" / "model.json").read_text())["skipped_files"]}
    assert skipped.keys() == {"bomb.png", "huge.png", "gone.png", "broken.png"}
    assert "declares 20000x20000 pixels" in skipped["bomb.png"] and "declares 65535x65535 pixels" in skipped["huge.png"]
    assert skipped["gone.png"] == "file not found"
    report = (tmp_path / "run" / "report.html").read_text()
    assert all(name in report for name in skipped)
    code, out, err = run_cli(["evaluate", tmp_path / "run", data, "--json"], capsys)
    assert code == 0 and json.loads(out)["count"] == 16  # evaluate skips them too


def test_csv_with_bom_header_and_outside_paths(tmp_path, capsys, caplog):
    image_folder(tmp_path / "store")
    (tmp_path / "lists").mkdir()
    rows = "".join(f"../store/{c}/{i}.png,{c}\n" for c in "ab" for i in range(6))
    data = tmp_path / "lists" / "data.csv"
    data.write_bytes("\ufefffile,class\n".encode() + rows.encode())
    code, _, err = run_cli(["fit", data, *TINY, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "model.json").read_text())["classes"] == ["a", "b"]  # no phantom 'class' class
    assert "12 paths lie outside the CSV's folder" in caplog.text  # logger 'graft': stderr when nothing else handles it
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert len(meta["files_outside_data_folder"]) == 12 and "store/a/0.png" in (tmp_path / "run" / "report.html").read_text()


def test_unlabelled_images_are_warned_and_odd_class_names_drawn_as_text(tmp_path, capsys, caplog):
    images, labels = make_images(36, 3)
    labels[:3] = -1
    data = write_npz(tmp_path / "d.npz", images=images, labels=labels, classes=np.array(["$\\frac$", "$x^$", "plain"]))
    code, out, err = run_cli(["fit", data, *[a for a in TINY if a != "--quiet"], "--lr", "1.1e-5", "--schedule", "constant",
                              "--set", "train.warmup_epochs=0", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "3 images have label -1 (unlabelled)" in caplog.text
    assert (tmp_path / "run" / "confusion.png").exists()
    assert "lr=1.1e-05" in err  # progress goes to stderr; not lr=0.0000


def test_early_rejection_leaves_no_partial_and_the_command_can_be_rerun(tmp_path, capsys):
    # an error found after the run folder exists (here: the route rejects --unlabeled) removes the untrained run
    data = toy(tmp_path / "toy.npz")
    argv = ["fit", data, *TINY, "--unlabeled", data, "--out", tmp_path / "run"]
    for _ in range(2):  # the same answer twice: no "continue it with --resume" the second time
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "does not use --unlabeled")
        assert not partials(tmp_path)
