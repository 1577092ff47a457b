"""The benchmark scripts run, and what they print is right (no timing is asserted)."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell}")]


def test_propagation_benchmark_engine_matches_the_naive_dense_step():
    # run as a script, as documented (its memory rows use spawned child processes)
    res = subprocess.run([sys.executable, str(BENCH / "propagation.py"), "--grid", "12x20", "--presets", "crw",
                          "waldmann-davis", "--repeats", "1", "--skip-lengths"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for preset in ("crw", "waldmann-davis"):
        (row,) = _rows(out, preset)
        assert float(row[5]) < 1e-5, row            # max |diff| engine vs dense, float32
        assert float(row[6]) > 0 and float(row[7]) > 0  # peak MB of both, from child processes


@pytest.mark.parametrize("window,radius,tile,side", [("disk", 12, 8, 23), ("square", 4, 4, 9)])
def test_window_kernel_benchmark_counts_the_tiling_flops(capsys, window, radius, tile, side):
    bench = _load("window_kernel")
    bench.main(["--grid", "16x24", "--dim", "32", "--window", window, "--radius", str(radius),
                "--tiles", str(tile), "--repeats", "1", "--context", "3"])
    out = capsys.readouterr().out
    (row,) = _rows(out, str(tile))
    patch = tile + side - 1
    assert row[1] == f"{patch}x{patch}"
    flops = 2 * math.ceil(16 / tile) * math.ceil(24 / tile) * tile * tile * patch * patch * 32
    assert float(row[2]) == pytest.approx(flops / 1e9, rel=0.006)
    dense_gflop = float(out.split("dense first frame: ")[1].split(" ms, ")[1].split(" GFLOP")[0])
    assert dense_gflop == pytest.approx(2 * (16 * 24) ** 2 * 32 / 1e9, rel=0.006)


def test_dense_workspace_benchmark_compares_equal_outputs(capsys):
    bench = _load("dense_workspace")
    assert bench.main(["--grids", "12x20", "30x7", "--chunk", "50", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for grid, cells in (("12x20", 240), ("30x7", 210)):
        (row,) = _rows(out, grid)
        assert float(row[1]) == pytest.approx(50 * cells * 4 / 2**20, abs=0.5)  # chunk MB of the tiling
        assert float(row[9]) == 0.0  # both ways compute the same top-k values


def test_confidence_benchmark_ranks_a_perfect_predictor_at_plus_one():
    mod = _load("confidence_vs_error")
    rows = [{"J": j, "confidence": c, "sharpness": c, "stability": 1 - c}
            for j, c in zip([0.9, 0.2, 0.5, 0.7, 0.1, 0.95, 0.3, 0.6, 0.8, 0.4], [9, 2, 5, 7, 1, 10, 3, 6, 8, 4])]
    (row,) = _rows(mod.summarise(rows, "s"), "s")
    assert row[1] == "10" and row[2] == "0.545"
    assert row[3:6] == ["+1.000", "+1.000", "-1.000"]
    assert row[6] == "1/1"  # the least confident frame is the worst
