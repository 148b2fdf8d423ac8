"""Test-time evaluation: N clips x 10 crops per video, logits averaged (TSN protocol).

Prints top-1 / top-5 and writes, next to the checkpoint (or in ``out``):
``eval_split<N>.json`` (accuracies, per-class accuracy, confusion matrix),
``confusion_split<N>.png`` and ``scores_split<N>.npz`` (video-level scores and labels, for
two-stream or multi-model late fusion).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from . import distributed as dist_utils
from .data import PyramidClips, load_file_list_records, load_split_records
from .train import build_model, predict, topk_accuracy

log = logging.getLogger("pyramid.evaluate")


@dataclass
class EvalConfig:
    """Options of :func:`evaluate`.

    Attributes:
        checkpoint: a ``.pt`` written by ``train`` (holds the model kwargs and class names).
        data: FRAMES_ROOT.
        splits / split: official split files and number; or ``test_list`` (mmaction2 list).
        num_clips: clips per video (default 25, TSN).
        crops: 10 (corners + centre and flips, TSN) or 1 (centre).
        test_tau: tau at test time (default: the value the model was trained with, else 5).
        crop_size / scale_size: default: the training values stored in the checkpoint.
        view_batch: views per forward pass (memory knob; default 50).
        out: output folder (default: the checkpoint's folder).
    """

    checkpoint: str
    data: str
    splits: Optional[str] = None
    split: int = 1
    test_list: Optional[str] = None
    num_clips: int = 25
    crops: int = 10
    test_tau: Optional[int] = None
    crop_size: Optional[int] = None
    scale_size: Optional[int] = None
    view_batch: int = 50
    device: Optional[str] = None
    out: Optional[str] = None
    progress: bool = True


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path, title: str = "") -> None:
    """Row-normalised confusion matrix to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(4 + 0.35 * n, 40)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(n)
    ax.set_xticks(ticks), ax.set_yticks(ticks)
    fs = 8 if n <= 30 else 4
    ax.set_xticklabels(classes, rotation=90, fontsize=fs), ax.set_yticklabels(classes, fontsize=fs)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    fig.colorbar(im, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(cfg: EvalConfig) -> Dict:
    """Evaluate a checkpoint; returns the metrics dict (also written as JSON on rank 0)."""
    if cfg.crops not in (1, 10):
        raise ValueError(f"crops must be 1 or 10, got {cfg.crops}")
    ckpt_path = Path(cfg.checkpoint)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint={cfg.checkpoint!s} does not exist")
    info = dist_utils.init(cfg.device)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        mkw, classes, tcfg = ckpt["model_kwargs"], list(ckpt["classes"]), ckpt.get("config", {})
        if cfg.test_list:
            records = load_file_list_records(cfg.data, cfg.test_list)
        elif cfg.splits:
            records, split_classes = load_split_records(cfg.data, cfg.splits, cfg.split, "test")
            if list(split_classes) != classes:
                raise ValueError(f"splits={cfg.splits!s} has {len(split_classes)} classes that differ "
                                 f"from the {len(classes)} the checkpoint was trained on")
        else:
            raise ValueError("give --splits SPLITS_DIR or --test-list LIST")
        if not records:
            raise ValueError(f"no usable test videos in data={cfg.data!r} (see warnings above)")
        model = build_model(mkw)
        model.load_state_dict(ckpt["model"])
        model.to(info.device)
        ds = PyramidClips(records, False, num_snippets=mkw["num_snippets"],
                          snippet_length=mkw["snippet_length"],
                          test_tau=cfg.test_tau or tcfg.get("test_tau", 5),
                          num_clips=cfg.num_clips, test_crops=cfg.crops,
                          crop_size=cfg.crop_size or tcfg.get("crop_size", 224),
                          scale_size=cfg.scale_size or tcfg.get("scale_size", 256))
        scores, labels, kept = predict(model, ds, info, cfg.view_batch, cfg.progress, desc="eval")
        if not kept:
            raise ValueError(f"no test video of data={cfg.data!r} could be read")
        records = [records[i] for i in kept]
        pred = scores.argmax(1)
        cm = confusion_matrix(pred, labels, len(classes))
        per_class = {c: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None)
                     for i, c in enumerate(classes)}
        tag = f"split{cfg.split}" if not cfg.test_list else Path(cfg.test_list).stem
        result = {"checkpoint": str(ckpt_path), "variant": mkw["variant"], "backbone": mkw["backbone"],
                  "videos": int(len(labels)), "num_clips": cfg.num_clips, "crops": cfg.crops,
                  "top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5),
                  "mean_class_accuracy": float(np.mean([v for v in per_class.values() if v is not None])),
                  "per_class": per_class, "confusion": cm.tolist(), "classes": classes}
        if info.is_main:
            out = Path(cfg.out) if cfg.out else ckpt_path.parent
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f".eval_{tag}.json.tmp"
            tmp.write_text(json.dumps(result, indent=2))
            os.replace(tmp, out / f"eval_{tag}.json")
            np.savez(out / f"scores_{tag}.npz", scores=scores, labels=labels,
                     names=np.array([r.name for r in records]))
            plot_confusion(cm, classes, out / f"confusion_{tag}.png",
                           f"variant {mkw['variant']} ({mkw['backbone']}): top-1 {result['top1']:.3f}")
            result["confusion_png"] = str(out / f"confusion_{tag}.png")
        return result
    finally:
        dist_utils.cleanup()
