"""ViT backbones of DINO and DINOv2, built from timm modules, with the official parameter names.

Registered archs (``create_backbone(name, weights=...)``):

===================  =====  ====  =====  ==========  =========  ===========================================
arch                 patch  dim   heads  pos grid    registers  timm equivalent (architecture only)
===================  =====  ====  =====  ==========  =========  ===========================================
dino_vits16          16     384   6      14x14       0          ``vit_small_patch16_224.dino``
dino_vits8           8      384   6      28x28       0          ``vit_small_patch8_224.dino``
dino_vitb16          16     768   12     14x14       0          ``vit_base_patch16_224.dino``
dino_vitb8           8      768   12     28x28       0          ``vit_base_patch8_224.dino``
dinov2_vits14        14     384   6      37x37       0          ``vit_small_patch14_dinov2.lvd142m``
dinov2_vitb14        14     768   12     37x37       0          ``vit_base_patch14_dinov2.lvd142m``
dinov2_vits14_reg    14     384   6      37x37       4          ``vit_small_patch14_reg4_dinov2.lvd142m``
dinov2_vitb14_reg    14     768   12     37x37       4          ``vit_base_patch14_reg4_dinov2.lvd142m``
===================  =====  ====  =====  ==========  =========  ===========================================

All have depth 12, MLP ratio 4, qkv bias, GELU, LayerNorm(eps=1e-6); DINOv2 adds LayerScale
(``blocks.N.ls1.gamma`` / ``ls2.gamma``). The blocks, patch embedding and final norm are timm's
(``timm.models.vision_transformer.VisionTransformer`` built without weights); the class token, position
embedding and register tokens are held here under the names of the official code, so the state dict of a
:class:`ViTBackbone` *is* the layout of the released files (``cls_token``, ``pos_embed`` [1, 1+M*M, D] with
the class token's entry first, ``register_tokens`` [1, R, D], ``patch_embed.proj.*``, ``blocks.N.*``,
``norm.*``). See :mod:`vlprop.backbones.weights` for the layouts that load (``dino``, ``dino_teacher``,
``dinov2``, ``vlprop``).

Token order and position embedding follow the official code exactly: ``[CLS, registers..., patches
row-major]``; the position embedding is added to CLS and patches *before* the registers are inserted
(registers have none). For a patch grid other than the native M x M the patch part of the embedding is
resampled bicubically as each family does it (:func:`interpolate_pos_embed`): DINO and DINOv2 without
registers pass ``scale_factor = (h + 0.1) / M`` (the 0.1 "kludge" of facebookresearch/dino issue 8, which
also shifts the sampling positions slightly) without antialiasing; DINOv2 with registers
(``interpolate_offset=0, interpolate_antialias=True`` in dinov2/hub/backbones.py) passes ``size = (h, w)``
with antialiasing. timm's ``dynamic_img_size`` matches only the latter, so it is not used.

Features (``forward``) are the last block's patch tokens after the final LayerNorm, as DINO's
``eval_video_segmentation.py`` (``get_intermediate_layers(n=1)``) and DINOv2's ``x_norm_patchtokens``
use them: ``[B, 3, H, W] -> [B, D, H/p, W/p]``. ``H`` and ``W`` must be multiples of the patch size ``p``
(a ViT silently drops the remainder otherwise); :class:`~vlprop.backbones.FeatureExtractor` rounds the
resized frame to that multiple through ``net.preprocessing``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlprop.backbones.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from vlprop.backbones.registry import register_spec_backbone
from vlprop.backbones.weights import CheckpointFile, load_weights, open_checkpoint
from vlprop.errors import CheckpointError, InputError

LAYERS = ("last",)
# LayerNorm epsilon of every DINO / DINOv2 ViT (partial(nn.LayerNorm, eps=1e-6) in both codebases).
_LN_EPS = 1e-6


@dataclass(frozen=True)
class ViTSpec:
    """Static description of one registered ViT.

    pos_grid: side ``M`` of the square position-embedding grid of the released weights
        (224 / patch for DINO, 518 / 14 = 37 for DINOv2).
    layer_scale: initial LayerScale value for a random init (DINOv2 trains from 1e-5); ``None`` = the
        blocks have no LayerScale (DINO).
    interpolate_offset, interpolate_antialias: how the position embedding is resampled for other grids
        (see :func:`interpolate_pos_embed`).
    cls_init_std: std of the class token in a random init (DINO: 0.02; DINOv2: 1e-6).
    timm_name: the timm model whose architecture this is (for reference; no timm weights are used).
    """

    arch: str
    family: str
    patch_size: int
    embed_dim: int
    num_heads: int
    pos_grid: int
    depth: int = 12
    mlp_ratio: float = 4.0
    num_registers: int = 0
    layer_scale: float | None = None
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    cls_init_std: float = 0.02
    timm_name: str = ""


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1,
                          antialias: bool = False) -> torch.Tensor:
    """Resample a ViT position embedding to a patch grid, as DINO / DINOv2 do.

    Args:
        pos_embed: ``[1, 1 + M*M, D]``, entry 0 belongs to the class token, then the ``M x M`` grid row-major.
        grid: target patch grid ``(h, w)``.
        offset: ``> 0``: bicubic with ``scale_factor = ((h + offset) / M, (w + offset) / M)``, which sets
            both the output size (floor) and the sampling positions ``(i + 0.5) / scale - 0.5`` (DINO,
            DINOv2 without registers, offset 0.1); ``0``: bicubic to ``size = (h, w)`` (positions
            ``(i + 0.5) * M / h - 0.5``).
        antialias: antialiased bicubic (PyTorch's / PIL's filter, a = -0.5, widened when shrinking), as
            DINOv2 with registers; otherwise the Keys kernel with a = -0.75.

    Returns:
        ``[1, 1 + h*w, D]`` in the dtype of ``pos_embed`` (computed in float32). The native grid
        ``(M, M)`` returns ``pos_embed`` itself, as in the official code.
    """
    n = pos_embed.shape[1] - 1
    m = int(math.isqrt(n))
    if m * m != n:
        raise InputError(f"position embedding of {n} patch entries is not a square grid")
    h, w = int(grid[0]), int(grid[1])
    if (h, w) == (m, m):
        return pos_embed
    dim = pos_embed.shape[-1]
    patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        patch = F.interpolate(patch, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic",
                              antialias=antialias)
    else:
        patch = F.interpolate(patch, size=(h, w), mode="bicubic", antialias=antialias)
    if patch.shape[-2:] != (h, w):  # the offset exists to make floor(M * scale) land on (h, w)
        raise RuntimeError(f"position embedding resampled to {tuple(patch.shape[-2:])}, expected {(h, w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


def _timm_trunk(spec: ViTSpec) -> nn.Module:
    """A weightless timm VisionTransformer of ``spec``'s shape (on the current default device)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is a core dependency; this guards a broken installation
        raise InputError(f"{spec.arch} needs timm >= 1.0 (pip install 'timm>=1.0')") from None
    # class token / position embedding / registers are owned by ViTBackbone (official names and order),
    # so timm's own are switched off.
    return VisionTransformer(
        img_size=spec.pos_grid * spec.patch_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
        depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, qkv_bias=True,
        init_values=spec.layer_scale, num_classes=0, global_pool="", class_token=False, pos_embed="none",
        reg_tokens=0, weight_init="skip", norm_layer=partial(nn.LayerNorm, eps=_LN_EPS), act_layer=nn.GELU,
    )


