"""Readers for the dataset layouts users already have.

* UCF101 official splits (``classInd.txt`` with 1-based ``1 ApplyEyeMakeup``;
  ``trainlist0N.txt`` lines ``Class/v_X.avi 1``; ``testlist0N.txt`` lines ``Class/v_X.avi``).
* HMDB51 official splits (``<action>_test_split<N>.txt`` lines ``video.avi 0|1|2``: 1 train,
  2 test, 0 unused).
* mmaction2 / TSN rawframes file lists (``frame_dir num_frames label``, 0-based labels).

Every reader returns :class:`VideoRecord` objects pointing at rawframes directories
``FRAMES_ROOT/Class/v_Name_gXX_cYY/`` (the video path with its extension dropped). An entry
whose frames are missing or unreadable is reported with a :class:`MissingVideoWarning` and
skipped, never raised, so one bad video cannot stop a run.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

RGB_TMPL = "img_{:05d}.jpg"
FLOW_X_TMPL = "flow_x_{:05d}.jpg"
FLOW_Y_TMPL = "flow_y_{:05d}.jpg"


class MissingVideoWarning(UserWarning):
    """A split entry was skipped because its video or frames are missing or unreadable."""


def report_skip(what: str, reason: str) -> None:
    """Warn (and log) that ``what`` is skipped because of ``reason``."""
    msg = f"skipping {what}: {reason}"
    log.warning(msg)
    warnings.warn(msg, MissingVideoWarning, stacklevel=3)


@dataclass
class VideoRecord:
    """One video of a split.

    Attributes:
        path: rawframes directory of the video.
        name: ``Class/v_Name_gXX_cYY`` (relative, no extension).
        label: 0-based class index.
        num_frames: number of RGB frames ``img_*.jpg`` (indices ``1..num_frames`` on disk).
        num_flow: number of flow frames ``flow_x_*.jpg`` (usually ``num_frames - 1``).
    """

    path: Path
    name: str
    label: int
    num_frames: int
    num_flow: int


# ----------------------------------------------------------------------------- split files

def read_class_index(splits_dir) -> List[str]:
    """Class names ordered by 0-based label, from UCF101's ``classInd.txt`` (1-based ids).

    Raises:
        FileNotFoundError: ``splits_dir/classInd.txt`` does not exist.
        ValueError: ids are not exactly ``1..N``.
    """
    path = Path(splits_dir) / "classInd.txt"
    if not path.is_file():
        raise FileNotFoundError(f"splits_dir={splits_dir!s}: expected {path.name} (UCF101 layout)")
    ids: Dict[int, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            idx, name = line.split()
            ids[int(idx)] = name
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise ValueError(f"{path}: class ids must be 1..N, got {sorted(ids)[:5]}...")
    return [ids[i] for i in range(1, len(ids) + 1)]


def detect_split_format(splits_dir) -> str:
    """``"ucf101"`` if ``classInd.txt`` exists, ``"hmdb51"`` if ``*_test_split1.txt`` files do."""
    d = Path(splits_dir)
    if (d / "classInd.txt").is_file():
        return "ucf101"
    if any(d.glob("*_test_split1.txt")):
        return "hmdb51"
    raise FileNotFoundError(
        f"splits_dir={splits_dir!s}: expected UCF101 classInd.txt/trainlist0N.txt or HMDB51 "
        "<action>_test_split<N>.txt files")


def read_ucf101_split(splits_dir, split: int, subset: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Entries of one UCF101 split.

    Args:
        splits_dir: folder with ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``.
        split: 1, 2 or 3.
        subset: ``"train"`` or ``"test"``.

    Returns:
        ``(entries, classes)``: entries are ``("Class/v_X.avi", label0)``; the test list has no
        labels, so they come from the class folder, as in the official evaluation.
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    classes = read_class_index(splits_dir)
    by_name = {c: i for i, c in enumerate(classes)}
    path = Path(splits_dir) / f"{subset}list{int(split):02d}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split={split}: {path} does not exist")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        rel = parts[0].replace("\\", "/")
        cls = rel.split("/")[0]
        if len(parts) > 1:
            label = int(parts[1]) - 1
        elif cls in by_name:
            label = by_name[cls]
        else:
            raise ValueError(f"{path}:{n}: class folder {cls!r} is not in classInd.txt")
        entries.append((rel, label))
    return entries, classes


def read_hmdb51_split(splits_dir, split: int, subset: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Entries of one HMDB51 split (``<action>_test_split<N>.txt``; 1 = train, 2 = test).

    Classes are the sorted action names; entries are ``("action/video.avi", label0)``.
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    files = sorted(Path(splits_dir).glob(f"*_test_split{int(split)}.txt"))
    if not files:
        raise FileNotFoundError(f"split={split}: no *_test_split{split}.txt in {splits_dir}")
    pat = re.compile(rf"^(.*)_test_split{int(split)}\.txt$")
    classes = sorted(pat.match(f.name).group(1) for f in files)
    want = "1" if subset == "train" else "2"
    entries = []
    for f in files:
        cls = pat.match(f.name).group(1)
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == want:
                entries.append((f"{cls}/{parts[0]}", classes.index(cls)))
    return entries, classes


def read_split(splits_dir, split: int, subset: str):
    """Dispatch to :func:`read_ucf101_split` or :func:`read_hmdb51_split` by layout."""
    fmt = detect_split_format(splits_dir)
    return (read_ucf101_split if fmt == "ucf101" else read_hmdb51_split)(splits_dir, split, subset)


def read_file_list(path) -> List[Tuple[str, int, int]]:
    """mmaction2 / TSN rawframes list: lines ``frame_dir num_frames label`` (0-based label)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"{path}:{n}: expected 'frame_dir num_frames label', got {line!r}")
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def write_file_list(path, records: Sequence[VideoRecord]) -> None:
    """Write records as an mmaction2 rawframes list (``frame_dir num_frames label``)."""
    Path(path).write_text("".join(f"{r.name} {r.num_frames} {r.label}\n" for r in records))


