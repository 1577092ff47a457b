"""The training loop: learning, exact resume, 2-process DDP equivalence, checkpoints, validation, skipping."""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from test_train_support import TinyBackbone, make_dataset, textured_frames, write_frame_folder
from vlprop.errors import InputError
from vlprop.cli.train import train_main
from vlprop.train import TrainConfig, Trainer, resolve_run_weights
from vlprop.train.logs import RunLog, read_csv


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clips"), videos=4, frames=12, size=64)


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), iters=8, batch=4, frames=3, crop=64, grid=4, grid_ref=2, key_dim=16,
                lr=1e-3, workers=0, holdout=0, ckpt_every=100, log_every=1, progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def losses(run: Path) -> list[tuple[int, str]]:
    return [(int(r["step"]), r["loss"]) for r in read_csv(run / "train.csv")]


def test_loss_decreases_over_a_few_dozen_steps(clips, tmp_path):
    result = Trainer(tiny_config(clips, tmp_path / "run", iters=40), backbone=TinyBackbone()).fit()
    values = [r.values["loss"] for r in result.history]
    assert len(values) == 40 and all(np.isfinite(values))
    first, last = np.mean(values[:8]), np.mean(values[-8:])
    assert last < 0.85 * first, (first, last)


class _Crash(RuntimeError):
    pass


def _crash_at(step: int):
    def cb(trainer, s, values):
        if s == step:
            raise _Crash(f"simulated kill at step {s}")
    return cb


def test_killed_and_resumed_run_continues_with_identical_losses(clips, tmp_path):
    ref = tmp_path / "ref"
    Trainer(tiny_config(clips, ref, ckpt_every=3), backbone=TinyBackbone()).fit()

    run = tmp_path / "run"
    with pytest.raises(_Crash):
        Trainer(tiny_config(clips, run, ckpt_every=3), backbone=TinyBackbone(), callbacks=[_crash_at(5)]).fit()
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4, 5]  # steps 4-5 were logged after the last checkpoint
    with pytest.raises(InputError, match="already holds a run"):
        Trainer(tiny_config(clips, run), backbone=TinyBackbone())
    # Resume from the checkpoint file (and with loader workers: clips do not depend on them).
    resumed = Trainer(tiny_config(clips, run, workers=1), backbone=TinyBackbone(), resume=run / "last.pt")
    assert resumed.step == 3
    resumed.fit()
    assert losses(run) == losses(ref)  # repr-exact floats, steps 1..8, no duplicates
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


# ---------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recorder(store: list):
    def cb(trainer, step, values):
        grads = torch.cat([p.grad.flatten() for p in trainer.net.parameters()])
        store.append({"step": step, "loss": values["loss"], "temp": values["temp"], "cross": values["cross"],
                      "grad": grads.tolist()})
    return cb


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    try:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        rec: list = []
        trainer = Trainer(tiny_config(Path(data), Path(out), iters=3), backbone=TinyBackbone(), callbacks=[_recorder(rec)])
        trainer.fit()
        if rank == 0:
            Path(out, "record.json").write_text(json.dumps(rec))
    except BaseException:
        Path(out, f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(clips, tmp_path):
    single: list = []
    Trainer(tiny_config(clips, tmp_path / "single", iters=3), backbone=TinyBackbone(),
            callbacks=[_recorder(single)]).fit()

    out = tmp_path / "ddp"
    out.mkdir()
    # fork: the children reuse this process's imports (spawn would re-import torch: ~10 s more).
    ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), str(clips), str(out)), nprocs=2, join=False,
                             start_method="fork")
    deadline = time.time() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.time() < deadline, "DDP workers timed out"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    errors = list(out.glob("error*.txt"))
    assert not errors, errors[0].read_text()
    ddp = json.loads((out / "record.json").read_text())
    assert [r["step"] for r in ddp] == [1, 2, 3]
    for s, d in zip(single, ddp):
        for k in ("loss", "temp", "cross"):
            assert d[k] == pytest.approx(s[k], rel=1e-5, abs=1e-6), (s["step"], k)
        gs, gd = torch.tensor(s["grad"]), torch.tensor(d["grad"])
        # the averaged DDP gradient (gathered anchors + synchronised BN) equals the global-batch one: to float32
        # rounding at step 1 (measured 1e-6 of the largest entry). Later steps start from parameters that
        # already differ by that rounding, which the T = 0.05 softmaxes amplify: on an AVX-512 Xeon step 2
        # differs by 1.1e-4 (7e-5 in L2 norm) and step 3 by 4e-6, while the losses agree to 1e-5.
        tol = 1e-4 if s["step"] == 1 else 5e-4
        assert (gs - gd).abs().max() <= tol * gs.abs().max(), s["step"]


