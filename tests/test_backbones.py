"""Tests of vlprop.backbones: shapes/strides, seeded init, checkpoint layouts, errors, extractor.

Checkpoint tests build an independent model in each reference layout (written here from the
reference code's module structure, not with vlprop's key maps), save it in the reference file
layout, load it through ``create_backbone`` and require bit-identical features.
"""
from __future__ import annotations

import argparse
import fractions
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from vlprop.backbones import (
    FeatureExtractor,
    create_backbone,
    list_backbones,
    load_weights,
    register_backbone,
    rgb_to_lab,
    save_checkpoint,
)
from vlprop.errors import CheckpointError, InputError
from vlprop.geometry import GridGeometry

ODD = (21, 29)  # odd input size: every stride (4 ... 32) must round up

# (arch, layer) -> channels
OUT_DIMS = {
    ("resnet18", "res2"): 128, ("resnet18", "res3"): 256, ("resnet18", "res4"): 512, ("resnet18", "head"): 128,
    ("resnet50", "res2"): 512, ("resnet50", "res3"): 1024, ("resnet50", "res4"): 2048, ("resnet50", "head"): 128,
    ("mast_resnet18", "res2"): 128, ("mast_resnet18", "res3"): 256, ("mast_resnet18", "res4"): 256,
    ("mast_resnet18", "head"): 64,
}


# ----------------------------------------------------------------------------- helpers
def _randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BN statistic distinct random values (so swapped keys show up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.2)
                    + (1.0 if name.endswith("weight") and p.dim() == 1 else 0.0))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _tv_trunk(arch: str, stride8: bool = True, reflect: bool = False) -> nn.Module:
    """A torchvision ResNet with the CRW/DUL/UVC surgery: every conv of layer3/4 at stride 1."""
    net = getattr(torchvision.models, arch)(weights=None)
    if stride8:
        for layer in (net.layer3, net.layer4):
            for m in layer.modules():
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
    if reflect:
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and sum(m.padding) > 0:
                m.padding_mode = "reflect"
    return net


def _tv_forward(net: nn.Module, x: torch.Tensor, upto: str) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer2(net.layer1(x))
    if upto == "res2":
        return x
    x = net.layer3(x)
    return x if upto == "res3" else net.layer4(x)


def _image(seed: int = 0, size=ODD) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