# ----------------------------------------------------------------------------- rawframes

def strip_ext(rel: str) -> str:
    """``Class/v_X.avi`` -> ``Class/v_X`` (the rawframes directory name)."""
    root, ext = os.path.splitext(rel)
    return root if ext else rel


def count_frames(frame_dir) -> Tuple[int, int]:
    """``(num_rgb, num_flow)`` for a rawframes directory, verifying the files are contiguous.

    Raises:
        FileNotFoundError: the directory is missing or has no ``img_00001.jpg``.
        ValueError: frame numbering has gaps or flow_x / flow_y counts differ.
    """
    d = Path(frame_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no frames directory {d}")
    names = os.listdir(d)
    n_rgb = sum(1 for n in names if n.startswith("img_"))
    n_fx = sum(1 for n in names if n.startswith("flow_x_"))
    n_fy = sum(1 for n in names if n.startswith("flow_y_"))
    if n_rgb == 0:
        raise FileNotFoundError(f"{d} holds no {RGB_TMPL.format(1)}")
    if n_fx != n_fy:
        raise ValueError(f"{d}: {n_fx} flow_x but {n_fy} flow_y frames")
    # Counting is cheap; checking the last names catches gaps from a half-copied folder.
    if not (d / RGB_TMPL.format(n_rgb)).is_file() or (n_fx and not (d / FLOW_X_TMPL.format(n_fx)).is_file()):
        raise ValueError(f"{d}: frame numbering is not contiguous from 1")
    return n_rgb, n_fx


def records_from_entries(frames_root, entries: Sequence[Tuple[str, int]], need_flow: bool = True,
                         num_frames_hint: Optional[Sequence[int]] = None) -> List[VideoRecord]:
    """Resolve split entries to rawframes records; report and skip the unusable ones.

    Args:
        frames_root: ``FRAMES_ROOT`` with ``Class/v_Name/`` folders.
        entries: ``(relative path with or without extension, label0)``.
        need_flow: skip videos without flow frames (the pyramid needs both modalities).
    """
    root = Path(frames_root)
    if not root.is_dir():
        raise FileNotFoundError(f"frames_root={frames_root!s} is not a directory")
    records = []
    for rel, label in entries:
        name = strip_ext(rel)
        try:
            n_rgb, n_flow = count_frames(root / name)
        except (OSError, ValueError) as exc:
            report_skip(name, str(exc))
            continue
        if need_flow and n_flow == 0:
            report_skip(name, "no optical flow frames (run `python -m pyramid extract`)")
            continue
        records.append(VideoRecord(root / name, name, int(label), n_rgb, n_flow))
    return records


def load_split_records(frames_root, splits_dir, split: int, subset: str,
                       need_flow: bool = True) -> Tuple[List[VideoRecord], List[str]]:
    """Records of one official split (UCF101 or HMDB51 layout), plus the class names."""
    entries, classes = read_split(splits_dir, split, subset)
    return records_from_entries(frames_root, entries, need_flow), classes


def load_file_list_records(frames_root, list_path, need_flow: bool = True) -> List[VideoRecord]:
    """Records of an mmaction2 rawframes file list; frame counts are re-read from disk."""
    entries = [(d, label) for d, _, label in read_file_list(list_path)]
    return records_from_entries(frames_root, entries, need_flow)


def scan_videos(video_root, extensions=None) -> List[str]:
    """Relative paths ``Class/video.ext`` of every video under ``video_root`` (sorted)."""
    from .video import VIDEO_EXTENSIONS

    exts = tuple(extensions or VIDEO_EXTENSIONS)
    root = Path(video_root)
    if not root.is_dir():
        raise FileNotFoundError(f"video_root={video_root!s} is not a directory")
    return sorted(str(p.relative_to(root)).replace(os.sep, "/")
                  for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
