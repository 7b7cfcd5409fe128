"""The colour and shade ramps of pageheat's terminal heatmaps: `top`, and `render` without
--png/--svg. Defined once, so that both draw heat alike. numpy only (``render`` imports this
without textual, the `top` extra).

A ramp maps a level in [0, 1] to one of ``LEVELS`` RGB colours (uint8 [..., 3]); few distinct
colours keep top's style cache small and are more than the eye tells apart.
"""

from __future__ import annotations

import numpy as np

LEVELS = 64  # colour steps per ramp
# Text-only (NO_COLOR) heat: one glyph per cell, from blank (idle) to '@' (hottest).
SHADES = " .:-=+*#%@"


def gradient(stops: list[tuple[float, tuple[int, int, int]]], n: int = LEVELS) -> np.ndarray:
    """uint8 [n, 3]: RGB interpolated linearly between ``stops`` (position in [0, 1], colour)."""
    x = np.linspace(0, 1, n)
    pos = [s[0] for s in stops]
    return np.stack([np.interp(x, pos, [s[1][k] for s in stops]) for k in range(3)], axis=1).astype(np.uint8)


def colours(ramp: np.ndarray, level: np.ndarray) -> np.ndarray:
    """uint8 [..., 3]: the ramp's colour nearest each float ``level`` (clipped to [0, 1])."""
    n = len(ramp)
    return ramp[np.clip((level * (n - 1)).round().astype(np.int64), 0, n - 1)]


def shade(level: np.ndarray) -> list[str]:
    """One SHADES glyph per float ``level`` (clipped to [0, 1]): the nearest step, the rule
    of ``colours``, so that text-only heat matches the colour heat."""
    n = len(SHADES)
    idx = np.clip((np.asarray(level, dtype=np.float64) * (n - 1)).round().astype(np.int64), 0, n - 1)
    return [SHADES[i] for i in idx.tolist()]


# Heat: idle resident pages are dark blue (apart from the near-black of nothing resident),
# the hottest white-yellow.
HEAT = gradient([(0.0, (30, 34, 70)), (0.4, (80, 24, 110)), (0.65, (180, 40, 80)),
                 (0.85, (245, 130, 20)), (1.0, (255, 250, 200))])
