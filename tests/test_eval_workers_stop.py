"""Evaluation workers never outlive their run: stopped on an error/Ctrl-C/SIGTERM, and killed with a dead parent."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from vlprop.eval.runner import die_with_parent, stop_pool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent to reap it is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_gone(pids, seconds=10.0) -> list[int]:
    end = time.time() + seconds
    while time.time() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_stop_pool_terminates_running_jobs():
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futs = [pool.submit(time.sleep, 60) for _ in range(3)]
    time.sleep(2.0)  # the workers are running their sleeps
    pids = list(pool._processes)
    assert pids and all(_alive(p) for p in pids)
    stop_pool(pool)
    assert _wait_gone(pids) == []
    assert futs[2].cancelled() or futs[2].done()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_workers_die_when_the_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import multiprocessing, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from vlprop.eval.runner import die_with_parent
        pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent)
        futs = [pool.submit(time.sleep, 120) for _ in range(2)]
        time.sleep(3.0)
        print(" ".join(str(p) for p in pool._processes), flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        assert pids and all(_alive(p) for p in pids)
        child.send_signal(signal.SIGKILL)  # no handler can run: only the kernel's parent-death signal helps
        child.wait(timeout=10)
        assert _wait_gone(pids) == [], "workers outlived their killed parent"
    finally:
        if child.poll() is None:
            child.kill()
    assert callable(die_with_parent)
