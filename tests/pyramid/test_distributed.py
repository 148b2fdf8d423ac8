"""Two CPU processes through torchrun (gloo): DistributedDataParallel training end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("av")

from pyramid.data import ExtractOptions, extract_tree, read_ucf101_split
from pyramid.data.synth import SynthOptions, generate

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is needed")
def test_torchrun_two_cpu_processes(tmp_path):
    videos, splits = generate(tmp_path / "ucf", SynthOptions(classes=3, videos_per_class=6, frames=16,
                                                             width=64, height=48, seed=2), progress=False)
    extract_tree(videos, tmp_path / "frames", ExtractOptions(flow="farneback", short_side=None),
                 progress=False)
    num_train = len(read_ucf101_split(splits, 1, "train")[0])
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pyramid", "train", "--data", str(tmp_path / "frames"), "--splits", str(splits),
           "--split", "1", "--backbone", "tiny", "--variant", "D", "--epochs", "2",
           "--batch-size", "2", "--crop-size", "32", "--scale-size", "48", "--workers", "0",
           "--val-clips", "1", "--segments", "2", "--device", "cpu", "--no-progress", "--lr", "0.01",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    # Both ranks trained and DDP kept them identical: one checksum per rank, all equal.
    assert len(m["param_checksums"]) == 2 and len(set(m["param_checksums"])) == 1
    # The two ranks saw disjoint halves of the training set (DistributedSampler, drop_last).
    assert [h["train_videos"] for h in m["history"]] == [num_train // 2 * 2] * 2
    # Rank 0 alone logs and prints: one summary line, one log line per epoch.
    summaries = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["epoch"] == 2
    assert proc.stderr.count("epoch 2: ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt",
                                                     "metrics.csv", "metrics.json", "train.log"]
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 2 and not any(k.startswith("module.") for k in ck["model"])
