"""Reports draw without pyplot: graft leaves a notebook user's matplotlib backend and open figures alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import graft

from conftest import FAST


def test_import_and_report_keep_the_users_backend_and_figures(toy_npz, tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")  # the user's choice, not Agg
import matplotlib.pyplot as plt
plt.figure()
import graft, graft.api, graft.report
run = graft.fit({str(toy_npz)!r}, route="scratch", backbone="graft_convnet_s", out={str(tmp_path / "run")!r}, quiet=True,
                overrides={[*FAST, "train.stages=all:1"]!r})
page = (run.path / "report.html").read_text()
import json
print(json.dumps([matplotlib.get_backend(), plt.get_fignums(), page.count("data:image/png;base64,")]))
"""
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env["PYTHONPATH"] = str(Path(graft.__file__).parents[1])  # a fresh interpreter on this checkout's graft
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    backend, figures, pictures = json.loads(out.strip().splitlines()[-1])
    assert backend == "svg" and figures == [1]  # the backend and the user's open figure survived
    assert pictures >= 2  # the confusion matrix and the curves were still drawn and embedded