def test_gradient_accumulation_averages_the_micro_batch_gradients(clips, tmp_path):
    acc: list = []
    Trainer(tiny_config(clips, tmp_path / "acc", iters=1, batch=4, accum=2), backbone=TinyBackbone(),
            callbacks=[_recorder(acc)]).fit()
    # The same clips as two batches of 2 (samples 0-1, then 2-3) with lr = 0, so both see the same weights.
    sep: list = []
    Trainer(tiny_config(clips, tmp_path / "sep", iters=2, batch=2, lr=0.0), backbone=TinyBackbone(),
            callbacks=[_recorder(sep)]).fit()
    assert acc[0]["loss"] == pytest.approx((sep[0]["loss"] + sep[1]["loss"]) / 2, rel=1e-6)
    g_acc = torch.tensor(acc[0]["grad"])
    g_sep = (torch.tensor(sep[0]["grad"]) + torch.tensor(sep[1]["grad"])) / 2
    torch.testing.assert_close(g_acc, g_sep, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- checkpoints
def test_cli_run_writes_a_vlprop_checkpoint_that_backbones_load_and_resumes_from_the_run_dir(clips, tmp_path):
    from vlprop.backbones import create_backbone
    from vlprop.train.checkpoint import load_model_weights
    from vlprop.train.methods.dul import DUL

    from vlprop.cli import main as vlprop_main

    run = tmp_path / "run"
    args = ["train", "dul", "--data", str(clips), "--out", str(run), "--iters", "1", "--batch", "2", "--frames", "2",
            "--crop", "64", "--workers", "0", "--holdout", "1", "--no-progress", "--no-tensorboard"]
    assert vlprop_main(args) == 0  # `vlprop train dul ...`
    path = resolve_run_weights(run)
    assert path == run / "last.pt"
    obj = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values only
    assert (obj["format"], obj["arch"], obj["layer"], obj["stride"]) == ("vlprop", "resnet18", "res4", 8)
    assert "layer4.1.bn2.running_var" in obj["state_dict"] and "conv1.weight" in obj["state_dict"]
    assert set(obj["head"]) >= {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.running_mean", "conv2.weight"}
    assert obj["head"]["conv2.weight"].shape == (128, 512, 1, 1)
    assert obj["meta"]["method"] == "dul" and obj["meta"]["step"] == 1 and len(obj["meta"]["holdout"]) == 1
    assert obj["training"]["step"] == 1

    # The backbones module reads it (res4 by default, and the key head).
    net = DUL().build(create_backbone("resnet18", stride=8, layer="res4")).eval()
    load_model_weights(net, obj)
    x = torch.randn(1, 3, 32, 48)
    res4 = create_backbone("resnet18", weights=str(path)).eval()
    assert (res4.layer, res4.stride) == ("res4", 8)
    head = create_backbone("resnet18", weights=str(path), layer="head").eval()
    with torch.no_grad():
        torch.testing.assert_close(res4(x), net.backbone(x))
        torch.testing.assert_close(torch.nn.functional.normalize(head(x), dim=1), net(x))

    assert train_main(["dul", "--resume", str(run), "--iters", "2", "--no-progress", "--no-tensorboard"]) == 0
    assert vlprop_main(["train", "dul", "--data", str(clips)]) == 2  # no --out: a clear error, no traceback
    assert [s for s, _ in losses(run)] == [1, 2]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["training"]["step"] == 2

    # A new run initialised from it starts from both its backbone and its key head.
    ft = Trainer(TrainConfig(data=str(clips), out=str(tmp_path / "ft"), init=str(run / "last.pt"), crop=64,
                             frames=2, batch=2, workers=0, holdout=0, progress=False))
    assert ft.step == 0
    for k, v in ft.net.head.state_dict().items():
        assert torch.equal(v, last["head"][k]), k
    for k, v in ft.net.backbone.state_dict().items():
        assert torch.equal(v, last["state_dict"][k]), k

    # `vlprop export RUN --out MODEL.pt`: float16 weights without the training state, half the size,
    # loading to the same features up to fp16 rounding; --meta is recorded.
    model = tmp_path / "model.pt"
    assert vlprop_main(["export", str(run), "--out", str(model), "--meta", '{"val_JF": 0.5}']) == 0
    small = torch.load(model, map_location="cpu", weights_only=True)
    assert "training" not in small and small["meta"]["val_JF"] == 0.5 and small["meta"]["dtype"] == "float16"
    assert small["state_dict"]["conv1.weight"].dtype == torch.float16
    assert small["state_dict"]["layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    assert model.stat().st_size < 0.55 * (run / "last.pt").stat().st_size
    exported = create_backbone("resnet18", weights=str(model)).eval()
    assert next(exported.parameters()).dtype == torch.float32
    full = create_backbone("resnet18", weights=str(resolve_run_weights(run))).eval()
    with torch.no_grad():
        ref, got = full(x), exported(x)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 5e-3, rel
    assert vlprop_main(["export", str(run), "--out", str(tmp_path / "bad.pt"), "--meta", "[1]"]) == 2


def test_validation_hook_is_logged_and_keeps_the_best_checkpoint(clips, tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    seen = []

    def stand_in(ctx):  # e.g. label-propagation J&F on the held-out videos
        seen.append((ctx.step, [e.name for e in ctx.holdout], ctx.net.training))
        return {"score": next(scores)}

    run = tmp_path / "run"
    cfg = tiny_config(clips, run, iters=6, holdout=1, val_every=2, val_clips=2)
    result = Trainer(cfg, backbone=TinyBackbone(), validators=[stand_in]).fit()
    assert [s for s, _, _ in seen] == [2, 4, 6] and all(not training for _, _, training in seen)
    assert len(seen[0][1]) == 1 and (run / "holdout.txt").read_text().split() == seen[0][1]
    rows = read_csv(run / "val.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(float(r["val_loss"]) > 0 for r in rows)  # built-in held-out loss is logged too
    assert result.best_score == 0.9 and result.best == run / "best.pt"
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["meta"]["step"] == 4 and best["format"] == "vlprop" and "training" not in best
    assert resolve_run_weights(run) == run / "best.pt"


def test_corrupt_and_short_videos_are_skipped_and_counted_during_training(clips, tmp_path):
    data = tmp_path / "data"
    for v in ("seq00", "seq01"):
        write_frame_folder(data / v, textured_frames(10, 64, seed=int(v[-1])))
    write_frame_folder(data / "short", textured_frames(2, 64))
    (data / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    (data / "broken").mkdir()
    for i in range(10):
        (data / "broken" / f"{i:05d}.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning):
        result = Trainer(tiny_config(data, tmp_path / "run", iters=3), backbone=TinyBackbone()).fit()
    assert result.step == 3
    assert {"short", "corrupt"} <= set(result.skipped_videos)
    assert result.skipped_videos.get("broken", 0) >= 1  # 3 training videos, 12 clips: "broken" was drawn
    rows = read_csv(tmp_path / "run" / "train.csv")
    assert float(rows[-1]["skipped"]) == 2 + result.skipped_videos["broken"]


def test_tensorboard_is_optional(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.warns(UserWarning, match="TensorBoard logging disabled"):
        log = RunLog(tmp_path)
    log.log_train(1, {"loss": 1.5})
    log.close()
    assert read_csv(tmp_path / "train.csv") == [{"step": "1", "loss": "1.5"}]


def _bn_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or k.endswith(".weight")}


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_bn_keeps_the_initial_batchnorm_statistics_while_the_weights_train(clips, tmp_path, freeze):
    backbone = TinyBackbone()
    before = _bn_state(backbone)
    trainer = Trainer(tiny_config(clips, tmp_path / "run", iters=3, freeze_bn=freeze), backbone=backbone)
    trainer.fit()
    after = _bn_state(trainer.net.core.backbone)
    bns = [n for n, m in backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for n in bns:
        stats_same = all(torch.equal(before[f"{n}.{s}"], after[f"{n}.{s}"]) for s in ("running_mean", "running_var"))
        assert stats_same == freeze, n
        assert not torch.equal(before[f"{n}.weight"], after[f"{n}.weight"]), n  # the affine weights still learn
    assert trainer.net.training  # the rest of the network is still in train mode
