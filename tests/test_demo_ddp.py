"""The README's demo, and a 2-process CPU DDP fine-tune through the CLI."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import make_images


def test_demo_transfer_beats_scratch(tmp_path):
    from graft.demonstration import demo

    rows = demo(out=tmp_path / "demo", quiet=True)
    accuracy = {r["route"]: r["test_accuracy"] for r in rows}
    assert set(accuracy) == {"scratch", "linear", "finetune", "lpft"}
    assert max(accuracy["linear"], accuracy["lpft"], accuracy["finetune"]) > accuracy["scratch"]
    assert (tmp_path / "demo" / "report.html").exists()


def test_two_process_ddp_finetune(tmp_path):
    images, labels = make_images(64, 2)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "graft", "fit", str(tmp_path / "d.npz"), "--route", "scratch", "--backbone", "graft_convnet_s",
               "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", "--quiet", "--out", str(tmp_path / "ddp"),
               "--image-size", "16", "--stages", "all:2", "--set", "model.channels_last=false", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["metrics"]["test_accuracy"] > 0.5
    assert meta["recipe"]["runtime"]["strategy"] == "ddp"
