"""Importing graft changes no global state: logging, warnings filters, random streams, torch and matplotlib settings.

`import graft` alone imports no dependency at all. `import graft.api` must import torch, scikit-learn, rich ... whose own
imports add loggers, warning filters and draw from Python's `random` (scikit-learn imports rich.progress, whose
rich.style draws random bits); the check therefore imports every one of those modules first, in the order graft's
import loads them, and then asserts that graft's own modules change nothing on top.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import graft

SNAPSHOT = r'''
import json, logging, random, sys, warnings

def snapshot():
    state = {"root": [logging.root.level, [repr(h) for h in logging.root.handlers]], "disable": logging.root.manager.disable,
             "loggers": {name: [logger.level, [repr(h) for h in logger.handlers], logger.propagate, logger.disabled]
                         for name, logger in logging.root.manager.loggerDict.items() if isinstance(logger, logging.Logger)
                         and (logger.level or logger.handlers or not logger.propagate or logger.disabled)},
             "warnings": [repr(f) for f in warnings.filters], "showwarning": repr(warnings.showwarning),
             "random": repr(random.getstate()), "modules_with_pyplot": "matplotlib.pyplot" in sys.modules}
    if "numpy" in sys.modules:
        import numpy
        state.update(numpy_random=repr(numpy.random.get_state()[1][:8].tolist()) + str(numpy.random.get_state()[2]),
                     numpy_print=repr(numpy.get_printoptions()), numpy_errors=repr(numpy.geterr()))
    if "torch" in sys.modules:
        import torch
        state.update(threads=torch.get_num_threads(), dtype=str(torch.get_default_dtype()), grad=torch.is_grad_enabled(),
                     deterministic=torch.are_deterministic_algorithms_enabled(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                     matmul=torch.get_float32_matmul_precision(), torch_seed=torch.initial_seed(),
                     torch_random=torch.get_rng_state()[:64].tolist(), anomaly=torch.is_anomaly_enabled())
    if "matplotlib" in sys.modules:
        import matplotlib
        state.update(backend=matplotlib.rcParams._get_backend_or_none(), rc=repr(sorted((k, repr(v)) for k, v in dict.items(matplotlib.rcParams))))  # raw: reading "backend" would resolve it
    return state
'''


def _python(code: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    env["PYTHONPATH"] = str(Path(graft.__file__).parents[1])  # a fresh interpreter on this checkout's graft
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=300).stdout


def test_import_graft_loads_nothing_and_changes_nothing():
    out = _python(SNAPSHOT + """
import random
random.seed(7)
before, modules = snapshot(), set(sys.modules)
import graft
print(json.dumps([before == snapshot(), sorted(set(sys.modules) - modules)]))
""")
    unchanged, loaded = json.loads(out.strip().splitlines()[-1])
    assert unchanged
    assert all(name.split(".")[0] in ("graft", "__future__") for name in loaded), loaded  # lazy: no torch, no matplotlib


def test_graft_modules_change_no_global_state_beyond_their_dependencies():
    # which other modules graft's import loads, in order
    loaded = json.loads(_python("""
import json, sys
before = list(sys.modules)
import graft.api, graft.cli
print(json.dumps([m for m in sys.modules if m not in before and m.split('.')[0] != 'graft']))
""").strip().splitlines()[-1])
    assert "torch" in loaded and "matplotlib.figure" in loaded and "matplotlib.pyplot" not in loaded
    out = _python(SNAPSHOT + f"""
import importlib, random
for name in {loaded!r}:
    try:
        importlib.import_module(name)
    except Exception:  # a module only importable as a side effect of its package (already loaded then)
        pass
random.seed(7)
import numpy, torch
numpy.random.seed(7)
torch.manual_seed(7)
before = snapshot()
import graft, graft.api, graft.cli, graft.report, graft.run_report
after = snapshot()
print(json.dumps({{key: [before.get(key), after.get(key)] for key in set(before) | set(after) if before.get(key) != after.get(key)}}))
""")
    changed = json.loads(out.strip().splitlines()[-1])
    assert changed == {}, changed
