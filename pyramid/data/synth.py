"""``synth``: a small, seeded video dataset in the UCF101 layout whose classes need what the
spatiotemporal pyramid adds.

Classes come in pairs that share everything (background, object, colours) except:

* **long-range pairs** (``PullUp`` / ``RopeClimb``): a figure goes up and down with period
  ``2 * half_period`` frames (pull-ups) or climbs steadily (rope climb) at the same speed. Over
  a short snippet in the upward phase the two are identical; only motion over a longer span
  (several snippets at interval tau) tells them apart.
* **attention pairs** (``FrontCrawl`` / ``BreastStroke``): a textured "pool" drifts (the same
  in both) and a small swimmer crosses it; the swimmer's arm circles (crawl) or sweeps back
  and forth horizontally (breast stroke). The difference is a few pixels of a small moving
  object, which global pooling dilutes and motion-guided attention can find.

Pairs repeat with new backgrounds and colours for more classes (``PullUp2``, ...). Output::

    OUT_DIR/videos/<Class>/v_<Class>_gXX_cYY.avi
    OUT_DIR/splits/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt

Videos of one group share a background offset, and whole groups go to train or test (as in
UCF101, so no group leaks across a split).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .video import write_video

KINDS = (("PullUp", "RopeClimb"), ("FrontCrawl", "BreastStroke"))


def class_names(num_classes: int) -> List[str]:
    """Names of the first ``num_classes`` synthetic classes (pairs, then repeats with a suffix)."""
    names = []
    for i in range(num_classes):
        pair = i // 2
        base = KINDS[pair % 2][i % 2]
        rep = pair // 2
        names.append(base if rep == 0 else f"{base}{rep + 1}")
    return names


@dataclass
class SynthOptions:
    """Options of :func:`generate`.

    Attributes:
        classes: number of classes (default 8: two long-range pairs and two attention pairs).
        videos_per_class: videos per class (default 12).
        frames: frames per video (default 40).
        width, height: frame size (default 80 x 64; both even).
        seed: RNG seed (default 0); the same seed gives the same pixels.
        ext: ``"avi"`` (MPEG-4 part 2, like UCF101) or ``"mp4"``.
    """

    classes: int = 8
    videos_per_class: int = 12
    frames: int = 40
    width: int = 80
    height: int = 64
    seed: int = 0
    ext: str = "avi"


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Smooth random colour texture ``[h, w, 3]`` float around ``base`` (a tileable field)."""
    noise = rng.normal(0, 1, (h // 8 + 2, w // 8 + 2, 3))
    import cv2

    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base[None, None] + 28 * field, 0, 255)


def _blob(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, color) -> None:
    """Draw an anti-aliased filled ellipse in place (sub-pixel centre, so motion is smooth)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    a = np.clip((1.0 - d) * max(rx, ry), 0, 1)[..., None]
    img[:] = img * (1 - a) + np.asarray(color, dtype=np.float64) * a


def render_video(cls: int, group: int, clip: int, opts: SynthOptions) -> np.ndarray:
    """Frames ``uint8 [frames, height, width, 3]`` of one video (deterministic in its args)."""
    pair, member, kind = cls // 2, cls % 2, (cls // 2) % 2
    pair_rng = np.random.default_rng([opts.seed, 1000 + pair])  # shared by both classes of a pair
    # Per-video randomness (positions, speeds, phases, noise) is shared by the two classes of a
    # pair for the same (group, clip): such two videos differ only in the class-defining motion.
    vid_rng = np.random.default_rng([opts.seed, pair, group, clip])
    H, W, N = opts.height, opts.width, opts.frames
    bg_base = pair_rng.uniform(60, 200, 3)
    obj_color = pair_rng.uniform(0, 255, 3)
    # A texture larger than the frame: windows into it give per-group offsets and drift.
    tex = _texture(np.random.default_rng([opts.seed, 2000 + pair]), 2 * H, 2 * W, bg_base)
    gx, gy = (group * 7) % W, (group * 5) % H
    frames = np.empty((N, H, W, 3), dtype=np.uint8)
    speed = vid_rng.uniform(0.9, 1.1)
    if kind == 0:
        # Long-range pair. Triangle wave (pull-up) vs monotone climb, same speed.
        half = int(vid_rng.integers(10, 14))
        phase = int(vid_rng.integers(0, 2 * half))
        x0 = vid_rng.uniform(0.3, 0.7) * W
        travel = speed * (N - 1) if member == 1 else speed * half
        # Keep the whole path (head 10 px above the body centre) inside the frame.
        hi = H - 9.0
        lo = min(travel + 12.0, hi)
        y_start = vid_rng.uniform(lo, hi)
        for f in range(N):
            if member == 0:
                p = (f + phase) % (2 * half)
                up = p if p < half else 2 * half - p
                y = y_start - speed * up
            else:
                y = y_start - speed * f
            img = tex[gy:gy + H, gx:gx + W].copy()
            img[:, int(x0) - 1:int(x0) + 2] = img[:, int(x0) - 1:int(x0) + 2] * 0.5  # bar / rope
            _blob(img, x0, y, 5, 8, obj_color)
            _blob(img, x0, y - 10, 3.5, 3.5, obj_color * 0.7 + 60)
            frames[f] = np.clip(img + vid_rng.normal(0, 2.0, img.shape), 0, 255)
    else:
        # Attention pair. Pool texture drifts right at 1 px/frame; small swimmer crosses.
        y0 = vid_rng.uniform(0.3, 0.7) * H
        x_start = vid_rng.uniform(0.15, 0.35) * W
        period = vid_rng.uniform(7, 9)
        phase = vid_rng.uniform(0, 2 * math.pi)
        for f in range(N):
            off = (gx + f) % W
            img = tex[gy:gy + H, off:off + W].copy()
            sx = x_start + 0.6 * speed * f
            _blob(img, sx, y0, 5, 2.5, obj_color)
            a = 2 * math.pi * f / period + phase
            # The arm is a few pixels across: small next to the frame, but enough for a 1/8
            # resolution feature map to register its motion.
            if member == 0:   # crawl: the arm circles
                ax, ay = sx + 5 * math.cos(a), y0 + 5 * math.sin(a)
            else:             # breast stroke: the arm sweeps horizontally
                ax, ay = sx + 5 * math.cos(a), y0 - 1.0
            _blob(img, ax, ay, 2.5, 2.5, 255 - obj_color)
            frames[f] = np.clip(img + vid_rng.normal(0, 2.0, img.shape), 0, 255)
    return frames


def split_groups(num_groups: int, split: int) -> List[int]:
    """Test groups (1-based) of split 1..3: every third group, offset by the split."""
    if num_groups >= 3:
        return [g for g in range(1, num_groups + 1) if (g - 1) % 3 == split - 1]
    return [((split - 1) % num_groups) + 1]


def generate(out_dir, opts: Optional[SynthOptions] = None, progress: bool = True) -> Tuple[Path, Path]:
    """Write the synthetic dataset; returns ``(video_root, splits_dir)``.

    Raises:
        ValueError: fewer than 2 classes or videos per class, odd frame size, bad extension.
    """
    from tqdm import tqdm

    opts = opts or SynthOptions()
    if opts.classes < 2 or opts.videos_per_class < 2:
        raise ValueError(f"classes and videos_per_class must be >= 2, got {opts.classes}, "
                         f"{opts.videos_per_class}")
    if opts.width % 2 or opts.height % 2 or min(opts.width, opts.height) < 16:
        raise ValueError(f"width and height must be even and >= 16, got {opts.width}x{opts.height}")
    if opts.ext not in ("avi", "mp4"):
        raise ValueError(f"ext must be 'avi' or 'mp4', got {opts.ext!r}")
    out = Path(out_dir)
    video_root, splits_dir = out / "videos", out / "splits"
    splits_dir.mkdir(parents=True, exist_ok=True)
    names = class_names(opts.classes)
    per_group = 2 if opts.videos_per_class >= 4 else 1
    num_groups = math.ceil(opts.videos_per_class / per_group)
    (splits_dir / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    entries = []  # (rel, label, group)
    for c, name in enumerate(names):
        (video_root / name).mkdir(parents=True, exist_ok=True)
        for v in range(opts.videos_per_class):
            g, k = v // per_group + 1, v % per_group + 1
            entries.append((f"{name}/v_{name}_g{g:02d}_c{k:02d}.{opts.ext}", c, g))
    for rel, c, g in tqdm(entries, desc="synth", unit="video", disable=not progress):
        k = int(rel.rsplit("_c", 1)[1].split(".")[0])
        write_video(video_root / rel, render_video(c, g, k, opts),
                    codec="mpeg4" if opts.ext == "avi" else "libx264")
    for split in (1, 2, 3):
        test_g = set(split_groups(num_groups, split))
        (splits_dir / f"trainlist{split:02d}.txt").write_text(
            "".join(f"{rel} {c + 1}\n" for rel, c, g in entries if g not in test_g))
        (splits_dir / f"testlist{split:02d}.txt").write_text(
            "".join(f"{rel}\n" for rel, c, g in entries if g in test_g))
    return video_root, splits_dir
