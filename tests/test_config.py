"""Each preset's settings are those of the reference it names (values from the spec tables)."""
from __future__ import annotations

import math

import pytest

from vlprop.config import PRESETS, get_preset
from vlprop.errors import InputError

# (preset, expected propagation settings) from ../shared/specs/reference-implementations.md §1.2, §2.1, §3.1, §5
EXPECTED = {
    "crw": dict(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05, context=20, long_term=1,
                window="disk", radius=12, window_long_term=False, feature_norm=True, norm_stage="topk"),
    "dul": dict(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05, context=20, long_term=1,
                window="disk", radius=12, window_long_term=False, feature_norm=True),
    "dino": dict(aggregation="overall", topk=5, normalizer="exp", temperature=0.1, context=7, window="square",
                 radius=12, window_long_term=True, feature_norm=True),
    # facebookresearch/dinov3 notebooks/segmentation_tracking.ipynb (circle |d| <= 12 = strict disk r in (12, 12.042))
    "dinov2": dict(aggregation="overall", topk=5, normalizer="softmax", temperature=0.2, norm_stage="topk", context=7,
                   long_term=1, window="disk", radius=12.04, window_long_term=True, feature_norm=True),
    "waldmann-davis": dict(aggregation="overall", topk=5, normalizer="exp", temperature=0.1, context=20,
                           window="square", radius=12, window_long_term=True),
    "mckee-imagenet": dict(aggregation="overall", topk=5, normalizer="softmax", temperature=1.0, context=20,
                           window="disk", radius=12, window_long_term=False, feature_norm=True),
    "uvc-perframe": dict(aggregation="per-frame", topk=5, temperature=1.0, context=7,
                         norm_stage="before-restriction", window="none", feature_norm=False,
                         label_norm="channel-minmax"),
    "waldmann-jhmdb": dict(aggregation="overall", topk=20, normalizer="softmax", context=20, window="square",
                           radius=12, window_long_term=True),
    "crw-jhmdb": dict(aggregation="overall", topk=10, temperature=0.05, context=7, window="disk", radius=12,
                      window_long_term=False),
    # WALD _reported_configs/DAVIS2016val-zvos (spec §1.2): k=20, dino normaliser, r=12, num_context 1
    "waldmann-zvos": dict(aggregation="overall", topk=20, normalizer="exp", temperature=0.1, context=1,
                          long_term=1, window="square", radius=12, window_long_term=True, label_norm="none"),
    # training-methods.md §2.8 (STT configs/test: neighbor_range 24 at stride 8, topk 10, T 0.07, 20 + first)
    "stt": dict(aggregation="overall", topk=10, normalizer="softmax", temperature=0.07, context=20, long_term=1,
                window="square", radius=12, window_long_term=True, feature_norm=True, label_norm="none",
                requantize=False),
    # reference-implementations.md §2.1 (CRW VIP command --videoLen 4 --cropSize 560)
    "crw-vip": dict(aggregation="overall", topk=10, normalizer="softmax", temperature=0.05, context=4,
                    window="disk", radius=12, window_long_term=False),
    # training-methods.md §3.2 (UVC test_with_track) and McKee Tab. 4 (per-frame, n = 7, k = 5)
    "uvc-track": dict(aggregation="per-frame", topk=5, normalizer="softmax", temperature=1.0, context=7,
                      norm_stage="before-restriction", window="none", feature_norm=False,
                      label_norm="channel-minmax", localization="track", track_init_margin=0.6, track_margin=1.0,
                      track_ema=0.1, track_bandwidth=5.0, track_sigma=4.0, track_mad=2.0),
    # training-methods.md §4.4 (MAST benchmark/colorizer) and §1.5/§1.7 (LIIR evaluate_davis, App. A)
    "mast": dict(aggregation="overall", topk=0, normalizer="softmax", temperature=1.0, norm_stage="topk",
                 references="mast", localization="roi", window="square", radius=12, window_long_term=True,
                 feature_norm=False, requantize=True, roi_after=15, roi_radius=12, roi_max_dilation=4,
                 compactness_k=0, compat_mast_roi=False),
    "liir": dict(aggregation="overall", topk=0, normalizer="softmax", temperature=1.0, references="mast",
                 localization="window", window="square", radius=14, window_long_term=True, feature_norm=False,
                 requantize=True, compactness_k=2, compactness_threshold=0.1, compactness_fwhm=1.0,
                 foreground_boost=1.05),
}

