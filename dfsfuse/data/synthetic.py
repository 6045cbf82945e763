"""Synthetic labelled IR/VIS road scenes that mimic the fusion problem.

Warm objects (people, cars, bikes) are bright in IR but low-contrast in VIS, and nearly
invisible in VIS at night; the background carries texture, edges and fine detail (building
windows, lane marks, cones, guard rails) that only VIS shows; both modalities are noisy and
IR is blurrier. Labels use the 9 MSRS classes, so the segmentation branch has something to
learn where no labelled real data is at hand. Every scene is a pure function of
``(seed, index)``: the same seed gives the same data in any order, in any worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .color import rgb_to_ycbcr

# MSRS / MFNet class indices.
BACKGROUND, CAR, PERSON, BIKE, CURVE, CAR_STOP, GUARDRAIL, COLOR_CONE, BUMP = range(9)
CLASS_NAMES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generator; defaults give scenes with several objects of most classes."""

    night_prob: float = 0.5
    max_people: int = 3
    max_cars: int = 2
    max_bikes: int = 1
    max_cones: int = 2
    ir_noise: float = 0.02
    vis_noise: float = 0.01


class _Painter:
    """Holds the three canvases and paints masked regions onto them."""

    def __init__(self, h: int, w: int, g: torch.Generator) -> None:
        self.h, self.w, self.g = h, w, g
        self.y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
        self.x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
        self.ir = torch.zeros(h, w)
        self.vis = torch.zeros(3, h, w)
        self.label = torch.zeros(h, w, dtype=torch.int64)

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=self.g))

    def smooth_noise(self, cells: int) -> Tensor:
        """Noise in [-1, 1] with roughly ``cells`` blobs across the width (bilinear upsampled)."""
        ch = max(2, round(cells * self.h / max(self.w, 1)))
        coarse = torch.rand(1, 1, ch, max(2, cells), generator=self.g) * 2 - 1
        return F.interpolate(coarse, size=(self.h, self.w), mode="bilinear", align_corners=False)[0, 0]

    def paint(self, mask: Tensor, ir: Union[float, Tensor], rgb: Tuple[float, float, float],
              cls: int = -1, vis_texture: Union[float, Tensor] = 0.0) -> None:
        rgb_t = torch.tensor(rgb).view(3, 1, 1) + vis_texture
        self.ir = torch.where(mask, ir if torch.is_tensor(ir) else torch.tensor(ir), self.ir)
        self.vis = torch.where(mask, rgb_t.expand_as(self.vis), self.vis)
        if cls >= 0:
            self.label = torch.where(mask, torch.tensor(cls), self.label)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> Tensor:
        return ((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2 <= 1.0

    def box(self, top: float, left: float, bottom: float, right: float) -> Tensor:
        return (self.y >= top) & (self.y <= bottom) & (self.x >= left) & (self.x <= right)


def _background(p: _Painter, night: bool, horizon: float) -> None:
    sky = p.y < horizon
    light = 0.08 if night else 0.75
    tint = torch.tensor([0.9, 0.95, 1.1] if not night else [0.8, 0.85, 1.2]).view(3, 1, 1)
    texture = 0.08 * p.smooth_noise(24) + 0.04 * p.smooth_noise(96)
    ground = (light * 0.7 + texture * (0.4 if night else 1.0)).clamp(0, 1)
    sky_v = (light * (1.2 - 0.4 * p.y)).clamp(0, 1)
    base = torch.where(sky, sky_v, ground)
    p.vis = (base.unsqueeze(0) * tint).clamp(0, 1)
    # IR background: smooth, low contrast, the ground warmer than the sky.
    p.ir = torch.where(sky, 0.12 + 0.03 * p.smooth_noise(4), 0.3 + 0.05 * p.smooth_noise(6))

    # Buildings on the horizon: edges and window grids that IR barely shows.
    for _ in range(int(p.u(2, 5))):
        left = p.u(0.0, 0.85)
        right = min(1.0, left + p.u(0.08, 0.25))
        top = horizon - p.u(0.1, 0.3)
        mask = p.box(top, left, horizon, right)
        shade = p.u(0.3, 0.6) * (0.25 if night else 1.0)
        p.paint(mask, 0.2 + p.u(0, 0.05), (shade, shade * 0.95, shade * 0.9))
        period_y, period_x = p.u(0.02, 0.04), p.u(0.015, 0.03)
        windows = mask & (torch.remainder(p.y - top, period_y) < period_y * 0.5) & (
            torch.remainder(p.x - left, period_x) < period_x * 0.5)
        lit = 0.9 if night else shade * 0.6
        p.paint(windows, p.ir + 0.02, (lit, lit * 0.9, lit * 0.6))


def _road(p: _Painter, night: bool, horizon: float) -> None:
    # Road trapezoid with curbs (class "curve") along its edges and dashed centre marks.
    centre = p.u(0.4, 0.6)
    depth = ((p.y - horizon) / (1 - horizon)).clamp(min=0)
    half = 0.05 + 0.45 * depth
    road = (p.y > horizon) & ((p.x - centre).abs() < half)
    grey = 0.05 if night else 0.35
    p.paint(road, 0.34 + 0.02 * p.smooth_noise(8), (grey, grey, grey * 1.02),
            vis_texture=0.03 * p.smooth_noise(128))
    curb_w = 0.004 + 0.02 * depth
    curb = (p.y > horizon + 0.02) & (((p.x - centre).abs() - half).abs() < curb_w)
    c = 0.25 if night else 0.8
    p.paint(curb, 0.3, (c, c, c), CURVE)
    dash = (p.y > horizon + 0.05) & ((p.x - centre).abs() < 0.003 + 0.008 * depth) & (
        torch.remainder(p.y * 20, 1.0) < 0.5)
    m = 0.35 if night else 0.9
    p.paint(dash, 0.34, (m, m, m * 0.8))
    if p.u() < 0.4:  # speed bump across the road
        yb = p.u(horizon + 0.3 * (1 - horizon), 0.95)
        bump = road & ((p.y - yb).abs() < 0.01 + 0.01 * depth)
        stripes = torch.remainder(p.x * 30, 1.0) < 0.5
        p.paint(bump & stripes, 0.36, (0.9, 0.8, 0.1) if not night else (0.3, 0.25, 0.05), BUMP)
        p.paint(bump & ~stripes, 0.36, (0.15, 0.15, 0.15) if not night else (0.05, 0.05, 0.05), BUMP)
    if p.u() < 0.5:  # guard rail on one side
        side = 1 if p.u() < 0.5 else -1
        yr = horizon + p.u(0.05, 0.15)
        rail = (p.y > yr) & (p.y < yr + 0.02) & (side * (p.x - centre) > half + 0.02)
        posts = (p.y > yr) & (p.y < yr + 0.06) & (side * (p.x - centre) > half + 0.02) & (
            torch.remainder(p.x * 25, 1.0) < 0.15)
        r = 0.3 if night else 0.85
        p.paint(rail | posts, 0.22, (r, r, r * 1.05), GUARDRAIL)


def _objects(p: _Painter, night: bool, horizon: float, cfg: SceneConfig) -> None:
    objects = []
    for kind, count in (("person", cfg.max_people), ("car", cfg.max_cars), ("bike", cfg.max_bikes),
                        ("cone", cfg.max_cones)):
        for _ in range(int(p.u(0, count + 1))):
            objects.append((p.u(horizon + 0.1, 0.98), kind))
    for foot, kind in sorted(objects):  # far (small) first, near (large) painted on top
        scale = 0.15 + 0.85 * (foot - horizon) / (1 - horizon)
        cx = p.u(0.05, 0.95)
        dim = 0.25 if night else 1.0  # visible contrast drops at night
        if kind == "person":
            hgt, wid = 0.35 * scale, 0.06 * scale
            heat = 0.8 + p.u(0, 0.2)
            body = p.ellipse(foot - hgt * 0.45, cx, hgt * 0.42, wid)
            head = p.ellipse(foot - hgt * 0.92, cx, hgt * 0.09, wid * 0.6)
            cloth = p.u(0.2, 0.5) * dim
            p.paint(body | head, heat - 0.1 * (p.y - foot + hgt).abs() / hgt,
                    (cloth, cloth * p.u(0.8, 1.2), cloth * p.u(0.8, 1.2)), PERSON)
        elif kind == "car":
            hgt, wid = 0.18 * scale, 0.28 * scale
            parked = p.u() < 0.3
            heat = 0.35 + p.u(0, 0.05) if parked else 0.6 + p.u(0, 0.15)
            color = tuple(p.u(0.1, 0.8) * dim for _ in range(3))
            body = p.box(foot - hgt * 0.55, cx - wid / 2, foot - hgt * 0.1, cx + wid / 2)
            cabin = p.box(foot - hgt, cx - wid * 0.3, foot - hgt * 0.5, cx + wid * 0.3)
            cls = CAR_STOP if parked else CAR
            p.paint(body | cabin, heat, color, cls)
            glass = p.box(foot - hgt * 0.9, cx - wid * 0.25, foot - hgt * 0.6, cx + wid * 0.25)
            p.paint(glass, heat - 0.15, (0.2 * dim, 0.3 * dim, 0.4 * dim), cls)
            for wx in (cx - wid * 0.3, cx + wid * 0.3):
                wheel = p.ellipse(foot - hgt * 0.1, wx, hgt * 0.12, wid * 0.08)
                p.paint(wheel, heat + 0.15, (0.05, 0.05, 0.05), cls)
            if night and not parked:
                for lx in (cx - wid * 0.4, cx + wid * 0.4):
                    p.paint(p.ellipse(foot - hgt * 0.35, lx, hgt * 0.06, wid * 0.05), heat, (1.0, 1.0, 0.9), cls)
        elif kind == "bike":
            hgt, wid = 0.22 * scale, 0.16 * scale
            ring = torch.zeros_like(p.ir, dtype=torch.bool)
            for wx in (cx - wid * 0.35, cx + wid * 0.35):
                d = ((p.y - (foot - hgt * 0.2)) / (hgt * 0.2)) ** 2 + ((p.x - wx) / (wid * 0.15)) ** 2
                ring |= (d <= 1.0) & (d >= 0.5)
            frame = p.box(foot - hgt * 0.3, cx - wid * 0.35, foot - hgt * 0.25, cx + wid * 0.35)
            rider = p.ellipse(foot - hgt * 0.65, cx, hgt * 0.3, wid * 0.15)
            p.paint(ring | frame, 0.5, (0.15 * dim, 0.15 * dim, 0.15 * dim), BIKE)
            p.paint(rider, 0.85, (0.3 * dim, 0.25 * dim, 0.3 * dim), PERSON)
        else:  # traffic cone: vivid in VIS, cold in IR
            hgt = 0.08 * scale
            half_w = (foot - p.y).clamp(min=0) / hgt * 0.02 * scale
            cone = (p.y <= foot) & (p.y >= foot - hgt) & ((p.x - cx).abs() <= 0.2 * half_w + 0.003)
            p.paint(cone, 0.25, (1.0 * max(dim, 0.5), 0.45 * max(dim, 0.5), 0.05), COLOR_CONE)


def make_scene(height: int, width: int, generator: torch.Generator,
               night: bool | None = None, config: SceneConfig = SceneConfig()) -> Dict[str, Tensor]:
    """One scene: ``ir``, ``vis_y`` (1×H×W), ``vis_cbcr`` (2×H×W) in [0, 1], ``label`` (H×W int64)."""
    if height < 8 or width < 8:
        raise ValueError(f"synthetic scenes need at least 8×8 pixels, got {height}×{width}")
    p = _Painter(height, width, generator)
    if night is None:
        night = p.u() < config.night_prob
    horizon = p.u(0.3, 0.5)
    _background(p, night, horizon)
    _road(p, night, horizon)
    _objects(p, night, horizon, config)

    # IR is blurrier (lower optical resolution) and noisier than VIS.
    ir = F.avg_pool2d(p.ir[None, None], 3, stride=1, padding=1, count_include_pad=False)[0]
    ir = ir + config.ir_noise * torch.randn(ir.shape, generator=generator)
    vis_noise = config.vis_noise * (3.0 if night else 1.0)
    vis = p.vis + vis_noise * torch.randn(p.vis.shape, generator=generator)
    ycc = rgb_to_ycbcr(vis.clamp(0, 1))
    return {
        "ir": ir.clamp(0, 1).float(),
        "vis_y": ycc[:1].clamp(0, 1).float(),
        "vis_cbcr": ycc[1:].clamp(0, 1).float(),
        "label": p.label,
    }


class SyntheticScenes(Dataset):
    """A fixed-size, seeded dataset of synthetic scenes in the :class:`PairedImages` sample format.

    Scene ``i`` depends only on ``(seed, i)``. ``labels=False`` drops the ``label`` key
    (for label-free training).
    """

    def __init__(self, length: int, size: Union[int, Tuple[int, int]] = 128, seed: int = 0,
                 config: SceneConfig = SceneConfig(), labels: bool = True, transform=None) -> None:
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed = seed
        self.config = config
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        sample: Dict[str, object] = make_scene(*self.size, generator=g, config=self.config)
        sample["name"] = f"synthetic_{self.seed}_{index:05d}"
        if not self.labels:
            del sample["label"]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample
