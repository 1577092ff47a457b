"""Tests of vlprop.backbones.vit: DINO / DINOv2 ViTs, their position-embedding resampling, last-block CLS
attention, the official checkpoint layouts, and the ViT presets.

Checkpoint tests build an independent reference ViT written here from the official code's module structure
(facebookresearch/dino vision_transformer.py, facebookresearch/dinov2 models/vision_transformer.py), with
tiny widths, save it in each released file layout, load it through vlprop and require the same tensors,
features and attention. No weights can be downloaded here, so every layout is synthetic.
"""
from __future__ import annotations

import argparse
import functools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones import FeatureExtractor, create_backbone, list_backbones, save_checkpoint
from vlprop.backbones.vit import VIT_SPECS, ViTBackbone, build_vit, interpolate_pos_embed
from vlprop.backbones.weights import open_checkpoint
from vlprop.config import PRESETS
from vlprop.errors import CheckpointError, InputError

# Tiny variants of registered specs (family behaviour kept: interpolation, LayerScale, registers).
TINY = dict(embed_dim=32, num_heads=2, depth=2)
TINY_DINO = replace(VIT_SPECS["dino_vits16"], arch="tiny_dino16", pos_grid=4, **TINY)
TINY_DINOV2 = replace(VIT_SPECS["dinov2_vits14"], arch="tiny_dinov2_14", pos_grid=5, **TINY)
TINY_DINOV2_REG = replace(VIT_SPECS["dinov2_vits14_reg"], arch="tiny_dinov2_14_reg", pos_grid=5, **TINY)

# published architectures: (patch, dim, heads, registers, native position grid)
PUBLISHED = {
    "dino_vits16": (16, 384, 6, 0, 14), "dino_vits8": (8, 384, 6, 0, 28),
    "dino_vitb16": (16, 768, 12, 0, 14), "dino_vitb8": (8, 768, 12, 0, 28),
    "dinov2_vits14": (14, 384, 6, 0, 37), "dinov2_vitb14": (14, 768, 12, 0, 37),
    "dinov2_vits14_reg": (14, 384, 6, 4, 37), "dinov2_vitb14_reg": (14, 768, 12, 4, 37),
}


# ----------------------------------------------------------------------------- reference ViT
class _Gamma(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))


class _RefBlock(nn.Module):
    """DINO ``Block`` / DINOv2 ``NestedTensorBlock`` (eval): pre-norm attention and MLP, optional LayerScale."""

    def __init__(self, d: int, heads: int, layer_scale: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        if layer_scale:
            self.ls1, self.ls2 = _Gamma(d), _Gamma(d)
        self.layer_scale = layer_scale

    def forward(self, x, return_attention=False):
        b, n, c = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
        if return_attention:
            return attn
        y = self.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + (y * self.ls1.gamma if self.layer_scale else y)
        y = self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))
        return x + (y * self.ls2.gamma if self.layer_scale else y)


