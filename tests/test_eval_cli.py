"""`vlprop eval vos` / `vlprop eval score` end to end on tiny synthetic datasets (and two real DAVIS frames)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprop.cli import main
from vlprop.demo import synthetic_video
from vlprop.eval.datasets import read_index_mask
from vlprop.eval.score import GLOBAL_COLUMNS, PER_OBJECT_COLUMNS, main_score
from vlprop.io.masks import write_mask

SEQS = ("alpha", "beta", "gamma")
MODEL = ["--weights", "random", "--preset", "crw", "--seed", "0", "--quiet"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The tiny inputs run much faster on one thread (and the CPU is shared); restore afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make_dataset(root: Path) -> Path:
    for k, name in enumerate(SEQS):
        vid = synthetic_video(num_frames=6, height=64, width=96, seed=10 + k)
        for t in range(6):
            (root / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(vid.frames[t]).save(root / "JPEGImages" / name / f"{t:05d}.jpg", quality=95)
            write_mask(root / "Annotations" / name / f"{t:05d}.png", vid.masks[t])
    return root


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A synthetic folder dataset and one single-process evaluation of it."""
    base = tmp_path_factory.mktemp("eval")
    ds = _make_dataset(base / "ds")
    out = base / "out"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out)] + MODEL)
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return ds, out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pngs(out: Path) -> dict[str, np.ndarray]:
    return {f"{s}/{p.name}": read_index_mask(p) for s in SEQS for p in sorted((out / s).glob("*.png"))}


def _same_predictions(a: Path, b: Path) -> None:
    pa, pb = _pngs(a), _pngs(b)
    assert sorted(pa) == sorted(pb) and len(pa) == 18
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def test_eval_vos_writes_the_submission_layout_and_tables_equal_to_main_score(baseline):
    ds, out = baseline
    for s in SEQS:  # same names as the GT
        assert sorted(p.name for p in (out / s).glob("*.png")) == \
            sorted(p.name for p in (ds / "Annotations" / s).glob("*.png"))
        assert Image.open(out / s / "00003.png").mode == "P"
        # the first frame is the given label
        assert np.array_equal(read_index_mask(out / s / "00000.png"),
                              read_index_mask(ds / "Annotations" / s / "00000.png"))
    rows = _csv_rows(out / "global_results.csv")
    assert list(rows[0]) == list(GLOBAL_COLUMNS) and len(rows) == 1
    per = _csv_rows(out / "per-sequence_results.csv")
    assert list(per[0]) == list(PER_OBJECT_COLUMNS)
    assert [r["Sequence"] for r in per] == [f"{s}_{i}" for s in SEQS for i in (1, 2)]

    ref = main_score(out, ds / "Annotations", task="semi")
    for c in GLOBAL_COLUMNS:
        assert rows[0][c] == f"{ref['global'][c]:.3f}"
    assert 0 < ref["global"]["J-Mean"] < 1  # a real score, not a trivial 0 or 1
    ref_objects = {o["name"]: o for o in ref["objects"]}
    for r in per:
        assert r["J-Mean"] == f"{ref_objects[r['Sequence']]['J-Mean']:.3f}"
        assert r["F-Mean"] == f"{ref_objects[r['Sequence']]['F-Mean']:.3f}"

    proto = json.loads((out / "protocol.json").read_text())
    import vlprop

    assert proto["preset"]["name"] == "crw"
    assert proto["preset"]["settings"]["propagation"]["topk"] == 10
    assert proto["backbone"] == "resnet18" and proto["weights"]["description"] == "random seed 0"
    assert proto["vlprop_version"] == vlprop.__version__ and proto["torch_version"] == torch.__version__
    assert proto["device"] == "cpu" and proto["timestamp"]
    assert proto["input"]["sizes"] == [{"image_hw": [64, 96], "network_input_hw": [64, 96], "grid_hw": [8, 12],
                                        "stride": 8, "sequences": 3}]
    for s in SEQS:
        v = proto["sequences"][s]
        assert v["frames"] == 6 and v["wall_time_s"] > 0 and v["fps"] == pytest.approx(6 / v["wall_time_s"], rel=1e-2)
    assert proto["results"]["J&F-Mean"] == pytest.approx(ref["global"]["J&F-Mean"])
    md = (out / "results.md").read_text()
    assert "| J&F-Mean |" in md and "random seed 0" in md and "| alpha | 6 |" in md


