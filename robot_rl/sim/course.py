"""Procedural closed race courses for the RC car: a smooth centerline, walls on both sides, checkpoints.

A course is a perturbed superellipse in polar form, r(t) = superellipse(t) * (1 + sum_k A_k cos(k t + phi_k)),
resampled to equal arc length. Everything random is drawn from `np.random.default_rng(seed)`, so the
same seed always gives the same course. Candidates that are too tight for the car (radius of
curvature below `min_radius`) or whose sides come too close to each other are redrawn from the
same generator, which keeps generation deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACING = 0.1  # m between centerline points: fine enough for walls, checkpoints and the expert
WALL_SEGMENT = 0.3  # m, approximate length of one wall box along the track
WALL_HALF_THICKNESS = 0.04
WALL_HALF_HEIGHT = 0.125


@dataclass(frozen=True)
class Course:
    """A closed track. `centerline[i]` is at arc length i * spacing; point 0 is the start line."""

    seed: int
    width: float
    centerline: np.ndarray  # (N, 2) metres, counter-clockwise or clockwise, not repeating point 0
    heading: np.ndarray  # (N,) rad, direction of travel at each point
    curvature: np.ndarray  # (N,) 1/m, signed (positive turns left)
    spacing: float

    @property
    def length(self) -> float:
        return len(self.centerline) * self.spacing

    @property
    def start_pose(self) -> tuple[float, float, float]:
        x, y = self.centerline[0]
        return float(x), float(y), float(self.heading[0])

    def walls(self) -> list[np.ndarray]:
        """The two walls as closed polylines (N + 1, 2), for plots."""
        normal = np.stack([-np.sin(self.heading), np.cos(self.heading)], axis=1)
        walls = [self.centerline + side * self.width / 2 * normal for side in (1, -1)]
        return [np.vstack([wall, wall[:1]]) for wall in walls]

    def point_at(self, s: np.ndarray | float) -> np.ndarray:
        """Centerline position(s) at arc length `s` (wrapped around the lap), linearly interpolated."""
        s = np.asarray(s, np.float64) % self.length
        u = s / self.spacing
        i = np.floor(u).astype(int) % len(self.centerline)
        j = (i + 1) % len(self.centerline)
        f = (u - np.floor(u))[..., None]
        return (1.0 - f) * self.centerline[i] + f * self.centerline[j]

    def checkpoints(self, n: int) -> np.ndarray:
        """`n` points evenly spaced along the lap; the last one is the start/finish line."""
        if n < 2:
            raise ValueError(f"a lap needs at least 2 checkpoints, got {n}")
        return self.point_at(self.length * np.arange(1, n + 1) / n)

    def nearest(self, xy: np.ndarray) -> int:
        """Index of the centerline point nearest to `xy`. Global search: the sides of a course never
        come closer than a track width (checked at generation), so this cannot jump across."""
        return int(np.argmin(np.sum((self.centerline - np.asarray(xy)[:2]) ** 2, axis=1)))

    def lateral_offset(self, xy: np.ndarray) -> float:
        """Signed distance from the centerline (positive left of the direction of travel)."""
        i = self.nearest(xy)
        h = self.heading[i]
        d = np.asarray(xy, np.float64)[:2] - self.centerline[i]
        return float(-np.sin(h) * d[0] + np.cos(h) * d[1])

    def wall_boxes(self) -> list[tuple[float, float, float, float]]:
        """(x, y, yaw, half_length) of the wall boxes along both sides, inner faces at +-width/2."""
        normal = np.stack([-np.sin(self.heading), np.cos(self.heading)], axis=1)
        offset = self.width / 2 + WALL_HALF_THICKNESS
        stride = max(1, int(round(WALL_SEGMENT / self.spacing)))
        boxes = []
        for side in (1.0, -1.0):
            line = self.centerline + side * offset * normal
            idx = np.arange(0, len(line), stride)
            a, b = line[idx], line[np.roll(idx, -1)]
            mid, delta = (a + b) / 2, b - a
            half = np.linalg.norm(delta, axis=1) / 2 + WALL_HALF_THICKNESS  # overlap: no gaps at bends
            yaw = np.arctan2(delta[:, 1], delta[:, 0])
            boxes += [(float(m[0]), float(m[1]), float(w), float(h)) for m, w, h in zip(mid, yaw, half)]
        return boxes

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box around the course including its walls."""
        margin = self.width / 2 + 2 * WALL_HALF_THICKNESS
        return self.centerline.min(axis=0) - margin, self.centerline.max(axis=0) + margin