class _RefViT(nn.Module):
    """The official DINO / DINOv2 VisionTransformer, written out (``prepare_tokens`` + blocks + norm)."""

    def __init__(self, spec, seed: int) -> None:
        super().__init__()
        d, self.p, self.spec = spec.embed_dim, spec.patch_size, spec
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid ** 2, d))
        if spec.num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_registers, d))
        if spec.family == "dinov2":
            self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, self.p, self.p)
        self.blocks = nn.ModuleList(_RefBlock(d, spec.num_heads, spec.family == "dinov2") for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def interpolate_pos_encoding(self, npatch, height, width):
        n = self.pos_embed.shape[1] - 1
        if npatch == n and height == width:
            return self.pos_embed
        m = int(math.sqrt(n))
        h0, w0 = height // self.p, width // self.p
        grid = self.pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.spec.family == "dino" or not self.spec.num_registers:  # offset 0.1, no antialias
            grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic")
        else:  # dinov2 hub _reg: interpolate_offset=0.0, interpolate_antialias=True
            grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", antialias=True)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def tokens(self, x):
        b, _, height, width = x.shape
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.interpolate_pos_encoding(t.shape[1] - 1, height, width)
        if self.spec.num_registers:
            t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        return t

    def features(self, x):
        t = self.tokens(x)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)[:, 1 + self.spec.num_registers:]
        return t.reshape(x.shape[0], x.shape[2] // self.p, x.shape[3] // self.p, -1).permute(0, 3, 1, 2)

    def last_selfattention(self, x):
        t = self.tokens(x)
        for blk in self.blocks[:-1]:
            t = blk(t)
        return self.blocks[-1](t, return_attention=True)


def _input(spec, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, rows * spec.patch_size, cols * spec.patch_size, generator=g)


def _assert_same_network(net: ViTBackbone, ref: _RefViT, rows: int = 3, cols: int = 6) -> None:
    """Bit-identical parameters, and features / CLS attention of the reference at a non-native grid."""
    ref_state = ref.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    x = _input(net.spec, rows, cols)
    with torch.no_grad():
        feats, attn = net.forward_with_attention(x)
        ref_feats = ref.features(x)
        ref_attn = ref.last_selfattention(x)[:, :, 0, 1 + net.num_registers:].reshape(2, net.num_heads, rows, cols)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_registered_archs_have_the_published_and_timm_dimensions(arch):
    timm = pytest.importorskip("timm")
    patch, dim, heads, regs, grid = PUBLISHED[arch]
    spec = VIT_SPECS[arch]
    assert arch in list_backbones("dino*")
    assert (spec.patch_size, spec.embed_dim, spec.num_heads, spec.num_registers, spec.pos_grid, spec.depth) == \
        (patch, dim, heads, regs, grid, 12)
    with torch.device("meta"):  # architecture only: no memory, no weights
        ref = timm.create_model(spec.timm_name, pretrained=False)
    assert (ref.embed_dim, len(ref.blocks), ref.blocks[0].attn.num_heads) == (dim, 12, heads)
    assert tuple(ref.patch_embed.patch_size) == (patch, patch) and tuple(ref.patch_embed.grid_size) == (grid, grid)
    assert ref.num_reg_tokens == regs
    assert isinstance(ref.blocks[0].ls1, nn.Identity) == (spec.layer_scale is None)


@functools.lru_cache(maxsize=1)
def _dino_vits16() -> ViTBackbone:
    """One random dino_vits16 shared by the tests that only read it (building one takes ~1 s)."""
    return create_backbone("dino_vits16", weights="random")


# every ViT-S, and one ViT-B (the other ViT-Bs differ only in patch size / registers, checked above)
@pytest.mark.parametrize("arch", ["dino_vits16", "dino_vits8", "dinov2_vits14", "dinov2_vits14_reg",
                                  "dinov2_vitb14_reg"])
def test_features_are_the_patch_grid_at_stride_patch(arch):
    patch, dim, heads, regs, _ = PUBLISHED[arch]
    net = _dino_vits16() if arch == "dino_vits16" else create_backbone(arch, weights="random")
    assert (net.stride, net.out_dim, net.num_heads, net.num_registers, net.layer) == (patch, dim, heads, regs, "last")
    assert net.config() == {"arch": arch, "layer": "last", "stride": patch}
    assert net.preprocessing.size_multiple == patch and net.preprocessing.mean == (0.485, 0.456, 0.406)
    x = torch.randn(1, 3, 2 * patch, 3 * patch)
    with torch.no_grad():
        feats, attn = net.forward_with_attention(x)
        plain = net(x)
    assert feats.shape == (1, dim, 2, 3) and attn.shape == (1, heads, 2, 3)
    assert net.grid_size(2 * patch, 3 * patch) == (2, 3)
    torch.testing.assert_close(feats, plain, rtol=0, atol=0)


def test_input_not_a_multiple_of_the_patch_is_rejected_but_the_extractor_rounds_it():
    net = build_vit(TINY_DINO)
    with pytest.raises(InputError, match=r"50x70 .*multiples of the patch size 16"):
        net(torch.zeros(1, 3, 50, 70))
    with pytest.raises(InputError, match="multiples"):
        net.grid_size(50, 70)
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        net(torch.zeros(3, 48, 64))
    ext = FeatureExtractor(net)  # takes net.preprocessing: ImageNet statistics, sides rounded to 16
    frame = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    assert ext.resized_size(50, 70) == (48, 64)
    feats = ext(frame)
    assert feats.shape == (32, 3, 4)
    geo = ext.geometry(50, 70)
    assert (geo.grid_height, geo.grid_width, geo.stride) == (3, 4, 16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(stride=8), "stride of a ViT is its patch size 16"),
    (dict(layer="res3"), "ResNet layers"),
    (dict(layer="block5"), "layer='last'"),
    (dict(weights="imagenet"), "no torchvision ImageNet weights"),
    (dict(seed=1.5), "seed"),
])
def test_invalid_options_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        create_backbone("dino_vits16", **kwargs)