def test_ground_truth_as_prediction_scores_one(baseline, tmp_path, capsys):
    ds, _ = baseline
    rc = main(["eval", "score", "--pred", str(ds / "Annotations"), "--gt", str(ds / "Annotations"),
               "--out", str(tmp_path / "res"), "--workers", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| 1.000 | 1.000 | 1.000 | 0.000 | 1.000 | 1.000 | 0.000 |" in printed
    row = _csv_rows(tmp_path / "res" / "global_results.csv")[0]
    assert row["J&F-Mean"] == "1.000" and row["F-Mean"] == "1.000"


def test_score_command_reports_a_missing_prediction_file_by_name(baseline, tmp_path, capsys):
    ds, out = baseline
    pred = tmp_path / "pred"
    shutil.copytree(out, pred)
    (pred / "beta" / "00002.png").unlink()
    assert main(["eval", "score", "--pred", str(pred), "--gt", str(ds / "Annotations")]) == 2
    err = capsys.readouterr().err
    assert "beta/00002.png" in err and "Traceback" not in err


def test_rerun_resumes_and_recomputes_only_unfinished_sequences(baseline, tmp_path):
    ds, base_out = baseline
    out = tmp_path / "out"
    shutil.copytree(base_out, out)  # copy2 keeps the mtimes
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    shutil.rmtree(out / "beta")  # deleted outputs
    (out / ".vlprop-eval" / "done" / "gamma.json").unlink()  # interrupted before its marker landed
    assert main(["eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out)] + MODEL) == 0
    proto = json.loads((out / "protocol.json").read_text())
    assert {s: v["computed_in_this_run"] for s, v in proto["sequences"].items()} == \
        {"alpha": False, "beta": True, "gamma": True}
    for p, mtime in before.items():
        if "alpha" in p.parts or p.name == "alpha.json":
            assert p.stat().st_mtime_ns == mtime, p  # untouched
    assert (out / "gamma" / "00001.png").stat().st_mtime_ns != before[out / "gamma" / "00001.png"]
    _same_predictions(out, base_out)
    for name in ("global_results.csv", "per-sequence_results.csv"):
        assert (out / name).read_text() == (base_out / name).read_text()

    # nothing left to do: a rerun propagates nothing
    assert main(["eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out)] + MODEL) == 0
    proto = json.loads((out / "protocol.json").read_text())
    assert not any(v["computed_in_this_run"] for v in proto["sequences"].values())


def test_rerun_with_other_settings_is_refused_unless_forced(baseline, tmp_path, capsys):
    ds, base_out = baseline
    out = tmp_path / "out"
    shutil.copytree(base_out, out)
    args = ["eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out), "--weights", "random",
            "--preset", "dul", "--quiet", "--sequences", "alpha"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "preset.name: 'crw' -> 'dul'" in err and "--force" in err
    assert main(args[:-2] + ["--set", "topk=5", "--preset", "crw", "--sequences", "alpha"]) == 2
    assert "preset.propagation.topk: 10 -> 5" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    marker = json.loads((out / ".vlprop-eval" / "done" / "alpha.json").read_text())
    assert marker["settings"]["preset"]["name"] == "dul"
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["dataset"]["sequences"] == ["alpha"] and proto["preset"]["name"] == "dul"


def _davis2016(root: Path, n: int = 3) -> Path:
    vid = synthetic_video(num_frames=n, height=48, width=64, seed=4, num_objects=1)
    (root / "ImageSets").mkdir(parents=True)
    (root / "ImageSets" / "val.txt").write_text("cat\n")
    for t in range(n):
        (root / "JPEGImages" / "480p" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(vid.frames[t]).save(root / "JPEGImages" / "480p" / "cat" / f"{t:05d}.jpg")
        (root / "Annotations" / "480p" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray((vid.masks[t] > 0).astype(np.uint8) * 255).save(
            root / "Annotations" / "480p" / "cat" / f"{t:05d}.png")
    return root


def _vos(dataset: str, root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "vos", "--dataset", dataset, "--root", str(root), "--out", str(out)] + MODEL + list(extra)


def test_bad_inputs_exit_with_code_2_and_name_the_file(tmp_path, capsys):
    def fails(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        for n in needles:
            assert n in err, (n, err)

    out = tmp_path / "out"
    fails(_vos("davis2016", tmp_path / "nowhere", out), "dataset root not found", "nowhere")
    root = _davis2016(tmp_path / "d16")
    fails(_vos("davis2016", root, out, "--split", "test"), "split 'test' not found", "available splits: val")
    fails(_vos("davis2016", root, out, "--split", "val", "--sequences", "dog"), "dog", "available: cat")
    (root / "Annotations" / "480p" / "cat" / "00001.png").unlink()
    fails(_vos("davis2016", root, out, "--split", "val"), "Annotations/480p/cat/00001.png", "missing")
    Image.new("L", (32, 32)).save(root / "Annotations" / "480p" / "cat" / "00001.png")
    fails(_vos("davis2016", root, out, "--split", "val"), "Annotations/480p/cat/00001.png", "32x32", "64x48")
    (root / "JPEGImages" / "480p" / "cat" / "00002.jpg").unlink()
    fails(_vos("davis2016", root, out, "--split", "val"), "Annotations/480p/cat/00002.png", "has no frame")
    (tmp_path / "empty").mkdir()
    fails(_vos("folder", tmp_path / "empty", out), "frame folder not found", "JPEGImages")
    fails(_vos("folder", _make_dataset(tmp_path / "ok"), out, "--weights", str(tmp_path / "w.pt")),
          "weights file not found", "w.pt")
    fails(_vos("folder", tmp_path / "ok", out, "--workers", "0"), "--workers must be at least 1")
    fails(["eval", "score", "--pred", str(tmp_path / "ok" / "Annotations"), "--gt", str(tmp_path / "nothing")],
          "ground-truth folder not found", "nothing")
    assert not (out / "global_results.csv").exists()
    odd = _make_dataset(tmp_path / "odd")  # one frame (and its mask) of another size inside a sequence
    Image.new("RGB", (32, 32)).save(odd / "JPEGImages" / "beta" / "00003.jpg")
    Image.new("L", (32, 32)).save(odd / "Annotations" / "beta" / "00003.png")
    fails(_vos("folder", odd, out, "--sequences", "beta"), "JPEGImages/beta/00003.jpg", "32x32", "96x64")
    assert not (out / ".vlprop-eval" / "done" / "beta.json").exists()


def _youtube_vos(root: Path, split: str, every_frame: bool) -> Path:
    vid = synthetic_video(num_frames=6, height=48, width=64, seed=7, appear_at={2: 3})
    d = root / split
    objects = {str(i): {"category": "shape", "frames": [f"{t:05d}" for t in range(6) if (vid.masks[t] == i).any()]}
               for i in (1, 2)}
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"videos": {"v1": {"objects": objects}}}))
    for t in range(6):
        (d / "JPEGImages" / "v1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(vid.frames[t]).save(d / "JPEGImages" / "v1" / f"{t:05d}.jpg", quality=95)
        if every_frame:
            write_mask(d / "Annotations" / "v1" / f"{t:05d}.png", vid.masks[t])
        elif t in (0, 3):  # valid split: only where an object first appears, only that object
            write_mask(d / "Annotations" / "v1" / f"{t:05d}.png", np.where(vid.masks[t] == (1 if t == 0 else 2),
                                                                           vid.masks[t], 0))
    return vid


def test_youtube_vos_objects_appear_mid_video_and_valid_is_not_scored(tmp_path, capsys):
    vid = _youtube_vos(tmp_path / "yt", "valid", every_frame=False)
    out = tmp_path / "out"
    assert main(_vos("ytvos", tmp_path / "yt", out, "--split", "valid")) == 0
    assert "nothing scored" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "v1").glob("*.png")) == [f"{t:05d}.png" for t in range(6)]
    preds = [read_index_mask(out / "v1" / f"{t:05d}.png") for t in range(6)]
    assert all(2 not in p for p in preds[:3])  # object 2 only exists from its first annotation on
    assert np.array_equal(preds[3] == 2, vid.masks[3] == 2)
    assert not (out / "global_results.csv").exists()
    assert json.loads((out / "protocol.json").read_text())["results"] is None

    _youtube_vos(tmp_path / "yt", "train", every_frame=True)
    out = tmp_path / "out_train"
    assert main(_vos("ytvos", tmp_path / "yt", out, "--split", "train")) == 0
    per = {r["Sequence"]: r for r in _csv_rows(out / "per-sequence_results.csv")}
    assert sorted(per) == ["v1_1", "v1_2"]
    objs = {o["name"]: o for o in json.loads((out / "results.json").read_text())["objects"]}
    assert objs["v1_2"]["frames"] == ["00004"]  # after its first frame, before the last annotated frame
    assert objs["v1_1"]["frames"] == ["00001", "00002", "00003", "00004"]


def test_worker_processes_give_the_same_predictions(baseline, tmp_path):
    ds, base_out = baseline
    out = tmp_path / "out"
    assert main(["eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out), "--workers", "2"]
                + MODEL) == 0
    _same_predictions(out, base_out)
    assert (out / "global_results.csv").read_text() == (base_out / "global_results.csv").read_text()
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["parallel"]["workers"] == 2
    assert len({v["geometry"]["grid_width"] for v in proto["sequences"].values()}) == 1


def test_torchrun_with_two_ranks_equals_a_single_process_run(baseline, tmp_path):
    ds, base_out = baseline
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    # --standalone: a local rendezvous on a port the OS picks (no race for a "free" port with other jobs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vlprop.cli", "eval", "vos", "--dataset", "folder", "--root", str(ds), "--out", str(out)] + MODEL
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("| J&F-Mean |") == 1  # only rank 0 reports
    assert "3 propagated by 2 ranks" in proc.stdout
    ranks = {s: json.loads((out / ".vlprop-eval" / "done" / f"{s}.json").read_text())["rank"] for s in SEQS}
    assert ranks == {"alpha": 0, "beta": 1, "gamma": 0}
    _same_predictions(out, base_out)
    for name in ("global_results.csv", "per-sequence_results.csv"):
        assert (out / name).read_text() == (base_out / name).read_text()
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["parallel"]["world_size"] == 2
    assert all(v["computed_in_this_run"] for v in proto["sequences"].values())


def test_real_davis2016_layout_with_two_frames(davis2016, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", "vos", "--dataset", "davis2016", "--root", str(davis2016), "--split", "val-dev",
                 "--sequences", "blackswan", "--max-frames", "2", "--out", str(out)] + MODEL) == 0
    assert sorted(p.name for p in (out / "blackswan").glob("*.png")) == ["00000.png", "00001.png"]
    first = read_index_mask(out / "blackswan" / "00000.png")
    gt = read_index_mask(davis2016 / "Annotations" / "480p" / "blackswan" / "00000.png")
    assert first.shape == (480, 854) and np.array_equal(first, (gt > 0).astype(np.uint8))
    assert set(np.unique(read_index_mask(out / "blackswan" / "00001.png"))) <= {0, 1}
    proto = json.loads((out / "protocol.json").read_text())
    assert proto["input"]["sizes"][0]["grid_hw"] == [60, 107]
    # two frames leave nothing for the semi-supervised protocol (first and last frame are not scored)
    assert proto["unscored_sequences"] == ["blackswan"] and not (out / "global_results.csv").exists()