class _MastBlock(nn.Module):
    """MAST ``submodule.ResidualBlock`` structure: ``left`` conv-bn-relu-conv-bn, ``shortcut``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.left(x) + self.shortcut(x))


class _MastModel(nn.Module):
    """MAST ``models/mast.py``: ``feature_extraction`` (ResNet18, no max-pool) + ``post_convolution``."""

    def __init__(self) -> None:
        super().__init__()
        fe = nn.Module()
        fe.conv1 = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        widths, strides, cin = (64, 128, 256, 256), (1, 2, 1, 1), 64
        for i, (w, s) in enumerate(zip(widths, strides), start=1):
            setattr(fe, f"layer{i}", nn.Sequential(_MastBlock(cin, w, s), _MastBlock(w, w, 1)))
            cin = w
        self.feature_extraction = fe
        self.post_convolution = nn.Conv2d(256, 64, 3, 1, 1)

    def forward(self, x):
        fe = self.feature_extraction
        x = fe.layer4(fe.layer3(fe.layer2(fe.layer1(fe.conv1(x)))))
        return self.post_convolution(x)


def _dul_mlp(n_in: int = 512, n_out: int = 128) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("conv1", nn.Conv2d(n_in, n_in, 1, 1)), ("bn1", nn.BatchNorm2d(n_in)),
                                      ("relu", nn.ReLU(True)), ("conv2", nn.Conv2d(n_in, n_out, 1, 1))]))


# ----------------------------------------------------------------------------- shapes
def _valid_configs():
    for arch in ("resnet18", "mast_resnet18"):
        for layer in ("res2", "res3", "res4", "head"):
            max_stride = {"res2": 8, "res3": 16}.get(layer, 16 if arch == "mast_resnet18" else 32)
            for stride in (4, 8, 16, 32):
                if stride <= max_stride:
                    yield arch, layer, stride
    # ResNet-50 shares the surgery code; cover each layer and the Bottleneck stride paths once
    yield from (("resnet50", "res2", 4), ("resnet50", "res3", 16), ("resnet50", "res4", 8),
                ("resnet50", "head", 32))


@pytest.mark.parametrize("arch,layer,stride", list(_valid_configs()))
def test_output_is_ceil_of_input_over_stride_for_odd_sizes(arch, layer, stride):
    net = create_backbone(arch, stride=stride, layer=layer)
    with torch.inference_mode():
        y = net(_image())
    expected = (math.ceil(ODD[0] / stride), math.ceil(ODD[1] / stride))
    assert tuple(y.shape) == (1, OUT_DIMS[(arch, layer)], *expected)
    assert net.stride == stride and net.out_dim == OUT_DIMS[(arch, layer)] and net.layer == layer
    assert net.grid_size(*ODD) == expected
    assert not net.training


def test_davis_frame_480x854_gives_60x107_at_stride_8():
    net = create_backbone("resnet18", stride=8, layer="res3", padding_mode="reflect")
    with torch.inference_mode():
        y = net(torch.zeros(1, 3, 480, 854))
    assert tuple(y.shape) == (1, 256, 60, 107)


def test_stride_surgery_matches_crw_all_convs_stride1():
    ours = create_backbone("resnet50", stride=8, layer="res4")
    ref = _tv_trunk("resnet50")
    strides = {n: m.stride for n, m in ref.named_modules() if isinstance(m, nn.Conv2d)}
    assert {n: m.stride for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)} == strides


def test_stride_4_removes_maxpool_and_layers_after_the_chosen_one():
    net = create_backbone("resnet18", stride=4, layer="res3")
    assert net.maxpool is None
    assert not any(k.startswith(("layer4.", "fc.", "head.")) for k in net.state_dict())
    assert create_backbone("resnet18", stride=8, layer="res3").maxpool is not None


@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(stride=16, layer="res2"), dict(layer="res5"),
                                    dict(padding_mode="circular"), dict(seed=1.5)])
def test_invalid_configuration_raises_input_error(kwargs):
    with pytest.raises(InputError):
        create_backbone("resnet18", **kwargs)


def test_forward_rejects_non_rgb_batch():
    net = create_backbone("resnet18")
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        net(torch.zeros(1, 1, 32, 32))


def test_forward_layers_returns_every_kept_stage():
    net = create_backbone("resnet18", layer="head", stride=8)
    outs = net.forward_layers(_image())
    assert list(outs) == ["res2", "res3", "res4", "head"]
    assert torch.equal(outs["head"], net(_image()))


# ----------------------------------------------------------------------------- registry
def test_unknown_backbone_lists_known_names():
    with pytest.raises(InputError, match="resnet18") as info:
        create_backbone("resnet19")
    assert "resnet50" in str(info.value) and "mast_resnet18" in str(info.value)


def test_registered_factory_is_listed_and_created(monkeypatch):
    from vlprop.backbones import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    @register_backbone("test_tiny_net")
    def _tiny(width: int = 4):
        net = nn.Conv2d(3, width, 1)
        net.stride, net.out_dim = 1, width
        return net

    assert "test_tiny_net" in list_backbones("test_*")
    assert create_backbone("test_tiny_net", width=5).out_dim == 5
    with pytest.raises(InputError, match="test_tiny_net"):
        create_backbone("test_tiny_net", depth=3)
    assert set(list_backbones("resnet*")) == {"resnet18", "resnet50"}


# ----------------------------------------------------------------------------- seeded init
def test_seeded_random_init_is_bit_identical_and_independent_of_global_rng():
    torch.manual_seed(123)
    a = create_backbone("resnet18", layer="head", seed=7)
    torch.manual_seed(456)
    before = torch.get_rng_state()
    b = create_backbone("resnet18", layer="head", seed=7)
    assert torch.equal(torch.get_rng_state(), before), "building a backbone must not advance the global RNG"
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_different_seeds_give_different_weights():
    a = create_backbone("resnet18", seed=0).state_dict()
    b = create_backbone("resnet18", seed=1).state_dict()
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])
    assert not torch.equal(a["layer3.1.conv2.weight"], b["layer3.1.conv2.weight"])


# ----------------------------------------------------------------------------- reference layouts
def test_torchvision_state_dict_loads_bit_identically(tmp_path):
    ref = _randomise_(_tv_trunk("resnet18"), 1)
    path = tmp_path / "tv.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, dropped by the truncated trunk
    net = create_backbone("resnet18", stride=8, layer="res3", weights=path)
    x = _image(1)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(ref, x, "res3"))
    assert load_weights(create_backbone("resnet18", stride=8, layer="res4"), path) == "torchvision"


def test_crw_checkpoint_loads_with_reflect_padding(tmp_path):
    class CRW(nn.Module):  # videowalk: encoder = From3D(resnet) -> "encoder.model", walk head "selfsim_fc"
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.model = _tv_trunk("resnet18", reflect=True)
            self.encoder.model.fc = None
            self.selfsim_fc = nn.Sequential(nn.Linear(512, 128))

    ref = _randomise_(CRW(), 2)
    path = tmp_path / "crw_checkpoint.pth"
    torch.save({"model": ref.state_dict(), "optimizer": {}, "epoch": 3,
                "args": argparse.Namespace(model_type="scratch", remove_layers=[])}, path)
    net = create_backbone("resnet18", layer="res3", weights=path)
    assert net.padding_mode == "reflect"  # CRW "scratch" models are reflect-padded
    x = _image(2)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(ref.encoder.model, x, "res3"))


def test_crw_conv_sequential_key_variant_is_renamed(tmp_path):
    ref = _randomise_(_tv_trunk("resnet18", reflect=True), 3)
    state = {}
    for k, v in ref.state_dict().items():
        k = k.replace("conv1.weight", "conv1.1.weight").replace("conv2.weight", "conv2.1.weight")
        state["encoder.model." + k] = v
    path = tmp_path / "crw_seq.pth"
    torch.save({"model": state}, path)
    net = create_backbone("resnet18", layer="res4", weights=path, weights_format="crw")
    x = _image(3)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(ref, x, "res4"))


def test_dul_snapshot_loads_backbone_and_key_head(tmp_path):
    class Net(nn.Module):  # dense-ulearn-vos: Framework.fast_net = Net(backbone, emb_q=MLP)
        def __init__(self):
            super().__init__()
            self.backbone = _tv_trunk("resnet18")
            self.backbone.fc = self.backbone.avgpool = None
            self.emb_q = _dul_mlp()

    framework = nn.Module()
    framework.fast_net = Net()
    _randomise_(framework, 4)
    path = tmp_path / "ytvos_e060_res4.pth"
    state = {"module." + k: v for k, v in framework.state_dict().items()}  # DataParallel prefix
    torch.save({"model": state, "opt": {}, "score": np.float64(0.693), "epoch": 60}, path)
    x = _image(4)
    res4 = create_backbone("resnet18", layer="res4", stride=8, weights=path)
    head = create_backbone("resnet18", layer="head", stride=8, weights=path)
    with torch.inference_mode():
        ref_res4 = _tv_forward(framework.fast_net.backbone, x, "res4")
        assert torch.equal(res4(x), ref_res4)
        assert torch.equal(head(x), framework.fast_net.emb_q(ref_res4))
    assert head.out_dim == 128
    # a bare Net saved without the Framework wrapper
    bare = tmp_path / "net_only.pth"
    torch.save({"model": framework.fast_net.state_dict()}, bare)
    with torch.inference_mode():
        assert torch.equal(create_backbone("resnet18", layer="head", weights=bare)(x), head(x))


def test_mast_checkpoint_loads_into_mast_resnet18(tmp_path):
    ref = _randomise_(_MastModel(), 5)
    path = tmp_path / "mast.pt"
    torch.save({"epoch": 19, "state_dict": ref.state_dict(), "optimizer": {}}, path)
    net = create_backbone("mast_resnet18", weights=path)  # defaults: stride 4, layer head (64-d)
    assert (net.stride, net.layer, net.out_dim) == (4, "head", 64)
    x = _image(5, size=(33, 42))
    with torch.inference_mode():
        assert torch.equal(net(x), ref(x))
        # the 256-d trunk output and the plain ResNet-18 layout up to res3 load too
        fe = ref.feature_extraction
        trunk = fe.layer3(fe.layer2(fe.layer1(fe.conv1(x))))
        r18 = create_backbone("resnet18", stride=4, layer="res3", weights=path)
        assert torch.equal(r18(x), trunk)


def test_uvc_checkpoint_loads_gray_encoder(tmp_path):
    model = nn.Module()  # UVC libs/model.py: gray_encoder + colour autoencoder + normalize
    model.gray_encoder = _tv_trunk("resnet18")
    model.gray_encoder.fc = model.gray_encoder.avgpool = None
    model.rgb_encoder = nn.Sequential(nn.Conv2d(3, 8, 3))
    model.decoder = nn.Sequential(nn.Conv2d(8, 3, 3))
    model.normalize = nn.Module()
    model.normalize.mean = nn.Parameter(torch.tensor([0.485, 0.456, 0.406]), requires_grad=False)
    model.normalize.std = nn.Parameter(torch.tensor([0.229, 0.224, 0.225]), requires_grad=False)
    _randomise_(model, 6)
    path = tmp_path / "checkpoint_latest.pth.tar"
    torch.save({"epoch": 30, "best_loss": 0.12,
                "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    net = create_backbone("resnet18", layer="res4", stride=8, weights=path)
    x = _image(6)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(model.gray_encoder, x, "res4"))


def test_moco_checkpoint_loads_query_encoder(tmp_path):
    # moco/builder.py with mlp=True; the released models are ResNet-50, the layout does not depend
    # on the depth, so a ResNet-18 keeps the test fast.
    moco = nn.Module()
    moco.encoder_q = _tv_trunk("resnet18", stride8=False)
    moco.encoder_q.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    moco.encoder_k = _tv_trunk("resnet18", stride8=False)
    moco.encoder_k.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    moco.register_buffer("queue", torch.randn(128, 16))
    moco.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    _randomise_(moco, 7)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "optimizer": {},
                "state_dict": {"module." + k: v for k, v in moco.state_dict().items()}}, path)
    net = create_backbone("resnet18", layer="res3", stride=8, weights=path)
    ref = moco.encoder_q
    for m in ref.layer3.modules():  # the same weights at output stride 8
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
    x = _image(7)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(ref, x, "res3"))


def test_vlprop_checkpoint_records_layer_and_stride(tmp_path):
    src = create_backbone("resnet18", layer="head", stride=8, seed=11)
    _randomise_(src, 11)
    path = save_checkpoint(tmp_path / "trained.pt", src, layer="res4", extra={"method": "dul", "epoch": 3})
    x = _image(8)
    net = create_backbone("resnet18", weights=path)  # layer/stride come from the file
    assert (net.layer, net.stride) == ("res4", 8)
    head = create_backbone("resnet18", weights=path, layer="head")
    with torch.inference_mode():
        outs = src.forward_layers(x)
        assert torch.equal(net(x), outs["res4"])
        assert torch.equal(head(x), outs["head"])
    with pytest.raises(CheckpointError, match="resnet50"):
        create_backbone("resnet50", weights=path)


def test_vlprop_checkpoint_keeps_reflect_padding_and_stride4(tmp_path):
    src = _randomise_(create_backbone("resnet18", layer="res3", stride=4, padding_mode="reflect"), 12)
    path = save_checkpoint(tmp_path / "crw_like.pt", src)
    net = create_backbone("resnet18", weights=path)
    assert (net.layer, net.stride, net.padding_mode) == ("res3", 4, "reflect")
    x = _image(9)
    with torch.inference_mode():
        assert torch.equal(net(x), src(x))


def test_imagenet_weights_come_from_torchvision_only_when_asked(monkeypatch):
    import torchvision.models._api as tv_api

    ref = _randomise_(_tv_trunk("resnet18"), 13)
    urls = []

    def fake_download(url, *args, **kwargs):  # no network in tests: serve a synthetic state dict
        urls.append(url)
        return ref.state_dict()

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download)
    create_backbone("resnet18")
    assert urls == []
    net = create_backbone("resnet18", layer="res4", weights="imagenet")
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    x = _image(10)
    with torch.inference_mode():
        assert torch.equal(net(x), _tv_forward(ref, x, "res4"))
    with pytest.raises(InputError, match="ImageNet"):
        create_backbone("mast_resnet18", weights="imagenet")


# ----------------------------------------------------------------------------- checkpoint errors
@pytest.fixture
def tv_state():
    return _tv_trunk("resnet18").state_dict()


def test_missing_key_raises_checkpoint_error_naming_file_and_key(tmp_path, tv_state):
    del tv_state["layer1.0.bn1.running_mean"]
    path = tmp_path / "missing.pth"
    torch.save(tv_state, path)
    with pytest.raises(CheckpointError) as info:
        create_backbone("resnet18", layer="res3", weights=path)
    message = str(info.value)
    assert str(path) in message and "missing keys (1)" in message and "layer1.0.bn1.running_mean" in message


def test_extra_key_raises_checkpoint_error_naming_it(tmp_path, tv_state):
    tv_state["layer2.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(tv_state, path)
    with pytest.raises(CheckpointError) as info:
        create_backbone("resnet18", layer="res3", weights=path)
    assert str(path) in str(info.value) and "unexpected keys (1): layer2.0.extra.weight" in str(info.value)


def test_wrong_shape_raises_checkpoint_error_with_both_shapes(tmp_path, tv_state):
    tv_state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(tv_state, path)
    with pytest.raises(CheckpointError) as info:
        create_backbone("resnet18", layer="res3", weights=path)
    assert "conv1.weight: file (64, 3, 5, 5) vs model (64, 3, 7, 7)" in str(info.value)


def test_many_missing_keys_are_listed_with_a_count(tmp_path, tv_state):
    path = tmp_path / "res2_only.pth"
    torch.save({k: v for k, v in tv_state.items() if not k.startswith(("layer3", "layer4"))}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): layer3\.0\.conv1\.weight.*more"):
        create_backbone("resnet18", layer="res4", weights=path)
    create_backbone("resnet18", layer="res2", weights=path)  # enough for res2


def test_missing_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        create_backbone("resnet18", weights=path)
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_weights(create_backbone("resnet18"), str(path))


def test_corrupt_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        create_backbone("resnet18", weights=path)


def test_unrecognised_layout_asks_for_weights_format(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"something.else.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="weights_format"):
        create_backbone("resnet18", weights=path)


def test_pickled_objects_need_allow_pickle(tmp_path, tv_state):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": tv_state, "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        create_backbone("resnet18", weights=path)
    create_backbone("resnet18", weights=path, allow_pickle=True)


def test_legacy_checkpoint_without_num_batches_tracked_loads(tmp_path, tv_state):
    path = tmp_path / "legacy.pth"
    torch.save({k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}, path)
    create_backbone("resnet18", layer="res4", weights=path)


# ----------------------------------------------------------------------------- extractor
class _PassThrough(nn.Module):
    """Stride-1 'backbone' returning its input: exposes the extractor's preprocessing."""

    stride, out_dim = 1, 3

    def forward(self, x):
        return x.clone()


