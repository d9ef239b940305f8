"""The ``graft`` command (and ``python -m graft``): process-wide settings first, then :func:`graft.cli.main`."""
from __future__ import annotations

import os


def configure_process() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the user set the policy.

    On a shared machine a spinning thread holds a core that another process needs: on 2 shared cores, 2 threads beside
    one busy process trained at 36 images/s, 77 with PASSIVE (1 thread: 76), at the cost of some speed alone (93-96
    against 106-112). OpenMP reads the variable once, when torch loads, so this runs before anything imports torch,
    and only here: a program that imports graft keeps its own environment.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    configure_process()
    from graft.cli import main as cli_main  # imports torch: after configure_process

    cli_main()


if __name__ == "__main__":
    main()