def generate_course(
    seed: int,
    width: float = 1.2,
    min_radius: float | None = None,
    spacing: float = SPACING,
    max_tries: int = 200,
) -> Course:
    """Draw a course from `seed`. Raises ValueError if no valid course was found (bad parameters).

    `min_radius` (smallest radius of curvature of the centerline) defaults to 1.5 m or, for wide
    tracks, enough for the inside wall of every bend to be a 0.9 m radius, about the car's turning circle.
    """
    if not 0.6 <= width <= 2.0:
        raise ValueError(f"track width must be within [0.6, 2.0] m, got {width}")
    if min_radius is None:
        min_radius = max(1.5, width / 2 + 0.9)
    if min_radius <= width / 2:
        raise ValueError(f"min_radius ({min_radius}) must exceed half the track width ({width / 2})")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        centerline = _candidate(rng, spacing)
        heading, curvature = _heading_curvature(centerline, spacing)
        if np.abs(curvature).max() * min_radius > 1.0:
            continue
        if not _sides_clear(centerline, spacing, clearance=width + 4 * WALL_HALF_THICKNESS + 0.5):
            continue
        # A random start point and direction of travel, so courses differ in where the lap begins
        # and in whether it is driven mostly in left or right turns.
        if rng.random() < 0.5:
            centerline = centerline[::-1]
        centerline = np.roll(centerline, -int(rng.integers(len(centerline))), axis=0)
        heading, curvature = _heading_curvature(centerline, spacing)
        return Course(int(seed), float(width), centerline, heading, curvature, spacing)
    raise ValueError(f"no course with min_radius {min_radius} m and width {width} m found for seed {seed}")


def _candidate(rng: np.random.Generator, spacing: float) -> np.ndarray:
    """One random closed curve, resampled to points `spacing` apart along its length."""
    a, b = rng.uniform(3.0, 4.5), rng.uniform(2.0, 3.0)  # superellipse semi-axes, m
    p = rng.uniform(2.0, 3.5)  # 2: ellipse; larger: boxier, with straighter sides and tighter corners
    t = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    # Polar form of |x/a|^p + |y/b|^p = 1: smooth in t for p >= 2, unlike the usual |cos t|^(2/p) one.
    r = (np.abs(np.cos(t) / a) ** p + np.abs(np.sin(t) / b) ** p) ** (-1.0 / p)
    for k in (2, 3, 4):
        r *= 1.0 + rng.uniform(0.0, 0.3 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    dense = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    seg = np.linalg.norm(np.roll(dense, -1, axis=0) - dense, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])  # arc length at each dense point, closing the loop
    n = int(round(s[-1] / spacing))
    s_new = np.arange(n) * (s[-1] / n)  # the exact spacing differs from `spacing` by < 1 part in n
    closed = np.vstack([dense, dense[:1]])
    x = np.interp(s_new, s, closed[:, 0])
    y = np.interp(s_new, s, closed[:, 1])
    out = np.stack([x, y], axis=1)
    # Rescale so the point spacing is exactly `spacing` (changes the size by < 0.5 / n).
    return out * (n * spacing / s[-1])


def _heading_curvature(line: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Heading by central differences; curvature as its change per metre, lightly smoothed."""
    d = np.roll(line, -1, axis=0) - np.roll(line, 1, axis=0)
    heading = np.arctan2(d[:, 1], d[:, 0])
    dh = np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1))))
    curvature = dh / (2 * spacing)
    kernel = np.ones(5) / 5  # 0.5 m moving average against the jitter of the linear resampling
    padded = np.concatenate([curvature[-2:], curvature, curvature[:2]])
    return heading, np.convolve(padded, kernel, mode="valid")


def _sides_clear(line: np.ndarray, spacing: float, clearance: float) -> bool:
    """True if points more than a few track widths apart along the lap are `clearance` apart in space."""
    n = len(line)
    i = np.arange(n)
    along = np.abs(i[:, None] - i[None, :])
    along = np.minimum(along, n - along) * spacing
    dist = np.linalg.norm(line[:, None] - line[None, :], axis=2)
    return bool(np.all(dist[along > 2.5 * clearance] > clearance))
