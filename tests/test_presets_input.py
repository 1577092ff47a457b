"""Preset input settings: fixed square resize, colour space combined with the weights' own preprocessing,
and the warning when a preset runs with weights other than those its reference needs."""
from __future__ import annotations

import logging

import pytest
import torch

from vlprop.backbones import FeatureExtractor, create_backbone
from vlprop.backbones.colorspace import COLORSPACES
from vlprop.backbones.preprocessing import LAB, Preprocessing
from vlprop.config import COLORSPACES as CONFIG_COLORSPACES
from vlprop.config import FeatureConfig, get_preset, parse_size
from vlprop.errors import InputError
from vlprop.model import ModelSpec, check_expected_weights, extractor_for_network, preprocessing_for


class Net(torch.nn.Module):
    """Stride-4 stand-in: 4x4 average pool of the (normalised) input."""

    stride = 4
    out_dim = 3

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4, ceil_mode=True)


def test_colourspace_names_agree_between_config_and_backbones():
    assert tuple(CONFIG_COLORSPACES) == tuple(COLORSPACES)


def test_fixed_size_resizes_to_the_square_whatever_the_frame():
    ext = FeatureExtractor(Net(), size=(320, 320))
    assert ext.resized_size(240, 320) == (320, 320)
    assert ext.resized_size(480, 854) == (320, 320)
    geo = ext.geometry(240, 320)
    assert (geo.grid_height, geo.grid_width) == (80, 80)
    f = ext(torch.rand(3, 240, 320))
    assert tuple(f.shape) == (3, 80, 80)
    with pytest.raises(InputError, match="not several"):
        FeatureExtractor(Net(), size=(320, 320), short_side=200)
    with pytest.raises(InputError, match="size"):
        FeatureExtractor(Net(), size=(320, 0))


def test_size_parses_from_text_and_replaces_the_presets_other_resize_rule():
    assert parse_size("320x240") == (320, 240) and parse_size(560) == (560, 560) and parse_size("240") == (240, 240)
    with pytest.raises(InputError, match="HxW"):
        parse_size("big")
    assert get_preset("crw-jhmdb").features.size == (320, 320)
    p = get_preset("crw-jhmdb", short_side=240)
    assert p.features.size is None and p.features.short_side == 240
    p = get_preset("waldmann-jhmdb", size="240x240")
    assert p.features.size == (240, 240) and p.features.input_scale == 1.0
    with pytest.raises(InputError, match="excludes"):
        FeatureConfig(size=(2, 2), short_side=3)
    with pytest.raises(InputError, match="colorspace"):
        get_preset("crw", colorspace="hsv")


def test_presets_colour_space_applies_when_the_weights_fix_none():
    net = Net()
    assert preprocessing_for(net, get_preset("stt")) is LAB
    uvc = preprocessing_for(net, get_preset("uvc-perframe"))
    assert uvc.colorspace == "lab_l" and uvc.mean == Preprocessing().mean
    assert preprocessing_for(net, get_preset("crw")) is None  # the extractor's default (ImageNet sRGB)
    ext = extractor_for_network(net, get_preset("crw-jhmdb"))
    assert ext.size == (320, 320) and ext.colorspace == "rgb"
    # the fed input really is normalised Lab: a mid-grey frame has L = 53.6 -> (L - 50) / 50
    x = extractor_for_network(net, get_preset("stt")).preprocess(torch.full((1, 3, 8, 8), 0.5))
    assert abs(float(x[0, 0].mean()) - (53.389 - 50) / 50) < 5e-3 and float(x[0, 1:].abs().max()) < 1e-3


def test_weights_preprocessing_wins_over_the_preset_with_a_warning(caplog):
    net = Net()
    net.preprocessing = Preprocessing(colorspace="rgb", name="recorded")
    with caplog.at_level(logging.WARNING, logger="vlprop.model"):
        pre = preprocessing_for(net, get_preset("stt"))
    assert pre is net.preprocessing
    assert "lab" in caplog.text and "weights' preprocessing" in caplog.text


def test_preset_warns_when_run_with_weights_its_reference_did_not_use(caplog):
    with caplog.at_level(logging.WARNING, logger="vlprop.model"):
        assert not check_expected_weights(get_preset("uvc-perframe"), {"random"}, "random")
    assert "uvc" in caplog.text and "random" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlprop.model"):
        assert check_expected_weights(get_preset("uvc-perframe"), {"uvc"}, "uvc.pth")
        assert check_expected_weights(get_preset("dul"), {"random"}, "random")  # no expectation
    assert caplog.text == ""
    # through the model layer: the shipped default model under a UVC preset is reported, not silently used
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlprop.model"):
        ModelSpec(preset="uvc-perframe", weights="random").resolve().network()
    assert "uvc-perframe" in caplog.text


def test_loaded_checkpoints_record_their_layout(tmp_path):
    from vlprop.backbones import save_checkpoint
    from vlprop.model import weights_kind

    net = create_backbone("resnet18", layer="res2", weights="random")
    path = tmp_path / "w.pt"
    save_checkpoint(path, net)
    loaded = create_backbone("resnet18", layer="res2", weights=str(path))
    assert weights_kind(loaded, str(path)) == {"vlprop"}
    assert weights_kind(net, "random") == {"random"}


def test_session_and_cli_set_size_and_colour_space():
    from vlprop.cli.options import model_spec_from_args
    from vlprop.session import Propagator

    prop = Propagator(preset="crw", weights="random", size=(48, 64), colorspace="lab")
    assert prop.extractor.size == (48, 64) and prop.extractor.colorspace == "lab"
    assert prop.extractor.resized_size(480, 854) == (48, 64)
    import argparse

    args = argparse.Namespace(preset="crw", size="320x320", colorspace="lab_l", set=None)
    p = model_spec_from_args(args).resolve().preset
    assert p.features.size == (320, 320) and p.features.colorspace == "lab_l"