def _frames(n=5, h=45, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_extractor_normalises_with_imagenet_statistics():
    frame = _frames(1)[0]
    out = FeatureExtractor(_PassThrough())(frame)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - mean) / std
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("kwargs,resized", [(dict(short_side=32), (32, 50)), (dict(input_scale=2.0), (90, 140)),
                                            (dict(input_scale=0.5), (23, 35)), ({}, (45, 70))])
def test_extractor_geometry_matches_feature_shape(kwargs, resized):
    net = create_backbone("resnet18", stride=8, layer="res3")
    ext = FeatureExtractor(net, **kwargs)
    frame = _frames(1)[0]
    feats = ext(frame)
    geo = ext.geometry(45, 70)
    assert isinstance(geo, GridGeometry)
    assert (geo.resized_height, geo.resized_width) == resized
    assert (geo.grid_height, geo.grid_width) == tuple(feats.shape[-2:])
    assert geo.stride == 8 and (geo.height, geo.width) == (45, 70)


def test_short_side_applies_to_portrait_frames():
    ext = FeatureExtractor(_PassThrough(), short_side=30)
    assert ext.resized_size(90, 45) == (60, 30)
    assert tuple(ext(_frames(1, 90, 45)[0]).shape) == (3, 60, 30)


def test_upsampling_a_constant_frame_keeps_it_constant():
    frame = np.full((9, 13, 3), 200, dtype=np.uint8)
    out = FeatureExtractor(_PassThrough(), input_scale=2.0)(frame)
    assert tuple(out.shape) == (3, 18, 26)
    assert torch.allclose(out, out[:, :1, :1].expand_as(out), atol=1e-6)