class ViTBackbone(nn.Module):
    """A DINO / DINOv2 ViT: ``[B, 3, H, W] -> [B, D, H/p, W/p]`` patch features of the last block.

    Attributes: ``arch``, ``stride`` (= ``patch_size``, input pixels per feature cell), ``layer``
    (``"last"``), ``out_dim`` (= embed dim ``D``), ``num_heads``, ``num_registers``, ``preprocessing``
    (ImageNet mean/std, sides rounded to the patch size). Parameters are initialised from ``seed`` with a
    private generator (the global RNG is neither used nor advanced); the module is returned in eval mode.
    """

    def __init__(self, spec: ViTSpec, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.arch = spec.arch
        self.patch_size = self.stride = int(spec.patch_size)
        self.layer = "last"
        self.out_dim = int(spec.embed_dim)
        self.num_heads = int(spec.num_heads)
        self.num_registers = int(spec.num_registers)
        self.preprocessing = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, size_multiple=self.patch_size,
                                           name=f"imagenet, sides x{self.patch_size}")
        d = spec.embed_dim
        # Built on the meta device: no memory, no RNG use; values come from reset_parameters.
        with torch.device("meta"):
            trunk = _timm_trunk(spec)
            self.cls_token = nn.Parameter(torch.empty(1, 1, d))
            self.pos_embed = nn.Parameter(torch.empty(1, 1 + spec.pos_grid ** 2, d))
            self.register_tokens = nn.Parameter(torch.empty(1, spec.num_registers, d)) \
                if spec.num_registers else None
            self.patch_embed = trunk.patch_embed
            self.blocks = trunk.blocks
            self.norm = trunk.norm
        del trunk
        self.to_empty(device="cpu")
        self.reset_parameters(seed)
        self.eval()

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic init from ``seed`` following the reference code's scheme.

        ``pos_embed``, class token and Linear weights: normal with std 0.02 (the references' truncation at
        +-2 is 100 std away and never acts, so the faster untruncated sampler draws the same distribution;
        DINOv2's class token: std 1e-6), Linear biases 0; registers: normal 1e-6; LayerNorm 1 / 0;
        LayerScale gammas ``spec.layer_scale``; patch conv: PyTorch's default uniform +-1/sqrt(fan_in).
        Same seed and spec -> bit-identical parameters.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        nn.init.normal_(self.pos_embed, std=0.02, generator=gen)
        nn.init.normal_(self.cls_token, std=self.spec.cls_init_std, generator=gen)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6, generator=gen)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Conv2d):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.weight, -bound, bound, generator=gen)
                if m.bias is not None:
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            elif name.endswith((".ls1", ".ls2")) and hasattr(m, "gamma"):
                m.gamma.fill_(self.spec.layer_scale)

    # ------------------------------------------------------------------ contract
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(H/p, W/p)`` of an input whose sides are multiples of the patch size ``p``."""
        self._check_size(int(height), int(width))
        return int(height) // self.patch_size, int(width) // self.patch_size

    def excluded_prefixes(self) -> tuple[str, ...]:
        """Keys of released files this network deliberately lacks: DINOv2's ``mask_token`` (the masked-patch
        embedding used only by iBOT training)."""
        return ("mask_token",)

    def config(self) -> dict:
        """The constructor configuration recorded in vlprop checkpoints."""
        return {"arch": self.arch, "layer": self.layer, "stride": self.stride}

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, patch={self.patch_size}, out_dim={self.out_dim}, heads={self.num_heads}, "
                f"registers={self.num_registers}, pos_grid={self.spec.pos_grid}")

    # ------------------------------------------------------------------ forward
    def _check_size(self, h: int, w: int) -> None:
        p = self.patch_size
        if h < p or w < p or h % p or w % p:
            raise InputError(f"{self.arch}: input {h}x{w} must have sides that are positive multiples of the "
                             f"patch size {p} (e.g. {max(p, p * round(h / p))}x{max(p, p * round(w / p))}); "
                             f"FeatureExtractor resizes frames to such sizes")

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images ``[B, 3, H, W]`` -> tokens ``[B, 1 + R + h*w, D]`` before the first block."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{self.arch}: expected a normalised image batch [B, 3, H, W], got {shape}")
        h, w = self.grid_size(x.shape[-2], x.shape[-1])
        b = x.shape[0]
        patches = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        pos = interpolate_pos_embed(self.pos_embed, (h, w), self.spec.interpolate_offset,
                                    self.spec.interpolate_antialias)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(patches.dtype), patches], dim=1)
        tokens = tokens + pos.to(tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(b, -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return tokens, (h, w)

    def _patch_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Final-normed tokens ``[B, N, D]`` -> patch features ``[B, D, h, w]``."""
        patches = tokens[:, 1 + self.num_registers:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], self.out_dim, *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` (normalised, sides multiples of ``p``) -> features ``[B, D, H/p, W/p]``."""
        tokens, grid = self._tokens(x)
        tokens = self.blocks(tokens)
        return self._patch_map(self.norm(tokens), grid)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and last-block CLS attention in one pass.

        Returns:
            ``(features [B, D, h, w], attention [B, heads, h, w])``. ``attention[:, k]`` is head ``k``'s
            softmax attention of the CLS query in the last block over *all* tokens (CLS, registers,
            patches; scaled dot product ``q.k / sqrt(D/heads)``), read at the patch tokens only: as DINO's
            ``get_last_selfattention(x)[:, :, 0, 1:]`` and, with registers, their columns dropped after the
            softmax (so a map sums to ``1 - `` the mass on CLS and registers).
        """
        tokens, grid = self._tokens(x)
        for blk in self.blocks[:-1]:
            tokens = blk(tokens)
        last = self.blocks[-1]
        captured: list[torch.Tensor] = []
        # Read the last block's own qkv projection instead of recomputing it or re-implementing the block:
        # no extra matmul, and the block keeps its fused attention kernel.
        handle = last.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            tokens = last(tokens)
        finally:
            handle.remove()
        attn = self._cls_attention(captured[0], last.attn)
        h, w = grid
        attn = attn[..., 1 + self.num_registers:].reshape(tokens.shape[0], self.num_heads, h, w)
        return self._patch_map(self.norm(tokens), grid), attn

    def _cls_attention(self, qkv: torch.Tensor, attn_module: nn.Module) -> torch.Tensor:
        """``qkv [B, N, 3*D]`` of the last block -> CLS attention ``[B, heads, N]`` (softmax over all N)."""
        b, n, _ = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.out_dim // self.num_heads)
        q = qkv[:, :1, 0].transpose(1, 2)                 # [B, heads, 1, hd]
        k = qkv[:, :, 1].transpose(1, 2)                  # [B, heads, N, hd]
        q, k = attn_module.q_norm(q), attn_module.k_norm(k)
        logits = (q.float() * attn_module.scale) @ k.float().transpose(-2, -1)
        return logits.softmax(dim=-1)[:, :, 0]

    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Last-block CLS attention ``[B, heads, H/p, W/p]`` (see :meth:`forward_with_attention`)."""
        return self.forward_with_attention(x)[1]


# ---------------------------------------------------------------------- factories
def _check_options(spec: ViTSpec, stride, layer) -> None:
    if stride is not None and (isinstance(stride, bool) or stride != spec.patch_size):
        raise InputError(f"{spec.arch}: the feature stride of a ViT is its patch size {spec.patch_size}; "
                         f"got stride={stride!r}")
    if layer is not None and layer not in LAYERS:
        hint = " (res2/res3/res4/head are ResNet layers)" if layer in ("res2", "res3", "res4", "head",
                                                                        "layer2", "layer3", "layer4") else ""
        raise InputError(f"{spec.arch}: unknown feature layer {layer!r}{hint}; a ViT gives the patch tokens of "
                         f"its last block: layer='last'")


def build_vit(spec: ViTSpec, *, stride: int | None = None, layer: str | None = None,
              weights: str | os.PathLike | None = "random", seed: int = 0, weights_format: str | None = None,
              allow_pickle: bool = False) -> ViTBackbone:
    """Build ``spec`` and load ``weights`` (``"random"`` or a checkpoint path); see the arch factories."""
    _check_options(spec, stride, layer)
    ckpt: CheckpointFile | None = None
    if weights is None or (isinstance(weights, str) and weights == "random"):
        pass
    elif isinstance(weights, str) and weights == "imagenet":
        raise InputError(f"{spec.arch}: there are no torchvision ImageNet weights for a ViT; pass the released "
                         f"{spec.family.upper()} checkpoint file instead")
    elif isinstance(weights, (str, os.PathLike)):
        ckpt = open_checkpoint(weights, weights_format=weights_format, allow_pickle=allow_pickle)
        recorded = ckpt.recorded_config()
        rec_arch = recorded.get("arch")
        if rec_arch is not None and rec_arch != spec.arch:
            raise CheckpointError(f"{ckpt.path}: checkpoint was saved for arch {rec_arch!r}, not {spec.arch!r}; "
                                  f"use create_backbone({rec_arch!r}, ...)")
        _check_options(spec, recorded.get("stride"), recorded.get("layer"))
    else:
        raise InputError(f"weights must be 'random' or a file path, got {weights!r}")
    net = ViTBackbone(spec, seed=seed)
    if ckpt is not None:
        load_weights(net, ckpt)
    return net.eval()


def _factory_doc(spec: ViTSpec) -> str:
    files = {"dino": "DINO's released backbone (``dino_*_pretrain.pth``) or training checkpoint (teacher)",
             "dinov2": "DINOv2's released backbone (``dinov2_*_pretrain.pth``) or training teacher checkpoint"}
    return f"""Build {spec.arch}: {spec.family.upper()} ViT, patch {spec.patch_size}, dim {spec.embed_dim},
    {spec.num_heads} heads, {spec.num_registers} registers (see :class:`ViTBackbone`).

    Args:
        stride: must be ``None`` or the patch size {spec.patch_size}.
        layer: must be ``None`` or ``"last"`` (the last block's patch tokens after the final norm).
        weights: ``"random"`` (seeded) or a checkpoint path: {files[spec.family]}, or a vlprop checkpoint.
        seed: seed of the random initialisation.
        weights_format: force a checkpoint layout (``dino``, ``dino_teacher``, ``dinov2``, ``vlprop``).
        allow_pickle: allow arbitrary pickled objects in the checkpoint (only for trusted files).
    """


def _register(spec: ViTSpec) -> None:
    globals()[spec.arch] = register_spec_backbone(
        spec, build_vit, doc=_factory_doc(spec), layers=LAYERS, strides=(spec.patch_size,), default_layer="last",
        default_stride=spec.patch_size)


def _dino(arch: str, patch: int, dim: int, heads: int, timm_name: str) -> ViTSpec:
    return ViTSpec(arch, "dino", patch, dim, heads, pos_grid=224 // patch, timm_name=timm_name)


def _dinov2(arch: str, dim: int, heads: int, registers: int, timm_name: str) -> ViTSpec:
    # dinov2/hub/backbones.py: img_size 518 (37x37 grid); with registers interpolate_offset=0 and antialias.
    return ViTSpec(arch, "dinov2", 14, dim, heads, pos_grid=37, num_registers=registers, layer_scale=1e-5,
                   interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=bool(registers),
                   cls_init_std=1e-6, timm_name=timm_name)


VIT_SPECS: dict[str, ViTSpec] = {s.arch: s for s in (
    _dino("dino_vits16", 16, 384, 6, "vit_small_patch16_224.dino"),
    _dino("dino_vits8", 8, 384, 6, "vit_small_patch8_224.dino"),
    _dino("dino_vitb16", 16, 768, 12, "vit_base_patch16_224.dino"),
    _dino("dino_vitb8", 8, 768, 12, "vit_base_patch8_224.dino"),
    _dinov2("dinov2_vits14", 384, 6, 0, "vit_small_patch14_dinov2.lvd142m"),
    _dinov2("dinov2_vitb14", 768, 12, 0, "vit_base_patch14_dinov2.lvd142m"),
    _dinov2("dinov2_vits14_reg", 384, 6, 4, "vit_small_patch14_reg4_dinov2.lvd142m"),
    _dinov2("dinov2_vitb14_reg", 768, 12, 4, "vit_base_patch14_reg4_dinov2.lvd142m"),
)}

for _spec in VIT_SPECS.values():
    _register(_spec)
del _spec

__all__ = ["ViTBackbone", "ViTSpec", "VIT_SPECS", "LAYERS", "build_vit", "interpolate_pos_embed", *VIT_SPECS]
