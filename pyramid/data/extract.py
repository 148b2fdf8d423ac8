"""``extract``: videos -> mmaction2 / TSN rawframes (RGB JPEGs and TSN-encoded flow JPEGs).

For a video ``VIDEO_ROOT/Class/v_X.avi`` with N frames this writes
``FRAMES_ROOT/Class/v_X/img_00001..N.jpg`` and ``flow_x_/flow_y_00001..N-1.jpg`` (flow ``k``
is from frame ``k`` to ``k+1``, as denseflow writes it).

Resumable: each video is written into a hidden temporary folder that is renamed into place
only when complete, so a folder that exists is finished and is skipped on the next run, and
a killed run leaves no half-written folder behind (stale temporaries are removed).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


from .flow import FLOW_BOUND, FLOW_METHODS, encode_flow, make_flow_estimator
from .readers import FLOW_X_TMPL, FLOW_Y_TMPL, RGB_TMPL, report_skip, scan_videos, strip_ext
from .video import read_video

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"


@dataclass
class ExtractOptions:
    """Options of :func:`extract_video`.

    Attributes:
        flow: ``"tvl1"`` (default, TSN) or ``"farneback"`` (faster) or ``"none"`` (RGB only).
        short_side: resize so the short side is this many pixels (default 256), or None.
        size: ``(W, H)`` exact size (e.g. ``(340, 256)``, TSN); overrides ``short_side``.
        bound: flow clipping bound in pixels (default 20).
        jpeg_quality: JPEG quality for RGB and flow (default 95; denseflow's OpenCV default).
    """

    flow: str = "tvl1"
    short_side: Optional[int] = 256
    size: Optional[Tuple[int, int]] = None
    bound: float = FLOW_BOUND
    jpeg_quality: int = 95


def extract_video(video_path, out_dir, opts: Optional[ExtractOptions] = None) -> int:
    """Extract one video's frames and flow into ``out_dir`` (created atomically).

    Returns:
        the number of RGB frames written.

    Raises:
        VideoReadError: the video is missing, corrupt or empty.
    """
    import cv2

    opts = opts or ExtractOptions()
    if opts.flow not in FLOW_METHODS + ("none",):
        raise ValueError(f"flow must be one of {FLOW_METHODS + ('none',)}, got {opts.flow!r}")
    out_dir = Path(out_dir)
    frames = read_video(video_path, short_side=opts.short_side, size=opts.size)
    tmp = out_dir.parent / f"{TMP_PREFIX}{out_dir.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        q = [int(cv2.IMWRITE_JPEG_QUALITY), int(opts.jpeg_quality)]
        for i, f in enumerate(frames, 1):
            cv2.imwrite(str(tmp / RGB_TMPL.format(i)), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), q)
        if opts.flow != "none":
            estimate = make_flow_estimator(opts.flow)
            prev = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
            for i in range(1, len(frames)):
                nxt = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
                flow = estimate(prev, nxt)
                cv2.imwrite(str(tmp / FLOW_X_TMPL.format(i)), encode_flow(flow[..., 0], opts.bound), q)
                cv2.imwrite(str(tmp / FLOW_Y_TMPL.format(i)), encode_flow(flow[..., 1], opts.bound), q)
                prev = nxt
        # Rename is atomic on one filesystem: out_dir either does not exist or is complete.
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(frames)


def _worker_init():
    import cv2

    # One OpenCV thread per worker process: the parallelism is across videos.
    cv2.setNumThreads(1)


def _extract_job(job):
    rel, video_path, out_dir, opts = job
    t0 = time.time()
    try:
        n = extract_video(video_path, out_dir, opts)
        return rel, n, None, time.time() - t0
    except Exception as exc:  # noqa: BLE001 - one video's failure (cv2.error, ...) must not end the run
        return rel, 0, f"{type(exc).__name__}: {exc}", time.time() - t0


@dataclass
class ExtractSummary:
    """Outcome of :func:`extract_tree`: relative video paths done, skipped (already done), failed."""

    done: List[str]
    skipped: List[str]
    failed: List[Tuple[str, str]]


def extract_tree(video_root, frames_root, opts: Optional[ExtractOptions] = None, workers: int = 1,
                 videos: Optional[Sequence[str]] = None, progress: bool = True) -> ExtractSummary:
    """Extract every video under ``video_root`` into ``frames_root`` (same ``Class/`` folders).

    Args:
        video_root: folder with ``Class/video.ext`` files (UCF101 / HMDB51 layout).
        frames_root: output root; ``Class/video/`` folders (extension dropped).
        opts: see :class:`ExtractOptions` (default: TV-L1, short side 256).
        workers: number of worker processes (default 1 = in-process).
        videos: relative paths to extract (default: every video found under ``video_root``).
        progress: show a tqdm progress bar.

    Failures are reported (warning + log) and listed in the summary and in
    ``frames_root/extract_failures.txt``; they never stop the run.
    """
    from tqdm import tqdm

    opts = opts or ExtractOptions()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    video_root, frames_root = Path(video_root), Path(frames_root)
    rels = list(videos) if videos is not None else scan_videos(video_root)
    frames_root.mkdir(parents=True, exist_ok=True)
    # Temporaries left by a killed run are incomplete by construction.
    for stale in frames_root.glob(f"*/{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    summary = ExtractSummary([], [], [])
    jobs = []
    for rel in rels:
        out = frames_root / strip_ext(rel)
        if out.is_dir():
            summary.skipped.append(rel)
        else:
            jobs.append((rel, video_root / rel, out, opts))
    if jobs:
        bar = tqdm(total=len(jobs), desc=f"extract ({opts.flow})", unit="video", disable=not progress)
        if workers == 1:
            _worker_init()
            results = map(_extract_job, jobs)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)
            results = pool.imap_unordered(_extract_job, jobs)
        try:
            for rel, n, err, _ in results:
                if err is None:
                    summary.done.append(rel)
                else:
                    summary.failed.append((rel, err))
                    report_skip(rel, err)
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.close()
                pool.join()
    if summary.failed:
        with open(frames_root / "extract_failures.txt", "a") as fh:
            for rel, err in summary.failed:
                fh.write(f"{rel}\t{err}\n")
    return summary