def test_extractor_batches_match_one_by_one():
    net = create_backbone("resnet18", stride=8, layer="res3", seed=3)
    frames = _frames(5)
    ext = FeatureExtractor(net, batch_size=2)
    batched = ext(frames)
    single = torch.stack([ext(f) for f in frames])
    assert tuple(batched.shape) == (5, 256, 6, 9)
    # oneDNN may pick different conv kernels per batch size: equal up to float rounding
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    streamed = torch.stack(list(ext.iter_features(iter(frames))))
    torch.testing.assert_close(streamed, batched, rtol=0, atol=0)


def test_extractor_returns_ordinary_float32_cpu_tensors():
    net = create_backbone("resnet18", stride=8, layer="res2")
    feats = FeatureExtractor(net, autocast=True)(_frames(1, 21, 29)[0])  # bfloat16 autocast on CPU
    assert feats.dtype == torch.float32 and feats.device.type == "cpu" and tuple(feats.shape) == (128, 3, 4)
    feats /= 2  # not an inference-mode tensor: in-place updates by the caller are allowed
    assert not feats.is_inference()


def test_extractor_accepts_lists_float_arrays_and_chw_tensors():
    ext = FeatureExtractor(_PassThrough())
    frames = _frames(3)
    ref = ext(frames)
    assert torch.equal(ext(list(frames)), ref)
    assert torch.allclose(ext(frames.astype(np.float32) / 255), ref, atol=1e-6)
    chw = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(ext(chw), ref, atol=1e-6)
    assert torch.allclose(ext(chw[0]), ref[0], atol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((20, 20), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((20, 20, 4), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((20, 20, 3), np.int16), "dtype"),
    (np.full((20, 20, 3), 255.0, np.float32), r"\[0, 1\]"),
    (torch.zeros(20, 20, 3), r"\[3, H, W\]"),
    ("frame.png", "NumPy array"),
])
def test_extractor_rejects_bad_frames(bad, match):
    with pytest.raises(InputError, match=match):
        FeatureExtractor(_PassThrough())(bad)


