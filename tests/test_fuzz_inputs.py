"""Bad input never gets a traceback: options, recipe files and data files.

Each refused case is one `graft: error:` line naming the file or flag (exit 2), with no `.partial` left behind;
each accepted one shows the documented behaviour (skipped and named, warned). The CLI's entry point runs in-process
on tiny files written to tmp_path; every refused case fails before training. Run directories, the other
commands' arguments and real subprocesses are in tests/test_fuzz_runs.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_images
from fuzzing import (TINY, assert_one_line_error, bomb, broken, image_folder, images_of, labels_of, partials, png_header,
                     run_cli, toy, write_npz)


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
def _pixels(value: float, dtype: object = np.float32) -> np.ndarray:
    images = images_of().astype(dtype)
    images = images / 255 if np.dtype(dtype).kind == "f" else images
    images.flat[5] = value
    return images


NPZ_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "no pixels (300,0,0,3)": (lambda p: write_npz(p, images=np.zeros((300, 0, 0, 3), np.uint8), labels=np.arange(300) % 2), "no pixels"),
    "two channels": (lambda p: write_npz(p, images=np.zeros((6, 8, 8, 2), np.uint8), labels=labels_of(6)), "shape"),
    "2-d images": (lambda p: write_npz(p, images=np.zeros((6, 8), np.uint8), labels=labels_of(6)), "shape"),
    "labels (N,1)": (lambda p: write_npz(p, images=images_of(), labels=labels_of()[:, None]), "(N,) array"),
    "one-hot labels": (lambda p: write_npz(p, images=images_of(), labels=np.eye(3)[labels_of()]), "one-hot"),
    "scalar label": (lambda p: write_npz(p, images=images_of(), labels=np.array(1)), "labels have shape ()"),
    "fewer labels": (lambda p: write_npz(p, images=images_of(), labels=labels_of(5)), "12 images but 5 labels"),
    "fractional labels": (lambda p: write_npz(p, images=images_of(), labels=labels_of() + 0.5), "fractional"),
    "nan labels": (lambda p: write_npz(p, images=images_of(), labels=np.full(12, np.nan)), "fractional or NaN"),
    "string labels": (lambda p: write_npz(p, images=images_of(), labels=np.array(["a", "b", "c"] * 4)), "type <U1"),
    "label out of range": (lambda p: write_npz(p, images=images_of(), labels=labels_of() * 3, classes=np.array(["a", "b", "c"])), "outside"),
    "label -2": (lambda p: write_npz(p, images=images_of(), labels=labels_of() - 2), "outside"),
    "one nan pixel": (lambda p: write_npz(p, images=_pixels(np.nan), labels=labels_of()), "NaN or infinite"),
    "all nan": (lambda p: write_npz(p, images=np.full((12, 8, 8, 3), np.nan, np.float32), labels=labels_of()), "NaN or infinite"),
    "inf pixel": (lambda p: write_npz(p, images=_pixels(np.inf), labels=labels_of()), "NaN or infinite"),
    "negative float": (lambda p: write_npz(p, images=_pixels(-0.5), labels=labels_of()), "float pixels span"),
    "float above 255": (lambda p: write_npz(p, images=_pixels(300.0), labels=labels_of()), "float pixels span"),
    "negative ints": (lambda p: write_npz(p, images=_pixels(-7, np.int32), labels=labels_of()), "integer pixels span"),
    "ints above 255": (lambda p: write_npz(p, images=_pixels(4000, np.int32), labels=labels_of()), "integer pixels span"),
    "bool images": (lambda p: write_npz(p, images=images_of() > 100, labels=labels_of()), "type bool"),
    "complex images": (lambda p: write_npz(p, images=images_of().astype(np.complex64), labels=labels_of()), "type complex64"),
    "object array": (lambda p: np.savez(p, images=np.array([np.zeros(3), "x"], dtype=object), labels=labels_of(2)), "Python objects"),
    ".npy renamed": (lambda p: np.save(open(p, "wb"), images_of()), "a .npy array"),
    "text renamed": (lambda p: p.write_text("images,labels\n1,2\n"), "not a zip archive"),
    "zero bytes": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (lambda p: (write_npz(p, images=images_of(), labels=labels_of()), p.write_bytes(p.read_bytes()[:300])), "damaged"),
    "no images key": (lambda p: write_npz(p, pixels=images_of(), labels=labels_of()), "no 'images' array"),
    "duplicate class names": (lambda p: write_npz(p, images=images_of(), labels=labels_of(), classes=np.array(["a", "a", "b"])), "more than once"),
    "empty class name": (lambda p: write_npz(p, images=images_of(), labels=labels_of(), classes=np.array(["a", " ", "b"])), "empty name"),
    "single class": (lambda p: write_npz(p, images=images_of(), labels=np.zeros(12, int)), "at least two"),
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
    other = write_npz(tmp_path / "other.npz", images=images_of(), labels=labels_of(), classes=np.array(["cat", "dog", "emu"]))
    code, _, err = run_cli(["fit", toy(tmp_path / "toy.npz"), *TINY, flag, other, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, str(other))
    assert "not among the training classes" in err and not partials(tmp_path)


def test_class_with_too_few_images_says_how_many_were_left(tmp_path, capsys):
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    data = write_npz(tmp_path / "few.npz", images=images_of(22), labels=labels, classes=np.array(["a", "b", "c"]))
    code, _, err = run_cli(["fit", data, *TINY, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "class 'c' has 1 image left")
    assert "test share is split off first" in err


# --- 3. inputs graft accepts, with the documented behaviour --------------------------------------------------------------
def test_bombs_dangling_links_and_broken_images_are_skipped_and_named(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs", per_class=8)
    bomb(data / "a" / "bomb.png")
    (data / "b" / "huge.png").write_bytes(png_header(65535, 65535))
    (data / "b" / "gone.png").symlink_to(tmp_path / "deleted.png")
    broken(data / "a" / "broken.png")
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
