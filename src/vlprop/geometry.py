"""Pixel <-> feature-grid geometry: the one coordinate convention used everywhere.

A frame of ``H x W`` pixels is (optionally) resized to ``H' x W'`` before the backbone, which
produces a feature grid of ``h x w`` cells with integer stride ``s`` in resized pixels. Cell ``g``
covers resized pixels ``[g*s, (g+1)*s)`` and its centre is at resized pixel ``(g + 0.5) * s - 0.5``
(cell-centre convention, identical to ``F.interpolate(align_corners=False)``)::

    p' = (p + 0.5) * H'/H - 0.5          original -> resized pixel
    g  = (p' + 0.5) / s - 0.5            resized pixel -> grid cell

so in original pixels the effective stride is ``s * H / H'`` per axis. Encode (dense labels ->
grid), decode (grid -> dense labels), keypoint encode/decode, crop/uncrop and resizing all use
:class:`GridGeometry`, so they agree to floating point precision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GridGeometry:
    """Geometry of one frame: original size, resized (network input) size, stride, grid size."""

    height: int
    width: int
    resized_height: int
    resized_width: int
    stride: int
    grid_height: int
    grid_width: int

    @classmethod
    def for_frame(cls, height: int, width: int, stride: int, resized: tuple[int, int] | None = None,
                  grid: tuple[int, int] | None = None) -> "GridGeometry":
        """Geometry of a ``height x width`` frame resized to ``resized`` (default: unchanged).

        ``grid`` defaults to ``ceil(resized / stride)``, which is what a padded strided CNN produces.
        """
        rh, rw = resized if resized is not None else (height, width)
        if grid is None:
            grid = (-(-rh // stride), -(-rw // stride))
        return cls(int(height), int(width), int(rh), int(rw), int(stride), int(grid[0]), int(grid[1]))

    # ------------------------------------------------------------------ scalars
    @property
    def scale_y(self) -> float:
        """Resized pixels per original pixel along y."""
        return self.resized_height / self.height

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.width

    @property
    def effective_stride(self) -> tuple[float, float]:
        """Original pixels per grid cell, (y, x)."""
        return self.stride / self.scale_y, self.stride / self.scale_x

    # ------------------------------------------------------------ coordinates
    def pixel_to_grid(self, xy: torch.Tensor) -> torch.Tensor:
        """Map original-pixel coordinates ``[..., 2]`` (x, y) to grid coordinates (x, y)."""
        xy = torch.as_tensor(xy, dtype=torch.float64)
        scale = torch.tensor([self.scale_x, self.scale_y], dtype=torch.float64)
        resized = (xy + 0.5) * scale - 0.5
        return (resized + 0.5) / self.stride - 0.5

    def grid_to_pixel(self, gxy: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pixel_to_grid`: grid (x, y) -> original pixel (x, y)."""
        gxy = torch.as_tensor(gxy, dtype=torch.float64)
        scale = torch.tensor([self.scale_x, self.scale_y], dtype=torch.float64)
        resized = (gxy + 0.5) * self.stride - 0.5
        return (resized + 0.5) / scale - 0.5

    # ------------------------------------------------------------ dense maps
    def encode(self, labels: torch.Tensor, mode: str = "area") -> torch.Tensor:
        """Resample a dense label map ``[C, H, W]`` (original pixels) to the grid ``[C, h, w]``.

        ``mode``: ``"area"`` (fraction of each cell covered; cells that extend past the frame
        average over their in-frame pixels), ``"bilinear"`` (point sample at cell centres) or
        ``"nearest"`` (the pixel nearest to the cell centre).
        """
        if labels.dim() != 3 or labels.shape[-2:] != (self.height, self.width):
            raise ValueError(f"expected labels [C, {self.height}, {self.width}], got {tuple(labels.shape)}")
        x = labels[None].float()
        if (self.resized_height, self.resized_width) != (self.height, self.width):
            if mode == "nearest":
                x = F.interpolate(x, size=(self.resized_height, self.resized_width), mode="nearest-exact")
            else:
                x = F.interpolate(x, size=(self.resized_height, self.resized_width), mode="bilinear",
                                  align_corners=False, antialias=True)
        ph, pw = self.grid_height * self.stride, self.grid_width * self.stride
        rh, rw = self.resized_height, self.resized_width
        if mode == "area":
            valid = torch.zeros(1, 1, ph, pw, dtype=x.dtype)
            valid[..., :rh, :rw] = 1
            xp = F.pad(x, (0, pw - rw, 0, ph - rh))
            num = F.avg_pool2d(xp, self.stride)
            den = F.avg_pool2d(valid, self.stride)
            return (num / den.clamp_min(1e-12))[0]
        # point sampling at cell centres (resized pixel coordinates), clamped to the frame
        gy = (torch.arange(self.grid_height, dtype=torch.float64) + 0.5) * self.stride - 0.5
        gx = (torch.arange(self.grid_width, dtype=torch.float64) + 0.5) * self.stride - 0.5
        gy, gx = gy.clamp(0, rh - 1), gx.clamp(0, rw - 1)
        if mode == "nearest":
            iy = torch.floor(gy + 0.5).long().clamp(0, rh - 1)
            ix = torch.floor(gx + 0.5).long().clamp(0, rw - 1)
            return x[0][:, iy][:, :, ix]
        if mode != "bilinear":
            raise ValueError(f"unknown label resampling mode {mode!r} (area, bilinear, nearest)")
        ny = (gy / max(rh - 1, 1)) * 2 - 1
        nx = (gx / max(rw - 1, 1)) * 2 - 1
        grid = torch.stack(torch.meshgrid(ny, nx, indexing="ij")[::-1], dim=-1)[None].to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", align_corners=True)[0]

    def decode(self, grid_labels: torch.Tensor) -> torch.Tensor:
        """Bilinearly up-sample grid labels ``[C, h, w]`` to original pixels ``[C, H, W]``."""
        if grid_labels.shape[-2:] != (self.grid_height, self.grid_width):
            raise ValueError(f"expected grid labels [C, {self.grid_height}, {self.grid_width}], "
                             f"got {tuple(grid_labels.shape)}")
        x = grid_labels[None].float()
        x = F.interpolate(x, size=(self.grid_height * self.stride, self.grid_width * self.stride),
                          mode="bilinear", align_corners=False)
        x = x[..., : self.resized_height, : self.resized_width]
        if (self.resized_height, self.resized_width) != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        return x[0]
