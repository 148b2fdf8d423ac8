"""PyTorch dataset over rawframes: one RGB frame plus T flow snippets per sample."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from . import augment
from .flow import to_network
from .readers import FLOW_X_TMPL, FLOW_Y_TMPL, RGB_TMPL, VideoRecord, report_skip
from .sampling import TAU_RANGE, TEST_TAU, eval_clips, train_clip


def _imread(path, gray: bool) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_stack(record: VideoRecord, rgb_index: int, flow_indices: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3 + T*2L]``: RGB frame ``rgb_index`` then flow ``x1, y1, x2, y2, ...``.

    Indices are 0-based (files are 1-based).
    """
    cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    chans = [_imread(record.path / RGB_TMPL.format(rgb_index + 1), gray=False)]
    for i in flow_indices.reshape(-1).tolist():
        if i not in cache:  # snippets overlap when tau < L: read each file once
            cache[i] = (_imread(record.path / FLOW_X_TMPL.format(i + 1), True),
                        _imread(record.path / FLOW_Y_TMPL.format(i + 1), True))
        chans.extend(f[..., None] for f in cache[i])
    h, w = chans[0].shape[:2]
    for c in chans[1:]:
        if c.shape[:2] != (h, w):
            raise ValueError(f"{record.path}: flow frame size {c.shape[:2]} != RGB size {(h, w)}")
    return np.concatenate(chans, axis=2)


def stack_to_tensors(stacks: Sequence[np.ndarray], num_snippets: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """List of V uint8 ``[S, S, 3 + T*2L]`` -> ``rgb [V, 3, S, S]`` in [0, 1] and
    ``flow [V, T, 2L, S, S]`` in [-1, 1] (``(code - 128) / 128``)."""
    arr = np.stack(stacks)  # [V, H, W, C]
    v, h, w, c = arr.shape
    rgb = torch.from_numpy(np.ascontiguousarray(arr[..., :3].transpose(0, 3, 1, 2))).float().div_(255.0)
    flow = to_network(arr[..., 3:].transpose(0, 3, 1, 2))
    flow = torch.from_numpy(np.ascontiguousarray(flow)).reshape(v, num_snippets, -1, h, w)
    return rgb, flow


class PyramidClips(Dataset):
    """Samples for the spatiotemporal pyramid.

    Args:
        records: videos (see :mod:`pyramid.data.readers`).
        train: training sampling + augmentation if True, deterministic test views otherwise.
        num_snippets: T (default 3).
        snippet_length: L (default 10).
        segments: TSN segments in training (default 1; S > 1 gives S samples per video whose
            scores the trainer averages: TSN's average consensus).
        tau_range: training tau, drawn uniformly, inclusive (default (1, 10)).
        test_tau: tau at test time (default 5, an assumption).
        num_clips: test clips per video (default 25, TSN).
        test_crops: 10 (4 corners + centre and flips, TSN) or 1 (centre) per test clip.
        crop_size: network input side (default 224).
        scale_size: test-time short side before cropping (default 256).
        scales: multi-scale crop scales for training (default (1, .875, .75)).
        flip: random horizontal flip in training (default True).

    Returns (``__getitem__``):
        ``(rgb, flow, label)``: ``rgb Tensor[V, 3, S, S]`` in [0, 1], ``flow Tensor[V, T, 2L, S, S]``
        in [-1, 1], ``label`` int. In training V = ``segments``; in test V = ``num_clips *
        test_crops``.
    """

    def __init__(self, records: Sequence[VideoRecord], train: bool, num_snippets: int = 3,
                 snippet_length: int = 10, segments: int = 1, tau_range=TAU_RANGE,
                 test_tau: int = TEST_TAU, num_clips: int = 25, test_crops: int = 10,
                 crop_size: int = 224, scale_size: int = 256, scales=augment.FLOW_SCALES,
                 flip: bool = True):
        if test_crops not in (1, 10):
            raise ValueError(f"test_crops must be 1 or 10, got {test_crops}")
        if segments < 1 or num_clips < 1:
            raise ValueError(f"segments and num_clips must be >= 1, got {segments}, {num_clips}")
        self.records = list(records)
        self.train = train
        self.T, self.L = num_snippets, snippet_length
        self.segments, self.tau_range, self.test_tau = segments, tuple(tau_range), test_tau
        self.num_clips, self.test_crops = num_clips, test_crops
        self.crop_size, self.scale_size = crop_size, scale_size
        self.scales, self.flip = tuple(scales), flip

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        if not self.train:
            return self._load(index)  # test views must be of this video: errors propagate
        # Training: a video whose frames went missing or are corrupt is reported and replaced
        # by the next one, so a single bad file cannot stop a long run.
        for attempt in range(min(10, len(self.records))):
            i = (index + attempt) % len(self.records)
            try:
                return self._load(i)
            except (OSError, ValueError) as exc:
                report_skip(self.records[i].name, str(exc))
        raise OSError(f"10 consecutive videos from index {index} could not be read")

    def _load(self, index: int):
        rec = self.records[index]
        if self.train:
            # Seed from torch's RNG: it differs per DataLoader worker and per epoch, and in the
            # main process it advances, so augmentation never repeats across epochs.
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
            views = []
            for t, fidx in train_clip(rec.num_frames, rec.num_flow, rng, self.T, self.L,
                                      self.tau_range, self.segments):
                stack = load_stack(rec, t, fidx)
                h, w = stack.shape[:2]
                box = augment.multiscale_crop_params(w, h, rng, self.scales)
                stack = augment.crop_resize(stack, box, self.crop_size)
                if self.flip and rng.random() < 0.5:
                    stack = augment.flip_flow_codes(stack)
                views.append(stack)
        else:
            views = []
            for t, fidx in eval_clips(rec.num_frames, rec.num_flow, self.num_clips, self.T,
                                      self.L, self.test_tau):
                stack = augment.resize_short(load_stack(rec, t, fidx), self.scale_size)
                if self.test_crops == 10:
                    views.extend(augment.ten_crops(stack, self.crop_size))
                else:
                    views.append(augment.center_crop(stack, self.crop_size))
        rgb, flow = stack_to_tensors(views, self.T)
        return rgb, flow, rec.label
