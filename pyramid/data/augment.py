"""Augmentation shared by the RGB frame and every flow snippet of a sample.

A sample is one uint8 stack ``[H, W, C]``: the 3 RGB channels first, then the flow channels
``x1, y1, x2, y2, ...`` of all snippets. Geometric ops act on the whole stack, so the RGB
frame and all flow snippets always get the same crop and flip.

* Training (TSN ``GroupMultiScaleCrop``): a crop of side ``base * s`` with
  ``base = min(H, W)``, width and height scales from ``scales`` at most ``max_distort`` steps
  apart (scale jitter and aspect jitter), placed at one of 13 fixed offsets, resized to
  ``crop_size``; then a random horizontal flip.
* Test: resize to short side ``scale_size``, then 10 crops (4 corners + centre, and their
  flips) of ``crop_size``; or 1 centre crop.

A horizontal flip mirrors the images and negates flow x. In the stored 8-bit code that is
``255 - c``, which decodes to exactly ``-decode(c)`` (see :mod:`pyramid.data.flow`).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

#: Crop scales (TSN): RGB uses (1, .875, .75, .66), flow (1, .875, .75). One crop is shared by
#: both modalities, so we default to the flow set: a crop resized to the input size also
#: rescales the apparent motion, and TSN bounds that distortion for flow at 0.75.
RGB_SCALES = (1.0, 0.875, 0.75, 0.66)
FLOW_SCALES = (1.0, 0.875, 0.75)


def fixed_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int) -> List[Tuple[int, int]]:
    """The 13 fixed crop offsets ``(x, y)`` of TSN's ``more_fix_crop``.

    Order as in TSN: upper-left, upper-right, lower-left, lower-right, centre, then
    centre-left, centre-right, lower-centre, upper-centre, and the four quarter points.
    The offsets snap to quarters of the slack ``image - crop``, so all 13 fit in the image.
    """
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    return [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs),
            (0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
            (1 * ws, 1 * hs), (3 * ws, 1 * hs), (1 * ws, 3 * hs), (3 * ws, 3 * hs)]


def multiscale_crop_params(image_w: int, image_h: int, rng: np.random.Generator,
                           scales: Sequence[float] = FLOW_SCALES, max_distort: int = 1,
                           fix_crop: bool = True) -> Tuple[int, int, int, int]:
    """Random crop ``(x, y, w, h)`` as TSN's GroupMultiScaleCrop (scale and aspect jitter)."""
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
             if abs(i - j) <= max_distort]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    if fix_crop:
        offsets = fixed_offsets(image_w, image_h, cw, ch)
        x, y = offsets[int(rng.integers(len(offsets)))]
    else:
        x = int(rng.integers(0, image_w - cw + 1))
        y = int(rng.integers(0, image_h - ch + 1))
    return x, y, cw, ch


def crop_resize(stack: np.ndarray, box: Tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box = (x, y, w, h)`` from ``[H, W, C]`` and resize to ``[size, size, C]`` (bilinear)."""
    import cv2

    x, y, w, h = box
    crop = np.ascontiguousarray(stack[y:y + h, x:x + w])
    if (w, h) == (size, size):
        return crop
    out = np.empty((size, size, crop.shape[2]), dtype=crop.dtype)
    # cv2.resize handles at most 512 channels; chunk so any T * 2L works.
    for c0 in range(0, crop.shape[2], 512):
        r = cv2.resize(crop[..., c0:c0 + 512], (size, size), interpolation=cv2.INTER_LINEAR)
        out[..., c0:c0 + 512] = r.reshape(size, size, -1)
    return out


def resize_short(stack: np.ndarray, short_side: int) -> np.ndarray:
    """Resize ``[H, W, C]`` so that ``min(H, W) == short_side`` (no-op when already so)."""
    import cv2

    h, w = stack.shape[:2]
    if min(h, w) == short_side:
        return stack
    if h <= w:
        nh, nw = short_side, int(round(w * short_side / h))
    else:
        nw, nh = short_side, int(round(h * short_side / w))
    out = np.empty((nh, nw, stack.shape[2]), dtype=stack.dtype)
    for c0 in range(0, stack.shape[2], 512):
        r = cv2.resize(np.ascontiguousarray(stack[..., c0:c0 + 512]), (nw, nh), interpolation=cv2.INTER_LINEAR)
        out[..., c0:c0 + 512] = r.reshape(nh, nw, -1)
    return out


def flip_flow_codes(stack: np.ndarray, rgb_channels: int = 3) -> np.ndarray:
    """Horizontally flip a ``[H, W, C]`` uint8 stack and negate flow x.

    Channels ``rgb_channels, rgb_channels + 2, ...`` are flow x codes; ``255 - c`` is the code
    of ``-v`` (exactly, since the code is linear and symmetric about 127.5).
    """
    out = np.ascontiguousarray(stack[:, ::-1])
    out[..., rgb_channels::2] = 255 - out[..., rgb_channels::2]
    return out


def ten_crops(stack: np.ndarray, crop_size: int, rgb_channels: int = 3) -> List[np.ndarray]:
    """4 corners + centre of ``crop_size`` and their flips (flow x negated): 10 ``[S, S, C]``."""
    h, w = stack.shape[:2]
    if min(h, w) < crop_size:
        raise ValueError(f"crop_size={crop_size} is larger than the image {w}x{h}")
    boxes = [(0, 0), (w - crop_size, 0), (0, h - crop_size), (w - crop_size, h - crop_size),
             ((w - crop_size) // 2, (h - crop_size) // 2)]
    crops = [np.ascontiguousarray(stack[y:y + crop_size, x:x + crop_size]) for x, y in boxes]
    return crops + [flip_flow_codes(c, rgb_channels) for c in crops]


def center_crop(stack: np.ndarray, crop_size: int) -> np.ndarray:
    """Centre ``crop_size`` square of ``[H, W, C]``."""
    h, w = stack.shape[:2]
    if min(h, w) < crop_size:
        raise ValueError(f"crop_size={crop_size} is larger than the image {w}x{h}")
    y, x = (h - crop_size) // 2, (w - crop_size) // 2
    return np.ascontiguousarray(stack[y:y + crop_size, x:x + crop_size])
