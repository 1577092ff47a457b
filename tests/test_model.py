"""The model layer: weight names, precedence of backbone/preset/layer, preprocessing carried by weights,
and the package's import layering."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vlprop.backbones import create_backbone, save_checkpoint
from vlprop.backbones.preprocessing import Preprocessing
from vlprop.backbones.registry import _REGISTRY, register_backbone
from vlprop.errors import CheckpointError, InputError
from vlprop.model import NAMED_MODELS, ModelSpec, resolve_run_weights, resolve_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "vlprop"


def test_default_weights_name_the_default_model_with_its_backbone_and_preset():
    nm = NAMED_MODELS["default"]
    r = ModelSpec().resolve()
    assert r.backbone == nm.backbone and r.preset.name == nm.preset and r.named is nm
    assert Path(resolve_weights("default")).name == nm.weights or resolve_weights("default") == nm.weights


def test_explicit_preset_and_backbone_win_and_a_named_model_rejects_another_backbone():
    r = ModelSpec(preset="crw", weights="random", backbone="resnet50").resolve()
    assert (r.preset.name, r.backbone, r.weights) == ("crw", "resnet50", "random")
    with pytest.raises(InputError, match="named model"):
        ModelSpec(backbone="resnet50").resolve()


def test_keypoint_tasks_keep_their_default_preset_with_the_default_model():
    r = ModelSpec().resolve(default_preset="waldmann-jhmdb", keypoints=True)
    assert r.preset.name == "waldmann-jhmdb" and r.preset.keypoints is not None


def test_a_presets_resnet_layer_is_not_forced_on_a_backbone_without_it():
    class Tiny(torch.nn.Module):
        stride = 4

        def __init__(self, layer="c2", stride=4):
            super().__init__()
            self.layer, self.stride, self.out_dim = layer, stride, 3

        def forward(self, x):
            return x[:, :, ::4, ::4]

    def tiny(*, layer=None, stride=None, weights="random", seed=0):
        return Tiny(layer or "c2", stride or 4)

    tiny.layers = ("c1", "c2")
    tiny.strides = (4,)
    register_backbone("_test_tiny")(tiny)
    try:
        r = ModelSpec(preset="crw", backbone="_test_tiny", weights="random").resolve()
        assert r.layer is None and r.stride is None  # crw's res3 / stride 8 do not apply
        assert r.network().layer == "c2"
        assert ModelSpec(preset="crw", backbone="_test_tiny", weights="random", layer="c1").resolve().layer == "c1"
        with pytest.raises(InputError, match="no feature layer 'res9'"):
            ModelSpec(preset="crw", backbone="_test_tiny", weights="random", layer="res9").resolve()
        with pytest.raises(InputError, match="output strides 4"):
            ModelSpec(preset="crw", backbone="_test_tiny", weights="random", stride=8).resolve()
    finally:
        _REGISTRY.pop("_test_tiny")


def test_run_folders_resolve_to_best_then_last(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"x")
    assert resolve_run_weights(tmp_path) == tmp_path / "last.pt"
    (tmp_path / "best.pt").write_bytes(b"x")
    assert resolve_weights(str(tmp_path)) == tmp_path / "best.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        resolve_run_weights(empty)


def test_a_checkpoint_records_its_preprocessing_and_loading_restores_it(tmp_path):
    net = create_backbone("resnet18", stride=8, layer="res3", weights="random")
    net.preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), name="half")
    path = save_checkpoint(tmp_path / "m.pt", net)
    loaded = create_backbone("resnet18", weights=str(path))
    assert loaded.preprocessing == net.preprocessing
    ext = ModelSpec(preset="crw", weights=str(path), backbone="resnet18").resolve().extractor()
    assert ext.preprocessing == net.preprocessing


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = path.relative_to(SRC.parent).with_suffix("").parts[: -node.level]
                base = ".".join(pkg + ((node.module,) if node.module else ()))
            out.add(base)
    return out


def test_only_the_cli_imports_argparse_and_the_library_never_imports_the_cli_or_trainer():
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        mods = _imports(path)
        in_cli = rel.startswith("cli/") or rel in ("__main__.py", "train/__main__.py")
        if "argparse" in mods and not in_cli and rel != "backbones/weights.py":  # weights: argparse.Namespace
            offenders.append(f"{rel} imports argparse")   # is an allowed global of CRW checkpoints, not a parser
        if not in_cli and any(m == "vlprop.cli" or m.startswith("vlprop.cli.") for m in mods):
            offenders.append(f"{rel} imports the CLI")
        if not in_cli and not rel.startswith("train/") and any(m.startswith("vlprop.train") for m in mods):
            offenders.append(f"{rel} imports the trainer")
    assert not offenders, offenders
