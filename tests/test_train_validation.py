"""Validation hooks: label-propagation J&F on held-out DAVIS-style sequences and the selection score."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_train_support import TinyBackbone
from vlprop.train.data import discover_videos
from vlprop.train.methods.dul import DUL, DULConfig
from vlprop.train.validation import (
    LabelPropagationValidator,
    ValidationContext,
    annotation_dir,
    make_validators,
    selection_score,
)


def _davis_layout(root: Path, gt_shift: int, n: int = 6, size: int = 96) -> Path:
    """A static textured frame with a 40x40 textured square; GT masks the square on frame 0 and a
    square shifted right by ``gt_shift`` pixels on later frames (0 = correct GT)."""
    rng = np.random.default_rng(0)
    frame = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((size, size)))
    frame = frame.copy()
    frame[28:68, 8:48] = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    seq_dir = root / "JPEGImages" / "480p" / "static"
    ann_dir = root / "Annotations" / "480p" / "static"
    seq_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t in range(n):
        Image.fromarray(frame).save(seq_dir / f"{t:05d}.jpg", quality=95)
        mask = np.zeros((size, size), np.uint8)
        dx = 0 if t == 0 else gt_shift
        mask[28:68, 8 + dx:48 + dx] = 255  # DAVIS-2016 style binary 0/255
        Image.fromarray(mask).save(ann_dir / f"{t:05d}.png")
    return root


def _score(root: Path) -> dict:
    entries = discover_videos(root).entries
    assert annotation_dir(entries[0]) == root / "Annotations" / "480p" / "static"
    (validator,) = make_validators(entries, {"val_frames": None})
    assert isinstance(validator, LabelPropagationValidator)
    torch.manual_seed(0)
    net = DUL(DULConfig(key_dim=16)).build(TinyBackbone()).eval()
    return validator(ValidationContext(step=1, net=net, device=torch.device("cpu"), holdout=entries, run_dir=root))


def test_label_propagation_jf_is_high_with_correct_gt_and_low_with_wrong_gt(tmp_path):
    good = _score(_davis_layout(tmp_path / "good", gt_shift=0))
    wrong = _score(_davis_layout(tmp_path / "wrong", gt_shift=44))  # GT moved off the (static) object
    assert set(good) == {"score", "jf_J", "jf_F"}
    assert good["score"] == pytest.approx((good["jf_J"] + good["jf_F"]) / 2)
    assert good["jf_J"] > 0.7 and good["score"] > 0.6
    assert wrong["jf_J"] < 0.2 and wrong["score"] < good["score"] - 0.4


def test_no_annotated_holdout_means_no_label_propagation_validator(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "0.png")
    assert make_validators(discover_videos(tmp_path).entries, {}) == []


def test_selection_score_prefers_reported_score_then_negative_loss():
    assert selection_score({"score": 0.7, "val_loss": 3.0}) == 0.7
    assert selection_score({"val_loss": 3.0}) == -3.0
    assert selection_score({"other": 1.0}) is None
