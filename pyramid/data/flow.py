"""Optical flow computation and the TSN / mmaction2 JPEG encoding of flow.

Flow is stored as two 8-bit grayscale JPEGs per frame pair (``flow_x_00001.jpg``,
``flow_y_00001.jpg``), exactly as TSN's ``denseflow`` does: each component is clipped to
``[-bound, bound]`` (``bound = 20`` pixels) and mapped linearly to ``0..255`` with
``round(255 * (v + bound) / (2 * bound))``.

The network consumes ``(stored - 128) / 128`` in ``[-1, 1]`` (see :func:`to_network`), the
convention of TSN's flow mean of 128.
"""
from __future__ import annotations

import numpy as np

#: Default clipping bound of the flow in pixels (TSN / denseflow).
FLOW_BOUND = 20.0
#: Supported flow algorithms for :func:`compute_flow`.
FLOW_METHODS = ("tvl1", "farneback")


def encode_flow(v: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Map flow values in pixels to the stored 8-bit code.

    Args:
        v: float array of any shape (one flow component, in pixels).
        bound: clipping bound in pixels (default 20).

    Returns:
        uint8 array of the same shape: ``round(255 * (clip(v, -bound, bound) + bound) / (2 bound))``.
    """
    if bound <= 0:
        raise ValueError(f"bound must be > 0, got {bound}")
    v = np.clip(np.asarray(v, dtype=np.float64), -bound, bound)
    # np.rint rounds half to even; codes exactly on .5 are measure-zero for real flow.
    return np.rint(255.0 * (v + bound) / (2.0 * bound)).astype(np.uint8)


def decode_flow(code: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of :func:`encode_flow` (up to quantisation): uint8 code -> flow in pixels.

    ``decode(encode(v))`` is within ``bound / 255`` pixels of ``clip(v)``; ``decode(255 - c)
    == -decode(c)`` exactly, which is why a horizontal flip can negate flow x in the stored
    domain (see :func:`pyramid.data.augment.flip_flow_codes`).
    """
    return np.asarray(code, dtype=np.float64) * (2.0 * bound / 255.0) - bound


def to_network(code: np.ndarray) -> np.ndarray:
    """Stored code (uint8, any shape) -> float32 network input ``(code - 128) / 128``."""
    return (np.asarray(code, dtype=np.float32) - 128.0) / 128.0


def make_flow_estimator(method: str = "tvl1"):
    """Return ``f(prev_gray, next_gray) -> float32 Tensor-like [H, W, 2]`` (dx, dy in pixels).

    Args:
        method: ``"tvl1"`` (OpenCV contrib ``DualTVL1OpticalFlow``, TSN's default; slow) or
            ``"farneback"`` (``cv2.calcOpticalFlowFarneback``; roughly 20-50x faster, less
            accurate on thin structures).
    """
    import cv2

    if method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise RuntimeError(
                "method='tvl1' needs OpenCV contrib (cv2.optflow); install "
                "opencv-contrib-python-headless or use method='farneback'")
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()

        def estimate(prev, nxt):
            return tvl1.calc(prev, nxt, None)
    elif method == "farneback":
        def estimate(prev, nxt):
            # Parameters from the OpenCV tutorial; 3 levels suffice for <= 20 px motions.
            return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    else:
        raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")
    return estimate


def compute_flow(prev_gray: np.ndarray, next_gray: np.ndarray, method: str = "tvl1") -> np.ndarray:
    """Dense flow from ``prev_gray`` to ``next_gray`` (uint8 ``[H, W]``) -> float32 ``[H, W, 2]``."""
    return make_flow_estimator(method)(prev_gray, next_gray)
