"""Frame sampling as in the paper (slides): one RGB frame at time t and T flow snippets of L
consecutive flow frames at an interval tau around t.

Snippet ``k`` (``k = 0..T-1``) is centred on ``t + (k - (T-1)/2) * tau``: for T = 3 the
snippets sit at ``t - tau``, ``t``, ``t + tau``. Each snippet covers the L flow frames
``[c - L//2, c - L//2 + L)``. Snippets are clamped to the video's ends by shifting them inside
``[0, num_flow - L]`` (so a snippet stays L consecutive frames); a video shorter than L repeats
its last flow frame. All indices here are 0-based; files on disk are 1-based.

tau is drawn uniformly from ``1..10`` for training (the slides: "to model videos of varied
length") and fixed for testing (default 5: our assumption, the slides do not give it).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

TAU_RANGE = (1, 10)
TEST_TAU = 5


def snippet_indices(t: int, num_flow: int, num_snippets: int = 3, snippet_length: int = 10,
                    tau: int = 5) -> np.ndarray:
    """0-based flow frame indices of the T snippets around frame ``t``.

    Args:
        t: 0-based centre frame.
        num_flow: number of flow frames in the video (>= 1).
        num_snippets: T (default 3).
        snippet_length: L (default 10).
        tau: interval between snippet centres in frames (>= 1).

    Returns:
        int64 ``[T, L]`` indices in ``[0, num_flow)``.
    """
    if num_flow < 1:
        raise ValueError(f"num_flow must be >= 1, got {num_flow}")
    if tau < 1 or num_snippets < 1 or snippet_length < 1:
        raise ValueError(f"tau, num_snippets, snippet_length must be >= 1, got {tau}, "
                         f"{num_snippets}, {snippet_length}")
    T, L = num_snippets, snippet_length
    centres = t + (np.arange(T) - (T - 1) / 2.0) * tau
    starts = np.floor(centres).astype(np.int64) - L // 2
    starts = np.clip(starts, 0, max(num_flow - L, 0))
    idx = starts[:, None] + np.arange(L)[None, :]
    return np.minimum(idx, num_flow - 1)


def train_clip(num_frames: int, num_flow: int, rng: np.random.Generator, num_snippets: int = 3,
               snippet_length: int = 10, tau_range: Tuple[int, int] = TAU_RANGE,
               segments: int = 1) -> List[Tuple[int, np.ndarray]]:
    """Random training samples: ``segments`` pairs ``(rgb_index, flow_indices [T, L])``.

    With ``segments = S > 1`` (TSN), the video is cut into S equal segments and one ``t`` is
    drawn in each; with S = 1, ``t`` is uniform over the video. tau is drawn once per clip
    from ``tau_range`` (inclusive).
    """
    tau = int(rng.integers(tau_range[0], tau_range[1] + 1))
    out = []
    for s in range(segments):
        lo = (num_frames * s) // segments
        hi = max((num_frames * (s + 1)) // segments, lo + 1)
        t = int(rng.integers(lo, hi))
        out.append((min(t, num_frames - 1),
                    snippet_indices(min(t, num_flow - 1), num_flow, num_snippets, snippet_length, tau)))
    return out


def eval_clips(num_frames: int, num_flow: int, num_clips: int = 25, num_snippets: int = 3,
               snippet_length: int = 10, tau: int = TEST_TAU) -> List[Tuple[int, np.ndarray]]:
    """Deterministic test samples: ``num_clips`` centres evenly spaced (TSN: 25 clips)."""
    ts = ((np.arange(num_clips) + 0.5) * num_frames / num_clips).astype(np.int64)
    return [(int(t), snippet_indices(min(int(t), num_flow - 1), num_flow, num_snippets,
                                     snippet_length, tau)) for t in ts]