def test_streaming_handles_frames_that_change_size():
    ext = FeatureExtractor(_PassThrough(), batch_size=4)
    frames = [_frames(1, 20, 20)[0], _frames(1, 20, 20, seed=1)[0], _frames(1, 12, 16)[0]]
    shapes = [tuple(f.shape) for f in ext.iter_features(frames)]
    assert shapes == [(3, 20, 20), (3, 20, 20), (3, 12, 16)]


def test_extractor_rejects_frames_of_different_sizes():
    frames = [_frames(1, 20, 20)[0], _frames(1, 20, 24)[0]]
    with pytest.raises(InputError, match="frame 1"):
        FeatureExtractor(_PassThrough())(frames)


@pytest.mark.parametrize("kwargs", [dict(short_side=0), dict(short_side=32, input_scale=2.0),
                                    dict(input_scale=-1.0), dict(batch_size=0), dict(colorspace="hsv")])
def test_extractor_rejects_bad_options(kwargs):
    with pytest.raises(InputError):
        FeatureExtractor(_PassThrough(), **kwargs)


def test_lab_colorspace_known_values():
    rgb = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]]).view(3, 1, 4)
    lab = rgb_to_lab(rgb)[:, 0].T  # red, black, white, green
    expected = torch.tensor([[53.2408, 80.0925, 67.2032], [0, 0, 0], [100, 0, 0], [87.7347, -86.1827, 83.1793]])
    torch.testing.assert_close(lab, expected, rtol=0, atol=0.05)
    ext = FeatureExtractor(_PassThrough(), colorspace="lab_l", mean=(0, 0, 0), std=(1, 1, 1))
    grey = ext(np.full((4, 4, 3), 255, np.uint8))
    torch.testing.assert_close(grey, torch.ones(3, 4, 4), rtol=0, atol=1e-5)


