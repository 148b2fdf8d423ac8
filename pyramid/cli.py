"""Command line: ``stpyramid`` / ``python -m pyramid`` with subcommands
``synth``, ``extract``, ``train``, ``eval`` and ``demo``.

Run ``python -m pyramid <subcommand> --help`` for every option.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional


def _size(text: str):
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 340x256, got {text!r}")


def _ints(text: str):
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 30,60, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stpyramid", description=(
        "Spatiotemporal Pyramid Network: synthetic data, frame/flow extraction, training, evaluation."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a small synthetic video dataset in the UCF101 layout")
    s.add_argument("out_dir", help="writes OUT_DIR/videos/<Class>/*.avi and OUT_DIR/splits/")
    s.add_argument("--classes", type=int, default=8, help="number of classes (default 8)")
    s.add_argument("--videos-per-class", type=int, default=12, help="videos per class (default 12)")
    s.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    s.add_argument("--size", type=_size, default=(80, 64), help="frame WxH (default 80x64)")
    s.add_argument("--ext", choices=("avi", "mp4"), default="avi", help="container (default avi)")
    s.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")

    e = sub.add_parser("extract", help="videos -> rawframes (RGB JPEGs + TSN-encoded optical flow)")
    e.add_argument("video_root", help="folder with <Class>/<video>.avi|mp4|...")
    e.add_argument("frames_root", help="output: FRAMES_ROOT/<Class>/<video>/img_00001.jpg, flow_x_..., flow_y_...")
    e.add_argument("--flow", choices=("tvl1", "farneback", "none"), default="tvl1",
                   help="optical flow: TV-L1 (default, TSN), Farneback (faster) or none (RGB only)")
    e.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--short-side", type=int, default=256, help="resize the short side to this (default 256)")
    g.add_argument("--size", type=_size, default=None, help="resize to exactly WxH instead (TSN: 340x256)")
    g.add_argument("--no-resize", action="store_true", help="keep the original frame size")
    e.add_argument("--bound", type=float, default=20.0, help="flow clipping bound in pixels (default 20)")
    e.add_argument("--splits", default=None, help="only extract the videos named in these split files")
    e.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train", help="train the pyramid (use torchrun for several processes)")
    _data_args(t)
    t.add_argument("--train-list", default=None, help="mmaction2 rawframes list instead of --splits")
    t.add_argument("--val-list", default=None, help="mmaction2 rawframes list for validation")
    t.add_argument("--num-classes", type=int, default=None, help="with file lists (default: max label + 1)")
    t.add_argument("--backbone", default="bninception", choices=("bninception", "resnet50", "vgg16", "tiny"))
    t.add_argument("--variant", default="D", choices=("A", "B", "C", "D"),
                   help="A two-stream, B +STCB fusion, C +multi-snippet, D +attention (default D)")
    t.add_argument("--epochs", type=int, default=80, help="(default 80)")
    t.add_argument("--batch-size", type=int, default=32, help="per process (default 32)")
    t.add_argument("--lr", type=float, default=0.001, help="SGD learning rate (default 0.001, TSN RGB)")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--lr-steps", type=_ints, default=(30, 60), help="epochs where lr /= 10 (default 30,60)")
    t.add_argument("--clip-grad", type=float, default=40.0, help="gradient norm clip, 0 = off (default 40)")
    t.add_argument("--dropout", type=float, default=0.5)
    t.add_argument("--no-partial-bn", action="store_true", help="train every BN layer")
    t.add_argument("--num-snippets", type=int, default=3, help="T flow snippets (default 3)")
    t.add_argument("--snippet-length", type=int, default=10, help="L flow frames per snippet (default 10)")
    t.add_argument("--segments", type=int, default=1, help="TSN segments, average consensus (default 1)")
    t.add_argument("--tau-max", type=int, default=10, help="training tau drawn from 1..TAU_MAX (default 10)")
    t.add_argument("--test-tau", type=int, default=5, help="tau at test time (default 5, assumption)")
    t.add_argument("--motion-dim", type=int, default=None, help="default 4096 (256 for tiny)")
    t.add_argument("--attention-dim", type=int, default=None, help="default 4096 (256 for tiny)")
    t.add_argument("--fusion-dim", type=int, default=None, help="default 8192 (512 for tiny)")
    t.add_argument("--crop-size", type=int, default=224)
    t.add_argument("--scale-size", type=int, default=256)
    t.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    t.add_argument("--val-clips", type=int, default=3, help="centre-crop clips per video when validating")
    t.add_argument("--max-steps-per-epoch", type=int, default=None)
    t.add_argument("--workers", type=int, default=4, help="DataLoader workers per process (default 4)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--rgb-checkpoint", default=None, help="pretrained RGB backbone weights")
    t.add_argument("--flow-checkpoint", default=None, help="pretrained flow backbone weights")
    t.add_argument("--out", required=True, help="run directory (checkpoints, metrics, plots)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")

    v = sub.add_parser("eval", help="top-1/top-5 and a confusion matrix on the test split")
    v.add_argument("--checkpoint", required=True)
    _data_args(v)
    v.add_argument("--test-list", default=None, help="mmaction2 rawframes list instead of --splits")
    v.add_argument("--clips", type=int, default=25, help="clips per video (default 25)")
    v.add_argument("--crops", type=int, default=10, choices=(1, 10), help="crops per clip (default 10)")
    v.add_argument("--test-tau", type=int, default=None)
    v.add_argument("--crop-size", type=int, default=None, help="default: as trained")
    v.add_argument("--scale-size", type=int, default=None, help="default: as trained")
    v.add_argument("--view-batch", type=int, default=50)
    v.add_argument("--out", default=None, help="default: the checkpoint's folder")

    d = sub.add_parser("demo", help="synthetic end-to-end run: synth, extract, train variants, table")
    d.add_argument("--out", default="demo_out", help="work folder (default demo_out)")
    d.add_argument("--variants", default="A,D", help="comma-separated (default A,D; A,B,C,D for all)")
    d.add_argument("--epochs", type=int, default=16, help="per variant (default 16)")
    d.add_argument("--classes", type=int, default=8)
    d.add_argument("--videos-per-class", type=int, default=12)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--seed", type=int, default=0)
    for sp in (t, v, d):
        sp.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda if available")
        sp.add_argument("--no-progress", action="store_true")
    return p


def _data_args(sp):
    sp.add_argument("--data", required=True, help="FRAMES_ROOT (rawframes, mmaction2 layout)")
    sp.add_argument("--splits", default=None, help="folder with UCF101 or HMDB51 split files")
    sp.add_argument("--split", type=int, default=1, help="split number (default 1)")


def cmd_synth(a) -> int:
    from .data.synth import SynthOptions, generate

    vr, sd = generate(a.out_dir, SynthOptions(classes=a.classes, videos_per_class=a.videos_per_class,
                                              frames=a.frames, width=a.size[0], height=a.size[1],
                                              seed=a.seed, ext=a.ext))
    print(f"videos: {vr}\nsplits: {sd}")
    return 0


def cmd_extract(a) -> int:
    from .data.extract import ExtractOptions, extract_tree

    videos = None
    if a.splits:
        videos = sorted({rel for sp in (1, 2, 3) for sub in ("train", "test")
                         for rel, _ in _try_split(a.splits, sp, sub)})
    opts = ExtractOptions(flow=a.flow, short_side=None if (a.no_resize or a.size) else a.short_side,
                          size=a.size, bound=a.bound)
    s = extract_tree(a.video_root, a.frames_root, opts, workers=a.workers, videos=videos,
                     progress=not a.no_progress)
    print(f"extracted {len(s.done)}, already done {len(s.skipped)}, failed {len(s.failed)}"
          + (f" (listed in {Path(a.frames_root) / 'extract_failures.txt'})" if s.failed else ""))
    return 0


def _try_split(splits, split, subset):
    from .data.readers import read_split

    try:
        return read_split(splits, split, subset)[0]
    except FileNotFoundError:
        return []


def train_config_from_args(a):
    from .train import TrainConfig

    return TrainConfig(
        data=a.data, out=a.out, splits=a.splits, split=a.split, train_list=a.train_list,
        val_list=a.val_list, num_classes=a.num_classes, backbone=a.backbone, variant=a.variant,
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, momentum=a.momentum,
        weight_decay=a.weight_decay, lr_steps=a.lr_steps, clip_grad=a.clip_grad, dropout=a.dropout,
        partial_bn=not a.no_partial_bn, num_snippets=a.num_snippets, snippet_length=a.snippet_length,
        segments=a.segments, tau_max=a.tau_max, test_tau=a.test_tau, motion_dim=a.motion_dim,
        attention_dim=a.attention_dim, fusion_dim=a.fusion_dim, crop_size=a.crop_size,
        scale_size=a.scale_size, val_every=a.val_every, val_clips=a.val_clips,
        max_steps_per_epoch=a.max_steps_per_epoch, workers=a.workers, seed=a.seed, device=a.device,
        rgb_checkpoint=a.rgb_checkpoint, flow_checkpoint=a.flow_checkpoint, resume=a.resume,
        progress=not a.no_progress)


def cmd_train(a) -> int:
    from .train import train

    res = train(train_config_from_args(a))
    if res["history"]:
        last = res["history"][-1]
        if int(__import__("os").environ.get("RANK", "0")) == 0:
            print(json.dumps({"epoch": last["epoch"], "train_loss": last["train_loss"],
                              "val_top1": last["val_top1"], "best_top1": res["best_top1"],
                              "out": a.out}))
    return 0


def cmd_eval(a) -> int:
    from .evaluate import EvalConfig, evaluate

    r = evaluate(EvalConfig(checkpoint=a.checkpoint, data=a.data, splits=a.splits, split=a.split,
                            test_list=a.test_list, num_clips=a.clips, crops=a.crops,
                            test_tau=a.test_tau, crop_size=a.crop_size, scale_size=a.scale_size,
                            view_batch=a.view_batch, device=a.device, out=a.out,
                            progress=not a.no_progress))
    if "confusion_png" in r:
        print(f"variant {r['variant']} ({r['backbone']}), {r['videos']} videos, "
              f"{r['num_clips']} clips x {r['crops']} crops")
        print(f"top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%  "
              f"mean class accuracy {100 * r['mean_class_accuracy']:.2f}%")
        print(f"confusion matrix: {r['confusion_png']}")
    return 0


#: What the paper's ablation (UCF101 split 1, BN-Inception) reports for each variant.
PAPER_ABLATION = {"A": ("two-stream baseline", 91.7), "B": ("+ two-stream STCB fusion", 93.2),
                  "C": ("+ multi-snippet fusion", 93.6), "D": ("+ attention (full pyramid)", 94.6)}


def run_demo(out="demo_out", variants=("A", "D"), epochs=16, classes=8, videos_per_class=12,
             workers=2, seed=0, device=None, progress=True) -> dict:
    """Synthetic end-to-end run: generate the data set, extract frames and Farneback flow,
    train each variant with the ``tiny`` backbone, evaluate it (3 clips x 10 crops) and print a
    table shaped like the paper's ablation. These are synthetic-data numbers, not UCF101.

    Writes ``out/ablation.json``, ``out/ablation.md``, ``out/ablation.png`` and each variant's
    run folder ``out/runs/<variant>/`` (curves, checkpoints, confusion matrix).
    """
    from .data.extract import ExtractOptions, extract_tree
    from .data.synth import SynthOptions, generate
    from .evaluate import EvalConfig, evaluate
    from .train import TrainConfig, train

    t_start = time.time()
    out = Path(out)
    for v in variants:
        if v not in PAPER_ABLATION:
            raise ValueError(f"variants must be among A, B, C, D, got {v!r}")
    synth = out / "synth"
    if not (synth / "splits" / "testlist01.txt").is_file():
        generate(synth, SynthOptions(classes=classes, videos_per_class=videos_per_class, seed=seed),
                 progress=progress)
    frames = out / "frames"
    extract_tree(synth / "videos", frames, ExtractOptions(flow="farneback", short_side=None),
                 workers=workers, progress=progress)
    t_data = time.time() - t_start
    rows = []
    for v in variants:
        t0 = time.time()
        run = out / "runs" / v
        cfg = TrainConfig(data=str(frames), splits=str(synth / "splits"), split=1, backbone="tiny",
                          variant=v, epochs=epochs, batch_size=8, lr=DEMO_LR,
                          lr_steps=(max(1, (2 * epochs) // 3),), partial_bn=False,
                          crop_size=56, scale_size=64, val_every=epochs, workers=min(workers, 2),
                          seed=seed, device=device, out=str(run),
                          progress=progress)  # trained afresh: the demo shows the current code
        train(cfg)
        r = evaluate(EvalConfig(checkpoint=str(run / "last.pt"), data=str(frames),
                                splits=str(synth / "splits"), split=1, num_clips=3, crops=10,
                                device=device, progress=progress))
        rows.append({"variant": v, "description": PAPER_ABLATION[v][0], "top1": r["top1"],
                     "top5": r["top5"], "paper_ucf101_top1": PAPER_ABLATION[v][1],
                     "train_eval_s": round(time.time() - t0, 1)})
    table = ["| variant | what it adds | synthetic top-1 | paper (UCF101 split 1) |",
             "|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['description']} | {100 * r['top1']:.1f}% | {r['paper_ucf101_top1']}% |"
              for r in rows]
    summary = {"rows": rows, "data_s": round(t_data, 1), "total_s": round(time.time() - t_start, 1),
               "note": "synthetic-data results (pyramid synth), tiny backbone; not UCF101 numbers"}
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text("Synthetic-data ablation (not UCF101):\n\n" + "\n".join(table) + "\n")
    _plot_ablation(rows, out / "ablation.png")
    print("\nAblation on the SYNTHETIC data set (tiny backbone; the paper column is UCF101):")
    print("\n".join(table))
    print(f"data {t_data:.0f}s, total {summary['total_s']:.0f}s; plots in {out}/ablation.png and "
          f"{out}/runs/<variant>/curves.png, confusion_split1.png")
    return summary


#: The tiny backbone trains from scratch on a few dozen clips: TSN's lr 0.001 and partial BN are
#: meant for ImageNet-initialised networks and barely move it in a dozen epochs.
DEMO_LR = 0.05


def _plot_ablation(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([r["variant"] for r in rows], [100 * r["top1"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(i, 100 * r["top1"] + 1, f"{100 * r['top1']:.1f}", ha="center")
    ax.set_ylim(0, 105), ax.set_ylabel("top-1 (%)"), ax.set_xlabel("variant")
    ax.set_title("synthetic data, tiny backbone")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_demo(a) -> int:
    run_demo(out=a.out, variants=[v.strip() for v in a.variants.split(",") if v.strip()],
             epochs=a.epochs, classes=a.classes, videos_per_class=a.videos_per_class,
             workers=a.workers, seed=a.seed, device=a.device, progress=not a.no_progress)
    return 0


COMMANDS = {"synth": cmd_synth, "extract": cmd_extract, "train": cmd_train, "eval": cmd_eval,
            "demo": cmd_demo}


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``stpyramid`` / ``python -m pyramid``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .data.readers import MissingVideoWarning

    with warnings.catch_warnings():
        # Skipped videos are already reported through logging; don't print each one twice.
        warnings.filterwarnings("ignore", category=MissingVideoWarning)
        return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
