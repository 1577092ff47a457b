"""The fast paths: BatchNorm folding, memory format, --precision bf16, features kept on the extractor's device."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import vlprop.backbones.fusion as fusion
from vlprop.backbones import FeatureExtractor, create_backbone
from vlprop.backbones.extractor import CPU_BATCH_SIZE
from vlprop.backbones.fusion import bf16_supported, check_precision, fold_batchnorm
from vlprop.cli import main
from vlprop.demo import synthetic_video
from vlprop.errors import InputError
from vlprop.io.masks import write_mask
from vlprop.model import ModelSpec


def _random_bn_stats(net: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (the seeded init has mean 0, var 1, w 1, b 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return net.eval()


@pytest.mark.parametrize("arch,layer", [("resnet18", "res3"), ("resnet18", "res4"),
                                        ("efficientnet_lite0", "stage4"), ("efficientnet_lite1", "head")])
def test_batchnorm_folding_keeps_the_features(arch, layer):
    net = _random_bn_stats(create_backbone(arch, weights="random", layer=layer, seed=3))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(2, 3, 72, 104, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)
    folded = fold_batchnorm(net)
    assert folded is not net and folded.bn_folded == n_bn  # every BatchNorm of these nets follows a conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == n_bn  # the original is untouched
    with torch.no_grad():
        got = folded(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_extractor_with_folding_and_channels_last_gives_the_same_contiguous_features():
    frames = synthetic_video(num_frames=3, height=64, width=80, seed=2).frames
    plain = FeatureExtractor(_random_bn_stats(create_backbone("efficientnet_lite0", weights="random", seed=1)),
                             batch_size=3)
    fast = FeatureExtractor(_random_bn_stats(create_backbone("efficientnet_lite0", weights="random", seed=1)),
                            fold_bn=True, memory_format="channels_last")
    a, b = plain.extract_batch(list(frames)), fast.extract_batch(list(frames))
    assert fast.bn_folded > 0 and fast.batch_size == CPU_BATCH_SIZE  # the measured CPU default
    assert b.is_contiguous() and b.dtype == torch.float32
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_folding_a_conv_whose_output_is_used_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # y is needed unnormalised: folding would change the output

    net = _random_bn_stats(Twice())
    x = torch.randn(1, 3, 16, 16)
    out = fold_batchnorm(net)
    with torch.no_grad():
        torch.testing.assert_close(out(x), net(x))
    assert out.bn_folded == 0


# ----------------------------------------------------------------------------- precision
def test_precision_flag_is_parsed_and_reaches_the_model():
    from vlprop.cli import build_parser

    args = build_parser().parse_args(["propagate", "v.mp4", "--mask", "m.png", "--out", "o", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert build_parser().parse_args(["propagate", "v.mp4", "--out", "o"]).precision == "fp32"
    for verb in (["eval", "vos", "--dataset", "davis2016", "--root", "r", "--out", "o"],
                 ["segment", "v.mp4", "--out", "o"], ["eval", "pose", "--dataset", "jhmdb", "--root", "r", "--out", "o"]):
        assert build_parser().parse_args(verb + ["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["propagate", "v.mp4", "--out", "o", "--precision", "fp16"])


def test_bf16_on_hardware_without_it_is_a_clear_error(monkeypatch, small_video, capsys):
    monkeypatch.setattr(fusion, "bf16_supported", lambda device="cpu": False)
    with pytest.raises(InputError, match="bf16"):
        check_precision("bf16", "cpu")
    with pytest.raises(InputError, match="bf16"):
        ModelSpec(weights="random", precision="bf16").resolve()
    assert check_precision("fp32", "cpu") == "fp32"
    root, _ = small_video
    rc = main(["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--out", str(root / "out"),
               "--weights", "random", "--precision", "bf16", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--precision bf16" in err and "Traceback" not in err
    assert not (root / "out").exists()


def test_bf16_support_check_follows_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not bf16_supported("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_supported("cuda")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not bf16_supported("cpu")


needs_bf16 = pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bfloat16")


@pytest.fixture
def small_video(tmp_path):
    vid = synthetic_video(num_frames=6, height=96, width=128, seed=4, speed=2.0)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, f in enumerate(vid.frames):
        Image.fromarray(f).save(frames / f"{t:05d}.png")
    write_mask(tmp_path / "first.png", vid.masks[0])
    return tmp_path, vid


@needs_bf16
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_protocol_json_records_the_precision(small_video, precision):
    root, _ = small_video
    out = root / f"out-{precision}"
    assert main(["propagate", str(root / "frames"), "--mask", str(root / "first.png"), "--out", str(out),
                 "--weights", "random", "--backbone", "resnet18", "--layer", "res3", "--preset", "crw",
                 "--precision", precision, "--quiet"]) == 0
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["precision"] == precision and protocol["model_args"]["precision"] == precision


@needs_bf16
def test_bf16_masks_mostly_agree_with_fp32_on_a_synthetic_video():
    from vlprop import Propagator

    vid = synthetic_video(num_frames=8, height=96, width=128, seed=4, speed=2.0)
    masks = {}
    for precision in ("fp32", "bf16"):
        prop = Propagator(preset="crw", backbone="resnet18", layer="res3", weights="random", seed=0,
                          precision=precision)
        assert prop.engine_dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert prop.extractor.dtype == prop.engine_dtype
        masks[precision] = [m for _, m in prop.propagate(vid.frames, masks={0: vid.masks[0]})]
    assert len(masks["bf16"]) == 8
    agree = [float((a == b).mean()) for a, b in zip(masks["fp32"][1:], masks["bf16"][1:])]
    assert min(agree) > 0.97, agree
    moving = [float(((a > 0) != (vid.masks[0] > 0)).mean()) for a in masks["bf16"][1:]]
    assert max(moving) > 0.001  # the masks moved: the agreement is not two copies of frame 0


# ----------------------------------------------------------------------------- devices
class _Spy:
    """Records the feature tensors the extractor hands out and those reaching the engines, and every ``.cpu()``
    copy of a tensor with the features' channel count."""

    def __init__(self, monkeypatch, extractor, engine_cls):
        self.out: list[torch.Tensor] = []
        self.engine_in: list[torch.Tensor] = []
        self.cpu_copies: list[tuple] = []
        D = extractor.out_dim
        orig_extract = extractor.extract_batch

        def extract(frames):
            y = orig_extract(frames)
            self.out.append(y)
            return y

        monkeypatch.setattr(extractor, "extract_batch", extract)
        for name in ("reset", "predict", "push", "step", "add_reference"):
            orig = getattr(engine_cls, name)

            def wrapped(eng, features, *a, _orig=orig, **k):
                self.engine_in.append(features)
                return _orig(eng, features, *a, **k)

            monkeypatch.setattr(engine_cls, name, wrapped)
        orig_cpu = torch.Tensor.cpu

        def cpu(t, *a, **k):
            if t.dim() >= 3 and D in t.shape[-4:-2]:
                self.cpu_copies.append(tuple(t.shape))
            return orig_cpu(t, *a, **k)

        monkeypatch.setattr(torch.Tensor, "cpu", cpu)

    def check(self, device):
        assert self.engine_in, "the engine was never called"
        ptrs = {y.untyped_storage().data_ptr() for y in self.out}
        for f in self.engine_in:
            assert f.device == device
            assert f.untyped_storage().data_ptr() in ptrs, "the engine got a copy, not the extractor's features"
        assert self.cpu_copies == [], f"features were copied to the CPU: {self.cpu_copies}"


