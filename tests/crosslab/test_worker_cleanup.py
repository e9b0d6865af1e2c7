"""A killed command leaves no worker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bcfeat import paths

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_measuring_workers_end_when_the_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, sys, time
        from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 255, (300, 300, 3), dtype=np.uint8) for _ in range(400)]
        print("ready", flush=True)
        CrossLabModel(CrossLabConfig(mask_source="stain", n_workers=2)).measure(images)
    """)
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        workers = set()
        while len(workers) < 2 and time.time() < deadline:
            workers = {c for c in _children(parent.pid) if _alive(c)}
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool did not start"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 30
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
