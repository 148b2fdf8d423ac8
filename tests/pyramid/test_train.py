"""End-to-end tests of ``python -m pyramid train`` / ``eval`` on generated rawframes (CPU)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("av")

from pyramid.cli import main
from pyramid.data import ExtractOptions, extract_tree, read_ucf101_split
from pyramid.data.synth import SynthOptions, generate
from pyramid.train import atomic_save

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--backbone", "tiny", "--variant", "D", "--batch-size", "4", "--crop-size", "32",
         "--scale-size", "48", "--workers", "0", "--no-progress", "--lr", "0.01", "--val-clips", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Rawframes of a 4-class synthetic set; split 1 also names a video that does not exist."""
    root = tmp_path_factory.mktemp("train_data")
    videos, splits = generate(root / "ucf", SynthOptions(classes=4, videos_per_class=4, frames=16,
                                                         width=64, height=48, seed=1), progress=False)
    extract_tree(videos, root / "frames", ExtractOptions(flow="farneback", short_side=None), progress=False)
    entries, _ = read_ucf101_split(splits, 1, "train")
    with open(splits / "trainlist01.txt", "a") as fh:
        fh.write("PullUp/v_PullUp_g07_c01.avi 1\n")
    return dict(frames=root / "frames", splits=splits, num_train=len(entries),
                num_test=len(read_ucf101_split(splits, 1, "test")[0]))


def _train(data, out, epochs, *extra):
    return main(["train", "--data", str(data["frames"]), "--splits", str(data["splits"]),
                 "--split", "1", "--epochs", str(epochs), "--out", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def run1(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run1"
    assert _train(data, out, 1) == 0
    return out


def test_train_one_epoch_writes_outputs(run1, data):
    for name in ("last.pt", "best.pt", "metrics.json", "metrics.csv", "curves.png", "train.log"):
        assert (run1 / name).is_file(), name
    assert (run1 / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(run1.glob(".*tmp*")), "temporary files left behind"
    # The split names a video that was never extracted: reported in the log, then skipped.
    assert "skipping PullUp/v_PullUp_g07_c01" in (run1 / "train.log").read_text()
    m = json.loads((run1 / "metrics.json").read_text())
    assert len(m["history"]) == 1 and m["history"][0]["epoch"] == 1
    # Every usable train video was seen once; the missing one was skipped, not counted.
    assert m["history"][0]["train_videos"] == data["num_train"]
    assert 0.0 <= m["history"][0]["val_top1"] <= 1.0 and np.isfinite(m["history"][0]["train_loss"])
    assert m["classes"] == ["PullUp", "RopeClimb", "FrontCrawl", "BreastStroke"]
    header = (run1 / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and "train_loss" in header and "val_top1" in header
    ck = torch.load(run1 / "last.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and ck["model_kwargs"]["variant"] == "D"


def test_resume_continues_exactly_like_an_uninterrupted_run(run1, data, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run1, resumed)
    _train(data, resumed, 2, "--resume")
    _train(data, tmp_path / "straight", 2)
    h_res = json.loads((resumed / "metrics.json").read_text())["history"]
    h_one = json.loads((run1 / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in h_res] == [1, 2] and h_res[0] == h_one[0]
    a = torch.load(resumed / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    one = torch.load(run1 / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(one[k], a["model"][k]) for k in one), "epoch 2 did not train"
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_refuses_a_different_model(run1, data, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(run1, out)
    with pytest.raises(ValueError, match="variant"):
        _train(data, out, 2, "--resume", "--variant", "A")


def test_resume_from_an_older_model_version_says_what_to_do(run1, data, tmp_path):
    """A checkpoint from the version whose attention score conv had a bias: its weights load
    (the bias is dropped), its optimizer state cannot, and the error says what to do."""
    out = tmp_path / "old"
    shutil.copytree(run1, out)
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    ck["model"]["attention.conv2.bias"] = torch.zeros(1)
    group = ck["optimizer"]["param_groups"][0]
    group["params"] = group["params"] + [max(group["params"]) + 1]
    torch.save(ck, out / "last.pt")
    with pytest.raises(ValueError, match="optimizer state in .* does not fit .* Start a new run"):
        _train(data, out, 2, "--resume")


def test_eval_reports_top1_top5_and_confusion(run1, data, capsys):
    assert main(["eval", "--checkpoint", str(run1 / "last.pt"), "--data", str(data["frames"]),
                 "--splits", str(data["splits"]), "--split", "1", "--clips", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed
    r = json.loads((run1 / "eval_split1.json").read_text())
    s = np.load(run1 / "scores_split1.npz")
    assert s["scores"].shape == (data["num_test"], 4) and r["videos"] == data["num_test"]
    # Independent recomputation from the saved video-level scores.
    assert r["top1"] == pytest.approx(float((s["scores"].argmax(1) == s["labels"]).mean()))
    assert r["top5"] == 1.0  # 4 classes: the label is always in the top 5
    cm = np.array(r["confusion"])
    assert cm.sum() == data["num_test"] and np.trace(cm) == round(r["top1"] * data["num_test"])
    assert f"{100 * r['top1']:.2f}%" in printed
    assert (run1 / "confusion_split1.png").read_bytes()[:8] == PNG_MAGIC


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"v": torch.arange(3)}, path)

    def dying_save(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["v"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_train_rejects_bad_arguments(data, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data["frames"]), "--out", str(tmp_path), "--variant", "E"])
    with pytest.raises(ValueError, match="--splits"):
        main(["train", "--data", str(data["frames"]), "--out", str(tmp_path / "x"), *SMALL])