def test_session_passes_the_extractors_own_feature_tensors_to_the_engine(monkeypatch):
    from vlprop import Propagator
    from vlprop.propagation.engine import PropagationEngine

    vid = synthetic_video(num_frames=5, height=64, width=80, seed=1, appear_at={2: 3})
    prop = Propagator(preset="crw", backbone="resnet18", layer="res3", weights="random", batch_size=2)
    spy = _Spy(monkeypatch, prop.extractor, PropagationEngine)
    results = list(prop.run(vid.frames, masks={0: vid.masks[0], 3: vid.masks[3]}))
    assert len(results) == 5 and results[-1].probs.device.type == "cpu"
    assert results[-1].probs.dtype == torch.float32
    spy.check(prop.extractor.device)


def test_annotation_session_keeps_features_where_the_extractor_made_them(monkeypatch):
    from vlprop import AnnotationSession, Propagator
    from vlprop.propagation.engine import PropagationEngine

    vid = synthetic_video(num_frames=4, height=64, width=80, seed=1)
    prop = Propagator(preset="crw", backbone="resnet18", layer="res3", weights="random")
    spy = _Spy(monkeypatch, prop.extractor, PropagationEngine)
    sess = AnnotationSession(list(vid.frames), propagator=prop)
    sess.add_mask(0, vid.masks[0])
    results = list(sess.propagate("forward"))
    assert len(results) == 4
    spy.check(prop.extractor.device)


def test_keypoint_propagator_passes_device_features_and_decodes_on_the_cpu(monkeypatch):
    from vlprop import KeypointPropagator
    from vlprop.propagation.engine import PropagationEngine

    vid = synthetic_video(num_frames=4, height=64, width=80, seed=1)
    kp = KeypointPropagator("waldmann-jhmdb", backbone="resnet18", layer="res3", weights="random")
    spy = _Spy(monkeypatch, kp.extractor, PropagationEngine)
    xy0 = np.array([[30.0, 30.0], [50.0, 20.0]])
    out = list(kp.run(vid.frames, (xy0, np.array([True, True]))))
    assert len(out) == 4 and np.isfinite(out[-1].xy).all()
    spy.check(kp.extractor.device)


def test_bf16_engine_dtype_follows_the_measured_rule(monkeypatch):
    from vlprop.propagation.engine import BF16_ENGINE_MIN_CHANNELS_CPU, engine_dtype_for

    small, big = BF16_ENGINE_MIN_CHANNELS_CPU - 1, BF16_ENGINE_MIN_CHANNELS_CPU
    assert engine_dtype_for("fp32", big, "cpu") == torch.float32
    assert engine_dtype_for("bf16", small, "cpu") == torch.float32   # float32 joint top-k measured faster
    assert engine_dtype_for("bf16", big, "cpu") == torch.bfloat16
    assert engine_dtype_for("bf16", small, "meta") == torch.bfloat16  # not the CPU: bf16 whenever asked for


@needs_bf16
def test_bf16_session_uses_float32_engines_for_narrow_features(monkeypatch):
    import vlprop.propagation.engine as engine_mod
    from vlprop import Propagator

    monkeypatch.setattr(engine_mod, "BF16_ENGINE_MIN_CHANNELS_CPU", 200)  # the mechanism, whatever the measured value
    vid = synthetic_video(num_frames=4, height=64, width=96, seed=2, speed=1.0)
    made = []
    for layer, want in (("res2", torch.float32), ("res3", torch.bfloat16)):  # 128 and 256 channels
        prop = Propagator(preset="crw", backbone="resnet18", layer=layer, weights="random", precision="bf16")
        orig = prop.new_engine

        def spy(*a, _orig=orig, **k):
            eng = _orig(*a, **k)
            made.append(eng.dtype)
            return eng

        prop.new_engine = spy
        list(prop.propagate(vid.frames, masks={0: vid.masks[0]}))
        assert made[-1] == want, (layer, made)