# (preset, feature/input settings, expected weights) from the same tables and training-methods.md §1.1, §2.8, §3.1
EXPECTED_INPUT = {
    "uvc-perframe": (dict(layer="res4", stride=8, colorspace="lab_l", size=None), ("uvc",)),
    "waldmann-jhmdb": (dict(layer="res4", stride=8, colorspace="lab_l", input_scale=2.0), ("uvc",)),
    "crw-jhmdb": (dict(layer="res3", stride=8, size=(320, 320), short_side=None), ("crw",)),
    "mckee-imagenet": (dict(layer="res3", stride=8, input_scale=2.0), ("imagenet",)),
    "dino": (dict(), ("imagenet",)),
    "stt": (dict(layer="res3", stride=8, colorspace="lab", size=None), ("stt",)),
    "crw-vip": (dict(layer="res3", stride=8, size=(560, 560), short_side=None), ("crw",)),
    "uvc-track": (dict(layer="res4", stride=8, colorspace="lab_l", size=None), ("uvc",)),
    "mast": (dict(layer="head", stride=4, colorspace="lab", backbone="mast_resnet18"), ("mast",)),
    "liir": (dict(layer="head", stride=4, colorspace="lab", backbone="mast_resnet18"), ("liir",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_INPUT))
def test_preset_input_settings_and_expected_weights_match_the_reference(name):
    feats, weights = EXPECTED_INPUT[name]
    p = PRESETS[name]
    for key, value in feats.items():
        assert getattr(p.features, key) == value, (name, key)
    assert p.expected_weights == weights


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_settings_match_the_reference(name):
    cfg = PRESETS[name].propagation
    for key, value in EXPECTED[name].items():
        assert getattr(cfg, key) == value, (name, key)


def test_feature_and_label_settings_of_the_references():
    assert PRESETS["crw"].features.layer == "res3" and PRESETS["dul"].features.layer == "res4"
    assert PRESETS["crw"].features.backbone is None  # ResNet presets run on the package default
    dino, dinov2 = PRESETS["dino"].features, PRESETS["dinov2"].features
    assert (dino.backbone, dino.layer, dino.stride) == ("dino_vits16", "last", 16)
    assert (dinov2.backbone, dinov2.layer, dinov2.stride) == ("dinov2_vits14", "last", 14)
    assert PRESETS["mckee-imagenet"].features.input_scale == 2.0
    assert PRESETS["dino"].labels.output_minmax and PRESETS["waldmann-davis"].labels.output_minmax
    assert math.isclose(PRESETS["waldmann-jhmdb"].propagation.temperature, 1 / math.sqrt(512))  # UVC 22.63*cos
    kp = PRESETS["waldmann-jhmdb"].keypoints
    assert (kp.sigma, kp.subpixel, kp.decoder, kp.decode_k) == (0.5, True, "topk", 5)
    assert PRESETS["waldmann-jhmdb"].features.input_scale == 2.0
    kp = PRESETS["crw-jhmdb"].keypoints
    assert (kp.subpixel, kp.decode_k) == (False, 3)


def test_every_preset_is_tested():
    assert set(PRESETS) == set(EXPECTED)


def test_compat_switches_on_only_the_documented_quirks():
    assert not PRESETS["crw"].propagation.compat_pad_first
    assert get_preset("crw", compat=True).propagation.compat_pad_first
    assert get_preset("waldmann-davis", compat=True).propagation.compat_mask_before_exp
    assert get_preset("waldmann-jhmdb", compat=True).propagation.compat_softmax_zeros
    assert get_preset("dino", compat=True) == PRESETS["dino"]  # no quirks needed for DINO's protocol
    assert get_preset("mast", compat=True).propagation.compat_mast_roi


def test_overrides_reach_the_right_config_and_bad_values_are_rejected():
    p = get_preset("crw", topk=5, layer="res4", output_minmax=True)
    assert p.propagation.topk == 5 and p.features.layer == "res4" and p.labels.output_minmax
    with pytest.raises(InputError, match="window"):
        get_preset("crw", window="circle")
    with pytest.raises(InputError, match="temperature"):
        get_preset("crw", temperature=0)
