"""Video decoding with PyAV."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

#: File extensions treated as videos when scanning a directory tree.
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


class VideoReadError(RuntimeError):
    """A video file is missing, corrupt, or holds no decodable frame."""


def resize_frame(frame: np.ndarray, short_side: Optional[int] = None,
                 size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Resize an ``[H, W, C]`` uint8 frame.

    Args:
        frame: image ``[H, W, C]``.
        short_side: if given, scale so that ``min(H, W) == short_side`` (aspect kept).
        size: if given, ``(width, height)`` to resize to exactly (TSN's 340x256); wins over
            ``short_side``.
    """
    import cv2

    h, w = frame.shape[:2]
    if size is not None:
        nw, nh = int(size[0]), int(size[1])
    elif short_side is not None:
        if h <= w:
            nh, nw = int(short_side), int(round(w * short_side / h))
        else:
            nw, nh = int(short_side), int(round(h * short_side / w))
    else:
        return frame
    if (nw, nh) == (w, h):
        return frame
    interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
    return cv2.resize(frame, (nw, nh), interpolation=interp)


def read_video(path, short_side: Optional[int] = None,
               size: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    """Decode every frame of a video to RGB.

    Args:
        path: video file.
        short_side / size: optional resize, see :func:`resize_frame`.

    Returns:
        list of uint8 ``[H, W, 3]`` RGB frames (at least one).

    Raises:
        VideoReadError: the file is missing, cannot be opened or decoded, or has no frames.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"video not found: {path}")
    frames: List[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(resize_frame(frame.to_ndarray(format="rgb24"), short_side, size))
    except VideoReadError:
        raise
    except Exception as exc:  # PyAV raises many error types (InvalidDataError, EOFError, ...)
        # Keep the frames decoded before a truncated tail only if there are any; a video that
        # fails at the first packet is unreadable.
        if not frames:
            raise VideoReadError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise VideoReadError(f"no decodable frames in {path}")
    return frames


def write_video(path, frames, fps: int = 25, codec: Optional[str] = None,
                bit_rate: int = 4_000_000) -> None:
    """Encode RGB uint8 frames ``[N, H, W, 3]`` (H, W even) to a video file.

    Args:
        codec: default ``mpeg4`` (readable everywhere, like UCF101's Xvid .avi files) for
            every container; pass ``libx264`` for H.264 .mp4.
        bit_rate: high by default so that small moving objects survive compression.
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    n, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"frames must be [N, H, W, 3] with even H and W, got {frames.shape}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = bit_rate
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