def test_lab_to_rgb_inverts_rgb_to_lab_on_both_branches_of_each_formula():
    from vlprop.backbones.colorspace import lab_to_rgb

    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 9, 11, generator=g)
    rgb[0, :, 0, :4] = torch.tensor([[0.0, 1.0, 0.01, 0.002]] * 3)  # black, white, dark (linear branches)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=1e-5)
    # the Lab values of the known-value test map back to red, black, white, green
    lab = torch.tensor([[53.2408, 80.0925, 67.2032], [0, 0, 0], [100, 0, 0], [87.7347, -86.1827, 83.1793]])
    expected = torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    torch.testing.assert_close(lab_to_rgb(lab.T.reshape(3, 1, 4))[:, 0].T, expected, rtol=0, atol=1e-3)


def test_preprocessing_rounds_input_to_the_patch_multiple():
    from vlprop.backbones import FeatureExtractor, Preprocessing, create_backbone

    net = create_backbone("resnet18", stride=8, layer="res3", weights="random")
    ext = FeatureExtractor(net, preprocessing=Preprocessing(size_multiple=16, name="vit"))
    # 480x854 -> 480x848 (854/16 = 53.4 -> 53), 100x10 -> 96x16 (at least one multiple)
    assert ext.resized_size(480, 854) == (480, 848)
    assert ext.resized_size(100, 10) == (96, 16)
    assert ext.preprocessing.name == "vit"
    ext1 = FeatureExtractor(net, short_side=240, preprocessing=Preprocessing(size_multiple=8))
    assert ext1.resized_size(480, 854) == (240, 424)  # 427 -> nearest multiple of 8 = 424
    assert FeatureExtractor(net).preprocessing.name == "imagenet"


def test_backbone_preprocessing_is_used_by_the_extractor():
    import torch
    from vlprop.backbones import FeatureExtractor, Preprocessing, create_backbone

    net = create_backbone("resnet18", stride=8, layer="res3", weights="random")
    net.preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="half")
    ext = FeatureExtractor(net)
    x = ext.preprocess(torch.full((1, 3, 8, 8), 0.75))
    assert torch.allclose(x, torch.full_like(x, 0.5))
