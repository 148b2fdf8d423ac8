"""Training loop for the spatiotemporal pyramid (one process, or many through ``torchrun``).

Defaults follow the TSN protocol the slides say they use (see ``paper-notes.md``): SGD with
momentum 0.9, weight decay 5e-4, lr 0.001, gradient-norm clipping at 40, lr divided by 10 at
the ``lr_steps`` epochs. Everything is a :class:`TrainConfig` field and a CLI option.

Outputs in ``out`` (rank 0 only): ``last.pt`` (every epoch) and ``best.pt`` (best validation
top-1), both written atomically; ``metrics.json`` (config and full history) and
``metrics.csv``; ``curves.png``; ``train.log``.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist_utils
from .data import PyramidClips, load_file_list_records, load_split_records
from .data.readers import report_skip

log = logging.getLogger("pyramid.train")

#: STCB dimensions when the config leaves them unset: the paper-scale assumption
#: (4096 / 4096 / 8192) for real backbones, small ones for the CPU-sized ``tiny`` backbone.
PAPER_DIMS = {"motion_dim": 4096, "attention_dim": 4096, "fusion_dim": 8192}
TINY_DIMS = {"motion_dim": 256, "attention_dim": 256, "fusion_dim": 512}


@dataclass
class TrainConfig:
    """Everything ``train`` needs. Defaults are TSN's unless said otherwise.

    Data: ``data`` is FRAMES_ROOT; classes and entries come from ``splits`` + ``split`` (UCF101
    or HMDB51 official files) or from mmaction2 lists ``train_list`` / ``val_list``.
    """

    data: str = ""
    out: str = "runs/pyramid"
    splits: Optional[str] = None
    split: int = 1
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    num_classes: Optional[int] = None      # required with file lists, else from classInd.txt
    backbone: str = "bninception"
    variant: str = "D"
    epochs: int = 80
    batch_size: int = 32
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: Tuple[int, ...] = (30, 60)
    clip_grad: float = 40.0
    dropout: float = 0.5
    partial_bn: bool = True
    num_snippets: int = 3
    snippet_length: int = 10
    segments: int = 1
    tau_max: int = 10
    test_tau: int = 5
    motion_dim: Optional[int] = None
    attention_dim: Optional[int] = None
    fusion_dim: Optional[int] = None
    crop_size: int = 224
    scale_size: int = 256
    val_every: int = 1
    val_clips: int = 3
    max_steps_per_epoch: Optional[int] = None   # for smoke tests and demos
    workers: int = 4
    seed: int = 0
    device: Optional[str] = None
    rgb_checkpoint: Optional[str] = None
    flow_checkpoint: Optional[str] = None
    resume: bool = False
    progress: bool = True

    def model_kwargs(self, num_classes: int) -> Dict:
        """Keyword arguments of ``SpatiotemporalPyramid`` (saved in every checkpoint)."""
        dims = TINY_DIMS if self.backbone == "tiny" else PAPER_DIMS
        return dict(num_classes=num_classes, backbone=self.backbone, variant=self.variant,
                    num_snippets=self.num_snippets, snippet_length=self.snippet_length,
                    motion_dim=self.motion_dim or dims["motion_dim"],
                    attention_dim=self.attention_dim or dims["attention_dim"],
                    fusion_dim=self.fusion_dim or dims["fusion_dim"],
                    dropout=self.dropout, partial_bn=self.partial_bn,
                    rgb_checkpoint=self.rgb_checkpoint, flow_checkpoint=self.flow_checkpoint)


# ----------------------------------------------------------------------------- helpers

def build_model(model_kwargs: Dict) -> nn.Module:
    """Instantiate :class:`pyramid.models.SpatiotemporalPyramid` from saved kwargs."""
    from pyramid.models import SpatiotemporalPyramid

    return SpatiotemporalPyramid(**model_kwargs)


def atomic_save(obj, path) -> None:
    """``torch.save`` that never leaves a broken file at ``path``.

    Writes a temporary file in the same directory, fsyncs it, then ``os.replace``s it over
    ``path`` (atomic on POSIX and Windows) and fsyncs the directory so the rename itself is
    durable. A kill at any point leaves either the old or the new checkpoint.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def param_checksum(model: nn.Module) -> str:
    """SHA-1 of every parameter and buffer: equal on all ranks iff DDP kept them in sync."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def forward_views(model: nn.Module, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Average consensus: ``rgb [B, V, 3, H, W]``, ``flow [B, V, T, 2L, H, W]`` -> logits ``[B, C]``
    averaged over the V views (TSN segments in training)."""
    b, v = rgb.shape[:2]
    logits = model(rgb.flatten(0, 1), flow.flatten(0, 1))
    return logits.view(b, v, -1).mean(1)