def test_seeded_random_init_is_bit_identical_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_vit(TINY_DINOV2_REG, seed=4), build_vit(TINY_DINOV2_REG, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = build_vit(TINY_DINOV2_REG, seed=5)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
    assert torch.all(a.blocks[1].ls2.gamma == 1e-5)  # DINOv2's LayerScale init


# ----------------------------------------------------------------------------- position embedding
def _keys(x: float, a: float) -> float:
    """Keys' cubic convolution kernel."""
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


def _bicubic_weights(n_in: int, n_out: int, step: float) -> np.ndarray:
    """``[n_out, n_in]``: output i samples input position (i + 0.5) * step - 0.5, a = -0.75, taps clamped."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * step - 0.5
        i0 = math.floor(src)
        for k in range(-1, 3):
            w[i, min(max(i0 + k, 0), n_in - 1)] += _keys(src - i0 - k, -0.75)
    return w


def _antialiased_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: PIL's antialiased bicubic (a = -0.5), filter widened by n_in/n_out when shrinking."""
    scale = n_in / n_out
    support, stretch = 2.0 * max(scale, 1.0), 1.0 / max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        taps = np.array([_keys((j - centre + 0.5) * stretch, -0.5) for j in range(lo, hi)])
        w[i, lo:hi] = taps / taps.sum()
    return w


@pytest.mark.parametrize("grid", [(3, 7), (8, 4), (2, 2), (6, 9)])
def test_pos_embed_interpolation_equals_hand_written_bicubic(grid):
    m, d = 5, 3
    pos = torch.randn(1, 1 + m * m, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    patches = pos[0, 1:].reshape(m, m, d).numpy()
    h, w = grid
    # DINO / DINOv2: scale factor (h + 0.1) / M sets the sampling step M / (h + 0.1), no antialiasing
    dino = interpolate_pos_embed(pos, grid, offset=0.1, antialias=False)
    ref = np.einsum("ab,cd,bde->ace", _bicubic_weights(m, h, m / (h + 0.1)), _bicubic_weights(m, w, m / (w + 0.1)),
                    patches).reshape(h * w, d)
    assert dino.shape == (1, 1 + h * w, d)
    np.testing.assert_allclose(dino[0, 1:].numpy(), ref, atol=1e-5)  # resampled in float32
    assert torch.equal(dino[:, :1], pos[:, :1])  # the class entry is never resampled
    # DINOv2 with registers: output size (h, w), antialiased
    reg = interpolate_pos_embed(pos, grid, offset=0.0, antialias=True)
    ref = np.einsum("ab,cd,bde->ace", _antialiased_weights(m, h), _antialiased_weights(m, w), patches)
    np.testing.assert_allclose(reg[0, 1:].numpy(), ref.reshape(h * w, d), atol=1e-5)
    # the two rules (and the size rule without antialiasing) really differ
    plain = interpolate_pos_embed(pos, grid, offset=0.0, antialias=False)
    assert (dino - plain).abs().max() > 1e-2 and (reg - plain).abs().max() > 1e-2


def test_native_grid_keeps_the_pos_embed_untouched():
    pos = torch.randn(1, 1 + 16, 4)
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    with pytest.raises(InputError, match="square"):
        interpolate_pos_embed(torch.randn(1, 1 + 12, 4), (3, 4))


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("spec", [TINY_DINO, TINY_DINOV2_REG], ids=["dino", "dinov2_reg"])
def test_planted_cls_attention_is_recovered_per_head(spec):
    """Earlier blocks are made identities and the tokens entering the last block are designed position
    embeddings; its qkv makes head h's CLS query score +L on the patches of a planted set S_h, -L elsewhere,
    0 on itself and on the registers. Expected map: exp(+-L) / Z with Z over CLS, registers and patches."""
    net = build_vit(spec)
    m, d, hd, regs = spec.pos_grid, spec.embed_dim, spec.embed_dim // spec.num_heads, spec.num_registers
    a = torch.tensor([1.0, -1.0] * (hd // 2))                    # zero mean, |a|^2 = hd
    c = torch.tensor([1.0, 1.0, -1.0, -1.0] * (hd // 4))         # zero mean, orthogonal to a
    planted = torch.zeros(2, m, m, dtype=torch.bool)
    planted[0, 1, 2] = planted[0, 3, 0] = planted[0, 2, 2] = True  # head 0: three scattered patches
    planted[1, :, 1] = True                                       # head 1: a column
    sign = planted.reshape(2, m * m).float() * 2 - 1              # [heads, patches]
    cls_vec = torch.cat([c, c])
    L = 2.0
    ln = 1.0 / math.sqrt(1.0 + 1e-6)  # LayerNorm of a zero-mean, unit-variance vector
    beta = L / (hd ** -0.5 * hd * ln * ln)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.pos_embed[0, 0] = cls_vec
        net.pos_embed[0, 1:] = torch.cat([sign[0][:, None] * a, sign[1][:, None] * a], dim=1)
        for blk in net.blocks:
            blk.norm1.weight.fill_(1.0)
            blk.norm2.weight.fill_(1.0)
        qkv = net.blocks[-1].attn.qkv.weight  # [3D, D]: q rows, k rows, v rows
        for h in range(2):
            rows = slice(h * hd, (h + 1) * hd)
            qkv[rows] = beta * torch.outer(a, cls_vec) / cls_vec.dot(cls_vec)
            qkv[d + h * hd: d + (h + 1) * hd, rows] = torch.eye(hd)
    attn = net.last_attention(torch.randn(1, 3, m * spec.patch_size, m * spec.patch_size))
    z = (1 + regs) + torch.exp(L * sign).sum(1, keepdim=True)      # CLS and registers have logit 0
    expected = (torch.exp(L * sign) / z).reshape(1, 2, m, m)
    torch.testing.assert_close(attn, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(attn[0].reshape(2, -1) > attn[0].reshape(2, -1).mean(1, keepdim=True),
                       planted.reshape(2, -1))
    torch.testing.assert_close(attn.sum((-2, -1)), 1 - (1 + regs) / z.reshape(1, 2))


# ----------------------------------------------------------------------------- checkpoint layouts
def _chunked(state: dict, prefix: str = "") -> dict:
    """DINOv2 FSDP layout: block i of 2 chunks (chunk size 1) is 'blocks.<i>.<i>.'."""
    out = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            k = f"blocks.{i}.{i}.{rest}"
        out[prefix + k] = v
    return out


def test_dino_released_backbone_file_loads(tmp_path):
    ref = _RefViT(TINY_DINO, seed=1)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(ref.state_dict(), path)
    assert open_checkpoint(path).format == "dino"
    _assert_same_network(build_vit(TINY_DINO, weights=path), ref, rows=3, cols=5)


def test_dino_training_checkpoint_loads_the_teacher_backbone_and_ignores_the_head(tmp_path):
    teacher, student = _RefViT(TINY_DINO, seed=2), _RefViT(TINY_DINO, seed=3)
    head = {"head.mlp.0.weight": torch.randn(64, 32), "head.last_layer.weight_g": torch.ones(1, 8)}
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": {f"module.{k}": v for k, v in
                            {**{f"backbone.{k}": v for k, v in student.state_dict().items()}, **head}.items()},
                "teacher": {f"module.{k}": v for k, v in
                            {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head}.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 8)}},
               path)
    assert open_checkpoint(path).format == "dino_teacher"
    _assert_same_network(build_vit(TINY_DINO, weights=path), teacher, rows=5, cols=3)


@pytest.mark.parametrize("spec", [TINY_DINOV2, TINY_DINOV2_REG], ids=["dinov2", "dinov2_reg"])
def test_dinov2_released_backbone_file_loads(tmp_path, spec):
    ref = _RefViT(spec, seed=4)
    assert "mask_token" in ref.state_dict() and ("register_tokens" in ref.state_dict()) == bool(spec.num_registers)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(ref.state_dict(), path)
    assert open_checkpoint(path).format == "dinov2"
    _assert_same_network(build_vit(spec, weights=path), ref)


def test_dinov2_chunked_teacher_checkpoint_loads(tmp_path):
    ref = _RefViT(TINY_DINOV2_REG, seed=5)
    state = _chunked(ref.state_dict(), prefix="backbone.")
    assert "backbone.blocks.1.1.ls2.gamma" in state
    state.update({"dino_head.mlp.0.weight": torch.randn(8, 32), "ibot_head.mlp.0.weight": torch.randn(8, 32)})
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": state}, path)
    assert open_checkpoint(path).format == "dino_teacher"
    _assert_same_network(build_vit(TINY_DINOV2_REG, weights=path), ref)


def test_vlprop_checkpoint_round_trip_records_the_arch(tmp_path):
    net = build_vit(TINY_DINOV2_REG, seed=7)
    path = save_checkpoint(tmp_path / "vit.pt", net)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "vlprop" and ckpt.recorded_config() == net.config()
    loaded = build_vit(TINY_DINOV2_REG, weights=path, seed=99)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    x = _input(TINY_DINOV2_REG, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="saved for arch 'tiny_dinov2_14_reg'"):
        build_vit(TINY_DINOV2, weights=path)
    with pytest.raises(CheckpointError, match="saved for arch 'tiny_dinov2_14_reg'"):
        create_backbone("resnet18", weights=path)


def test_missing_key_names_the_file_and_the_key(tmp_path):
    state = _RefViT(TINY_DINOV2, seed=6).state_dict()
    del state["blocks.1.ls2.gamma"]
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"dinov2_vits14_pretrain\.pth(.|\n)*missing keys \(1\): "
                                              r"blocks\.1\.ls2\.gamma"):
        build_vit(TINY_DINOV2, weights=path)


def test_unexpected_key_names_it(tmp_path):
    state = _RefViT(TINY_DINO, seed=6).state_dict()
    state["blocks.0.attn.q_bias"] = torch.zeros(32)
    path = tmp_path / "dino.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"dino\.pth(.|\n)*unexpected keys \(1\): blocks\.0\.attn\.q_bias"):
        build_vit(TINY_DINO, weights=path)


def test_wrong_pos_embed_grid_shows_both_shapes(tmp_path):
    state = _RefViT(TINY_DINO, seed=6).state_dict()
    state["pos_embed"] = torch.zeros(1, 1 + 36, 32)
    path = tmp_path / "dino_wrong_grid.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"pos_embed: file \(1, 37, 32\) vs model \(1, 17, 32\)"):
        build_vit(TINY_DINO, weights=path)


def test_dino_file_in_a_dinov2_net_lists_the_missing_layer_scales(tmp_path):
    spec = replace(TINY_DINOV2, pos_grid=4, patch_size=16)  # same shapes as TINY_DINO but with LayerScale
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(_RefViT(TINY_DINO, seed=6).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing keys \(4\): blocks\.0\.ls1\.gamma"):
        build_vit(spec, weights=path)


# ----------------------------------------------------------------------------- presets and session
def test_dinov2_preset_has_the_dinov3_notebook_protocol():
    p = PRESETS["dinov2"]
    c = p.propagation
    assert (c.aggregation, c.topk, c.normalizer, c.temperature, c.norm_stage) == ("overall", 5, "softmax", 0.2, "topk")
    assert (c.long_term, c.context, c.window_long_term, c.feature_norm) == (1, 7, True, True)
    assert p.labels.output_minmax and "dinov3" in p.reference and "segmentation_tracking" in p.reference
    assert (p.features.backbone, p.features.layer, p.features.stride) == ("dinov2_vits14", "last", 14)
    # the notebook's neighbourhood: offsets with Euclidean norm <= 12 (inclusive circle)
    from vlprop.propagation.affinity import window_offsets

    d = torch.arange(-12, 13, dtype=torch.float64)
    inclusive = (d[:, None] ** 2 + d[None, :] ** 2) <= 144
    assert c.window == "disk" and torch.equal(window_offsets(c.window, c.radius), inclusive)


def test_propagator_runs_the_dino_preset_on_dino_vits16_last_layer():
    from vlprop.session import Propagator

    f = PRESETS["dino"].features
    assert (f.backbone, f.layer, f.stride) == ("dino_vits16", "last", 16)  # eval_video_segmentation defaults
    prop = Propagator(preset="dino", backbone=f.backbone, weights="random")
    assert isinstance(prop.extractor.net, ViTBackbone) and prop.extractor.stride == 16
    frames = [np.random.default_rng(t).integers(0, 256, (60, 90, 3), dtype=np.uint8) for t in range(3)]
    first = np.zeros((60, 90), np.uint8)
    first[10:40, 20:60] = 1
    out = dict(prop.propagate(frames, masks={0: first}))
    assert sorted(out) == [0, 1, 2] and all(m.shape == (60, 90) for m in out.values())
    assert np.array_equal(out[0], first)
    geo = prop.extractor.geometry(60, 90)
    assert (geo.resized_height, geo.resized_width, geo.grid_height, geo.grid_width) == (64, 96, 4, 6)


def test_davis_frame_at_480p_gives_a_30x53_grid(davis2016):
    from PIL import Image

    frame = np.array(Image.open(davis2016 / "JPEGImages/480p/blackswan/00000.jpg").convert("RGB"))
    ext = FeatureExtractor(_dino_vits16())
    geo = ext.geometry(*frame.shape[:2])
    assert frame.shape[:2] == (480, 854) and (geo.resized_height, geo.resized_width) == (480, 848)
    feats = ext(frame)
    assert feats.shape == (384, 30, 53) and torch.isfinite(feats).all()