@torch.no_grad()
def predict(model: nn.Module, dataset: PyramidClips, info: dist_utils.DistInfo,
            view_batch: int = 64, progress: bool = False, desc: str = "eval"):
    """Video-level scores: logits averaged over every test view (clips x crops) of a video.

    Each process scores the videos ``rank::world_size``; the result is gathered on every rank.
    A video whose frames cannot be read is reported and left out.

    Returns:
        ``(scores float32 [N, C], labels int64 [N], kept)``: ``kept`` lists the dataset indices
        of the N scored videos, in dataset order.
    """
    from tqdm import tqdm

    model.eval()
    idx = list(range(info.rank, len(dataset), info.world_size))
    mine = []
    for i in tqdm(idx, desc=desc, unit="video", disable=not (progress and info.is_main),
                  leave=False):
        try:
            rgb, flow, label = dataset[i]
        except (OSError, ValueError) as exc:  # a frame went missing or is corrupt
            report_skip(dataset.records[i].name, str(exc))
            continue
        chunks = []
        for s in range(0, rgb.shape[0], view_batch):
            chunks.append(model(rgb[s:s + view_batch].to(info.device),
                                flow[s:s + view_batch].to(info.device)).float().cpu())
        mine.append((i, torch.cat(chunks).mean(0).numpy(), int(label)))
    gathered = [x for part in dist_utils.all_gather_objects(mine) for x in part]
    gathered.sort(key=lambda x: x[0])
    if not gathered:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64), []
    return (np.stack([g[1] for g in gathered]).astype(np.float32),
            np.array([g[2] for g in gathered], dtype=np.int64), [g[0] for g in gathered])


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k capped at #classes)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def plot_curves(history: List[Dict], path) -> None:
    """Loss and accuracy per epoch to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    v = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if v:
        a1.plot(*zip(*v), "s-", label="val")
    a1.set_xlabel("epoch"), a1.set_ylabel("cross-entropy"), a1.legend(), a1.grid(alpha=.3)
    a2.plot(ep, [h["train_top1"] for h in history], "o-", label="train top-1")
    v = [(h["epoch"], h["val_top1"]) for h in history if h.get("val_top1") is not None]
    if v:
        a2.plot(*zip(*v), "s-", label="val top-1")
    a2.set_xlabel("epoch"), a2.set_ylabel("accuracy"), a2.set_ylim(0, 1), a2.legend(), a2.grid(alpha=.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_metrics(out: Path, cfg: TrainConfig, history: List[Dict], extra: Dict) -> None:
    """``metrics.json`` (config + history + extra) and ``metrics.csv`` (history), atomically."""
    blob = {"config": dataclasses.asdict(cfg), "history": history, **extra}
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps(blob, indent=2))
    os.replace(tmp, out / "metrics.json")
    keys = sorted({k for h in history for k in h}, key=lambda k: (k != "epoch", k))
    tmp = out / ".metrics.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, out / "metrics.csv")


def _setup_logging(out: Path, is_main: bool) -> None:
    """Rank 0 logs every ``pyramid.*`` logger (training, skipped videos) to stderr and
    ``out/train.log``; other ranks only print warnings."""
    root = logging.getLogger("pyramid")
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.propagate = False  # own handlers below; avoid duplicates through the root logger
    for h in list(root.handlers):  # a previous run in this process logged to another folder
        root.removeHandler(h)
        h.close()
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(message)s" if is_main else "[rank %(rank)s] %(message)s"))
    if not is_main:
        rank = os.environ.get("RANK", "?")
        sh.addFilter(lambda record: setattr(record, "rank", rank) or True)
    root.addHandler(sh)
    if is_main:
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)


def load_records(cfg: TrainConfig, subset: str):
    """Records and class names for ``subset`` ('train' or 'test') of the configured data."""
    if cfg.train_list or cfg.val_list:
        path = cfg.train_list if subset == "train" else cfg.val_list
        if not path:
            return [], None
        recs = load_file_list_records(cfg.data, path)
        n = cfg.num_classes or (max((r.label for r in recs), default=-1) + 1)
        return recs, [str(i) for i in range(n)]
    if not cfg.splits:
        raise ValueError("give --splits SPLITS_DIR (UCF101/HMDB51 split files) or --train-list/--val-list")
    return load_split_records(cfg.data, cfg.splits, cfg.split, subset)


# ----------------------------------------------------------------------------- training

def train(cfg: TrainConfig) -> Dict:
    """Train (or resume) and return the final metrics dict (on every rank).

    Raises:
        ValueError: bad configuration (named argument and what was expected).
        FileNotFoundError: data or split files missing.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if cfg.variant not in ("A", "B", "C", "D"):
        raise ValueError(f"variant must be one of A, B, C, D, got {cfg.variant!r}")
    info = dist_utils.init(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        dist_utils.cleanup()


def _train(cfg: TrainConfig, info: dist_utils.DistInfo) -> Dict:
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from tqdm import tqdm

    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    _setup_logging(out, info.is_main)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts)

    train_recs, classes = load_records(cfg, "train")
    val_recs, _ = load_records(cfg, "test")
    if not train_recs:
        raise ValueError(f"no usable training videos in data={cfg.data!r} (see warnings above)")
    num_classes = len(classes)
    log.info("train: %d videos, val: %d videos, %d classes, world size %d on %s",
             len(train_recs), len(val_recs), num_classes, info.world_size, info.device)

    common = dict(num_snippets=cfg.num_snippets, snippet_length=cfg.snippet_length,
                  crop_size=cfg.crop_size, scale_size=cfg.scale_size)
    train_ds = PyramidClips(train_recs, True, segments=cfg.segments, tau_range=(1, cfg.tau_max), **common)
    val_ds = PyramidClips(val_recs, False, test_tau=cfg.test_tau, num_clips=cfg.val_clips,
                          test_crops=1, **common)
    # DistributedSampler also for one process: its shuffle depends only on (seed, epoch), so a
    # resumed run sees the same order as an uninterrupted one.
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=info.distributed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.workers, drop_last=False,
                        persistent_workers=cfg.workers > 0,
                        pin_memory=info.device.type == "cuda")

    mkw = cfg.model_kwargs(num_classes)
    model = build_model(mkw).to(info.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_steps), 0.1)
    start_epoch, best, history = 0, -1.0, []

    last = out / "last.pt"
    if cfg.resume:
        if last.is_file():
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            for k in ("backbone", "variant", "num_snippets", "snippet_length", "num_classes"):
                if ckpt["model_kwargs"][k] != mkw[k]:
                    raise ValueError(f"--resume: {k}={mkw[k]!r} but the checkpoint in {out} has "
                                     f"{ckpt['model_kwargs'][k]!r}")
            model.load_state_dict(ckpt["model"])
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as e:
                raise ValueError(f"--resume: the optimizer state in {last} does not fit this model's "
                                 f"trainable parameters (saved by another version of the model?): {e}. "
                                 "Start a new run in another --out folder; its weights can still be "
                                 "loaded for evaluation") from e
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, best, history = ckpt["epoch"], ckpt["best_top1"], ckpt["history"]
            torch.set_rng_state(ckpt["torch_rng"])
            log.info("resumed from %s at epoch %d", last, start_epoch)
        else:
            log.warning("--resume: no %s yet, starting from scratch", last)
        # Every rank must restart from the same epoch, or the collectives below would hang.
        starts = dist_utils.all_gather_objects(start_epoch)
        if len(set(starts)) != 1:
            raise ValueError(f"--resume: ranks found checkpoints at different epochs {starts}; "
                             f"out={cfg.out!s} must be on a filesystem every node shares")

    ddp_model = model
    if info.distributed:
        # Every variant uses all of its trainable parameters in forward (checked for A-D), so
        # DDP can skip the per-step search for unused ones.
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=False)

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        t0 = time.time()
        loss_sum = correct = seen = 0.0
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and info.is_main), leave=False)
        for step, (rgb, flow, y) in enumerate(loader):
            if step >= steps:
                break
            rgb, flow, y = rgb.to(info.device), flow.to(info.device), y.to(info.device)
            logits = forward_views(ddp_model, rgb, flow)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        dist_utils.broadcast_buffers(model)
        scheduler.step()
        loss_sum, correct, seen = dist_utils.all_reduce_sum([loss_sum, correct, seen], info.device)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
               "train_videos": int(seen), "time_s": round(time.time() - t0, 2),
               "val_loss": None, "val_top1": None, "val_top5": None}
        labels = []
        if val_recs and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            scores, labels, _ = predict(model, val_ds, info, progress=cfg.progress, desc="val")
        if val_recs and len(labels):
            row["val_loss"] = float(F.cross_entropy(torch.from_numpy(scores), torch.from_numpy(labels)))
            row["val_top1"] = topk_accuracy(scores, labels, 1)
            row["val_top5"] = topk_accuracy(scores, labels, 5)
        history.append(row)
        # "best" compares like with like: validation top-1 when there is a validation set
        # (epochs without validation never win), training top-1 only when there is none.
        metric = row["val_top1"] if val_recs else row["train_top1"]
        is_best = metric is not None and metric > best
        best = max(best, metric) if metric is not None else best
        log.info("epoch %d: %s", epoch + 1, " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"))
        if info.is_main:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_top1": best,
                    "history": history, "model_kwargs": mkw, "classes": classes,
                    "config": dataclasses.asdict(cfg), "torch_rng": torch.get_rng_state()}
            atomic_save(ckpt, last)
            if is_best:
                atomic_save(ckpt, out / "best.pt")
            write_metrics(out, cfg, history, {"classes": classes, "world_size": info.world_size})
            plot_curves(history, out / "curves.png")
        dist_utils.barrier()

    checksums = dist_utils.all_gather_objects(param_checksum(model))
    result = {"history": history, "best_top1": best, "classes": classes,
              "world_size": info.world_size, "param_checksums": checksums}
    if info.is_main:
        if len(set(checksums)) != 1:
            log.error("ranks disagree on the final weights: %s", checksums)
        write_metrics(out, cfg, history, {k: v for k, v in result.items() if k != "history"})
        log.info("done: %s (best top-1 %.4f)", out / "last.pt", best)
    # The ranks leave the process group together. Without this barrier rank 1 went on to tear its
    # group down while rank 0 still wrote its files, and once (in CI, not reproduced in 7 runs)
    # rank 0 then aborted in its own teardown: "terminate called without an active exception".
    dist_utils.barrier()
    return result
