"""Tests of pyramid.data: readers, extraction, flow encoding, sampling, augmentation, synth."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("av")

from pyramid.data import (ExtractOptions, MissingVideoWarning, PyramidClips, VideoReadError,
                          decode_flow, encode_flow, extract_tree, fixed_offsets, flip_flow_codes,
                          load_file_list_records, load_split_records, multiscale_crop_params,
                          read_file_list, read_hmdb51_split, read_ucf101_split, read_video,
                          snippet_indices, ten_crops, train_clip, write_file_list)
from pyramid.data.flow import compute_flow, to_network
from pyramid.data.sampling import eval_clips
from pyramid.data.synth import SynthOptions, class_names, generate, render_video

SYN = SynthOptions(classes=4, videos_per_class=4, frames=16, width=64, height=48, seed=3)


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory):
    """A generated UCF101-layout tree plus its extracted rawframes, with one corrupt video."""
    root = tmp_path_factory.mktemp("synth")
    video_root, splits = generate(root / "ucf", SYN, progress=False)
    bad = video_root / "PullUp" / "v_PullUp_g09_c01.avi"
    bad.write_bytes(b"\x00RIFF not a video" * 64)
    frames = root / "frames"
    with pytest.warns(MissingVideoWarning, match="v_PullUp_g09_c01"):
        summary = extract_tree(video_root, frames, ExtractOptions(flow="farneback", short_side=None),
                               workers=2, progress=False)
    return dict(root=root, videos=video_root, splits=splits, frames=frames, summary=summary, bad=bad)


# ----------------------------------------------------------------------------- synth + video

def test_synth_writes_ucf101_layout(synth_tree):
    splits, videos = synth_tree["splits"], synth_tree["videos"]
    names = class_names(4)
    assert names == ["PullUp", "RopeClimb", "FrontCrawl", "BreastStroke"]
    assert (splits / "classInd.txt").read_text().split() == ["1", "PullUp", "2", "RopeClimb",
                                                            "3", "FrontCrawl", "4", "BreastStroke"]
    for split in (1, 2, 3):
        train, classes = read_ucf101_split(splits, split, "train")
        test, _ = read_ucf101_split(splits, split, "test")
        assert classes == names
        assert len(train) + len(test) == 4 * 4 and train and test
        group = lambda rel: rel.split("_g")[1][:2]
        # Whole groups go to one side, as in UCF101.
        assert not {(r.split("/")[0], group(r)) for r, _ in train} & {(r.split("/")[0], group(r)) for r, _ in test}
        for rel, label in train + test:
            assert (videos / rel).is_file()
            assert names[label] == rel.split("/")[0]
    frames = read_video(videos / "RopeClimb" / "v_RopeClimb_g01_c01.avi")
    assert len(frames) == SYN.frames and frames[0].shape == (SYN.height, SYN.width, 3)
    small = read_video(videos / "RopeClimb" / "v_RopeClimb_g01_c01.avi", short_side=24)
    assert small[0].shape == (24, 32, 3)


def test_synth_is_seeded_and_pairs_differ_only_in_motion():
    a = render_video(0, 1, 1, SYN)
    assert np.array_equal(a, render_video(0, 1, 1, SYN))
    assert not np.array_equal(a, render_video(0, 1, 1, SynthOptions(**{**SYN.__dict__, "seed": 4})))
    # Attention pair: videos with the same (group, clip) share background, swimmer path and
    # noise; only the arm (radius 2.5 px, orbit 5 px) differs, so every frame's differing
    # pixels fit in a small box.
    crawl, breast = render_video(2, 1, 1, SYN), render_video(3, 1, 1, SYN)
    diff = np.abs(crawl.astype(int) - breast.astype(int)).max(-1) > 40
    assert diff.any()
    for f in diff:
        ys, xs = np.nonzero(f)
        if len(ys):
            assert ys.max() - ys.min() <= 16 and xs.max() - xs.min() <= 16


def test_corrupt_video_is_reported_and_skipped(synth_tree):
    s = synth_tree["summary"]
    assert [rel for rel, _ in s.failed] == ["PullUp/v_PullUp_g09_c01.avi"]
    assert len(s.done) == 16
    assert not (synth_tree["frames"] / "PullUp" / "v_PullUp_g09_c01").exists()
    assert "v_PullUp_g09_c01" in (synth_tree["frames"] / "extract_failures.txt").read_text()
    with pytest.raises(VideoReadError):
        read_video(synth_tree["bad"])
    with pytest.raises(VideoReadError, match="not found"):
        read_video(synth_tree["root"] / "nope.avi")


def test_extract_layout_and_resume(synth_tree, tmp_path):
    d = synth_tree["frames"] / "FrontCrawl" / "v_FrontCrawl_g01_c01"
    names = sorted(os.listdir(d))
    assert names.count("img_00001.jpg") == 1
    assert sum(n.startswith("img_") for n in names) == SYN.frames
    assert sum(n.startswith("flow_x_") for n in names) == SYN.frames - 1
    assert sum(n.startswith("flow_y_") for n in names) == SYN.frames - 1
    assert cv2.imread(str(d / "flow_x_00015.jpg"), cv2.IMREAD_UNCHANGED).ndim == 2
    # A second run skips finished videos (retries only the failed one) and removes stale temps.
    stale = synth_tree["frames"] / "FrontCrawl" / ".tmp-v_FrontCrawl_g01_c02-999"
    stale.mkdir()
    mtime = (d / "img_00001.jpg").stat().st_mtime_ns
    with pytest.warns(MissingVideoWarning):
        s = extract_tree(synth_tree["videos"], synth_tree["frames"],
                         ExtractOptions(flow="farneback", short_side=None), progress=False)
    assert s.done == [] and len(s.skipped) == 16 and len(s.failed) == 1
    assert not stale.exists() and (d / "img_00001.jpg").stat().st_mtime_ns == mtime


def test_extract_tvl1_and_resize(synth_tree, tmp_path):
    s = extract_tree(synth_tree["videos"], tmp_path, ExtractOptions(flow="tvl1", short_side=24),
                     videos=["RopeClimb/v_RopeClimb_g01_c01.avi"], progress=False)
    assert s.done == ["RopeClimb/v_RopeClimb_g01_c01.avi"]
    img = cv2.imread(str(tmp_path / "RopeClimb" / "v_RopeClimb_g01_c01" / "img_00001.jpg"))
    fx = cv2.imread(str(tmp_path / "RopeClimb" / "v_RopeClimb_g01_c01" / "flow_x_00001.jpg"), 0)
    assert img.shape == (24, 32, 3) and fx.shape == (24, 32)


# ----------------------------------------------------------------------------- readers

def test_ucf101_split_reader(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (tmp_path / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
                                              "YoYo/v_YoYo_g10_c02.avi 2\n\n")
    (tmp_path / "testlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi\n")
    train, classes = read_ucf101_split(tmp_path, 1, "train")
    test, _ = read_ucf101_split(tmp_path, 1, "test")
    assert classes == ["ApplyEyeMakeup", "YoYo"]
    assert train == [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0), ("YoYo/v_YoYo_g10_c02.avi", 1)]
    assert test == [("YoYo/v_YoYo_g01_c01.avi", 1)]
    with pytest.raises(FileNotFoundError, match="split=2"):
        read_ucf101_split(tmp_path, 2, "train")
    with pytest.raises(ValueError, match="subset"):
        read_ucf101_split(tmp_path, 1, "val")


def test_hmdb51_split_reader(tmp_path):
    (tmp_path / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (tmp_path / "cartwheel_test_split1.txt").write_text("d.avi 2 \ne.avi 1 \n")
    train, classes = read_hmdb51_split(tmp_path, 1, "train")
    test, _ = read_hmdb51_split(tmp_path, 1, "test")
    assert classes == ["brush_hair", "cartwheel"]
    assert train == [("brush_hair/a.avi", 0), ("cartwheel/e.avi", 1)]
    assert test == [("brush_hair/b.avi", 0), ("cartwheel/d.avi", 1)]


def _write_rawframes(d: Path, n: int, value=None, h=48, w=64):
    d.mkdir(parents=True)
    img = np.full((h, w, 3), 100, np.uint8) if value is None else value
    for i in range(1, n + 1):
        cv2.imwrite(str(d / f"img_{i:05d}.jpg"), img)
        if i < n:
            cv2.imwrite(str(d / f"flow_x_{i:05d}.jpg"), img[..., 0])
            cv2.imwrite(str(d / f"flow_y_{i:05d}.jpg"), img[..., 0])


def test_rawframes_file_list_reader_skips_missing(tmp_path):
    _write_rawframes(tmp_path / "A" / "v_a", 5)
    _write_rawframes(tmp_path / "B" / "v_b", 7)
    lst = tmp_path / "list.txt"
    lst.write_text("A/v_a 5 0\nB/v_b 7 1\nB/v_missing 9 1\n")
    assert read_file_list(lst) == [("A/v_a", 5, 0), ("B/v_b", 7, 1), ("B/v_missing", 9, 1)]
    with pytest.warns(MissingVideoWarning, match="v_missing"):
        recs = load_file_list_records(tmp_path, lst)
    assert [(r.name, r.num_frames, r.num_flow, r.label) for r in recs] == [("A/v_a", 5, 4, 0), ("B/v_b", 7, 6, 1)]
    write_file_list(tmp_path / "again.txt", recs)
    assert read_file_list(tmp_path / "again.txt") == [("A/v_a", 5, 0), ("B/v_b", 7, 1)]


def test_split_records_skip_unextracted_video(synth_tree):
    # The corrupt video is in the splits but was never extracted: reported and skipped.
    entries, _ = read_ucf101_split(synth_tree["splits"], 1, "train")
    (synth_tree["splits"] / "trainlist01.txt").write_text(
        "".join(f"{r} {l + 1}\n" for r, l in entries) + "PullUp/v_PullUp_g09_c01.avi 1\n")
    with pytest.warns(MissingVideoWarning, match="v_PullUp_g09_c01"):
        recs, classes = load_split_records(synth_tree["frames"], synth_tree["splits"], 1, "train")
    assert len(recs) == len(entries)
    assert all(r.num_frames == SYN.frames and r.num_flow == SYN.frames - 1 for r in recs)


# ----------------------------------------------------------------------------- flow

def test_flow_encoding_round_trip():
    assert encode_flow(np.array([-20.0, 0.0, 20.0, -100.0, 55.0])).tolist() == [0, 128, 255, 0, 255]
    v = np.random.default_rng(0).uniform(-20, 20, 10000)
    c = encode_flow(v)
    assert c.dtype == np.uint8
    assert np.abs(decode_flow(c) - v).max() <= 20.0 / 255 + 1e-9
    # Negating the flow is 255 - code, exactly: the property the horizontal flip relies on.
    np.testing.assert_allclose(decode_flow(255 - c), -decode_flow(c), atol=1e-12)
    assert np.array_equal(encode_flow(-v), 255 - c) or np.abs(encode_flow(-v).astype(int) - (255 - c)).max() <= 1
    np.testing.assert_allclose(to_network(np.array([0, 128, 255])), [-1.0, 0.0, 127 / 128])


def test_flow_jpeg_round_trip(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    flow = 8 * np.sin(xx / 9.0) * np.cos(yy / 7.0)
    cv2.imwrite(str(tmp_path / "f.jpg"), encode_flow(flow), [cv2.IMWRITE_JPEG_QUALITY, 95])
    back = decode_flow(cv2.imread(str(tmp_path / "f.jpg"), cv2.IMREAD_GRAYSCALE))
    assert np.abs(back - flow).mean() < 0.15


@pytest.mark.parametrize("method", ["farneback", "tvl1"])
def test_flow_estimators_recover_a_known_shift(method):
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur((rng.random((80, 96)) * 255).astype(np.uint8), (0, 0), 2)
    a, b = tex[10:58, 10:74], tex[12:60, 7:71]   # content moves by (+3, -2) pixels
    f = compute_flow(np.ascontiguousarray(a), np.ascontiguousarray(b), method)
    assert f.shape == (48, 64, 2)
    inner = f[8:-8, 8:-8].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, 0), [3.0, -2.0], atol=0.3)


# ----------------------------------------------------------------------------- sampling

def test_snippet_indices_middle_and_clip_ends():
    mid = snippet_indices(20, num_flow=40, num_snippets=3, snippet_length=10, tau=5)
    assert mid.tolist() == [list(range(10, 20)), list(range(15, 25)), list(range(20, 30))]
    start = snippet_indices(0, 40, 3, 10, 5)
    assert start.tolist() == [list(range(0, 10))] * 3
    end = snippet_indices(39, 40, 3, 10, 5)
    assert end.tolist() == [list(range(29, 39)), list(range(30, 40)), list(range(30, 40))]
    short = snippet_indices(2, 4, 3, 10, 7)   # video shorter than a snippet: repeat the last
    assert short.tolist() == [[0, 1, 2, 3] + [3] * 6] * 3
    with pytest.raises(ValueError, match="tau"):
        snippet_indices(0, 40, 3, 10, 0)


def test_train_and_test_clip_sampling():
    rng = np.random.default_rng(0)
    taus = set()
    for _ in range(300):
        (t, idx), = train_clip(200, 199, rng)
        assert 0 <= t < 200 and idx.shape == (3, 10)
        assert idx.min() >= 0 and idx.max() <= 198
        if idx[0, 0] > 0 and idx[2, -1] < 198:  # not clamped: spacing is tau
            assert idx[1, 0] - idx[0, 0] == idx[2, 0] - idx[1, 0]
            taus.add(int(idx[1, 0] - idx[0, 0]))
    assert taus == set(range(1, 11))
    segs = train_clip(90, 89, rng, segments=3)
    assert [s[0] // 30 for s in segs] == [0, 1, 2]
    clips = eval_clips(100, 99, num_clips=4, tau=5)
    assert [t for t, _ in clips] == [12, 37, 62, 87]
    assert all((idx[1, 0] - idx[0, 0]) == 5 for _, idx in clips[1:3])


# ----------------------------------------------------------------------------- augmentation

def test_fixed_offsets_and_multiscale_crop():
    offs = fixed_offsets(340, 256, 224, 224)
    assert len(offs) == 13 and len(set(offs)) == 13
    assert {(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)} <= set(offs)
    rng = np.random.default_rng(0)
    sizes = {int(256 * s) for s in (1, 0.875, 0.75)}
    for _ in range(200):
        x, y, w, h = multiscale_crop_params(340, 256, rng)
        assert w in sizes and h in sizes and x + w <= 340 and y + h <= 256
        assert abs(sorted(sizes).index(w) - sorted(sizes).index(h)) <= 1


def test_flip_negates_flow_x():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 256, (8, 12, 3 + 2 * 4), dtype=np.uint8)
    out = flip_flow_codes(stack)
    assert np.array_equal(out[..., :3], stack[:, ::-1, :3])
    assert np.array_equal(out[..., 4::2], stack[:, ::-1, 4::2])           # flow y only mirrored
    np.testing.assert_allclose(decode_flow(out[..., 3::2]), -decode_flow(stack[:, ::-1, 3::2]), atol=1e-12)
    crops = ten_crops(stack, 6)
    assert len(crops) == 10 and np.array_equal(crops[5], flip_flow_codes(crops[0]))
    assert np.array_equal(crops[0], stack[:6, :6]) and np.array_equal(crops[3], stack[2:, 6:])


def test_dataset_same_crop_for_rgb_and_all_flow_snippets(tmp_path):
    # Every image holds the same coordinate pattern, so after any crop and resize the RGB
    # channels and all flow channels agree, except that a flip turns flow x into 255 minus it.
    yy, xx = np.mgrid[0:48, 0:64]
    pattern = (2 * xx + yy).astype(np.uint8)
    d = tmp_path / "C" / "v_c"
    d.mkdir(parents=True)
    q = [cv2.IMWRITE_JPEG_QUALITY, 100]
    for i in range(1, 31):
        cv2.imwrite(str(d / f"img_{i:05d}.jpg"), np.repeat(pattern[..., None], 3, 2), q)
        cv2.imwrite(str(d / f"flow_x_{i:05d}.jpg"), pattern, q)
        cv2.imwrite(str(d / f"flow_y_{i:05d}.jpg"), pattern, q)
    recs = load_file_list_records(tmp_path, _list(tmp_path, "C/v_c 30 0\n"))
    ds = PyramidClips(recs, True, crop_size=32)
    flips = set()
    for _ in range(12):
        rgb, flow, label = ds[0]
        assert rgb.shape == (1, 3, 32, 32) and flow.shape == (1, 3, 20, 32, 32) and label == 0
        r = (rgb[0, 0] * 255).numpy()
        codes = (flow[0] * 128 + 128).numpy()  # [T, 2L, H, W]
        flipped = bool(r[0, 0] > r[0, -1])   # the pattern grows with x unless flipped
        assert np.abs(codes[:, 1::2] - r).max() <= 3
        assert np.abs(codes[:, 0::2] - (255 - r if flipped else r)).max() <= 3
        flips.add(flipped)
    assert flips == {True, False}
    test = PyramidClips(recs, False, num_clips=2, crop_size=32, scale_size=48)
    rgb, flow, _ = test[0]
    assert rgb.shape == (20, 3, 32, 32) and flow.shape == (20, 3, 20, 32, 32)


def _list(root, text):
    p = root / "list.txt"
    p.write_text(text)
    return p


def test_dataset_on_extracted_synth(synth_tree):
    recs, classes = load_split_records(synth_tree["frames"], synth_tree["splits"], 1, "test")
    ds = PyramidClips(recs, True, segments=2, crop_size=40)
    rgb, flow, label = ds[0]
    assert rgb.shape == (2, 3, 40, 40) and flow.shape == (2, 3, 20, 40, 40)
    assert 0 <= rgb.min() and rgb.max() <= 1 and -1 <= flow.min() and flow.max() < 1
    assert label == recs[0].label == classes.index(recs[0].name.split("/")[0])


def test_unreadable_frames_are_reported_and_skipped(tmp_path):
    _write_rawframes(tmp_path / "A" / "v_a", 12)
    _write_rawframes(tmp_path / "B" / "v_b", 12)
    (tmp_path / "A" / "v_a" / "img_00006.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "A" / "v_a" / "flow_x_00003.jpg").write_bytes(b"")
    recs = load_file_list_records(tmp_path, _list(tmp_path, "A/v_a 12 0\nB/v_b 12 1\n"))
    train = PyramidClips(recs, True, crop_size=32)
    with pytest.warns(MissingVideoWarning, match="A/v_a"):
        labels = {train[0][2] for _ in range(4)}
    assert labels == {1}   # the broken video is replaced by the next one
    with pytest.raises(OSError, match="cannot read image"):
        PyramidClips(recs, False, num_clips=1, test_crops=1, crop_size=32, scale_size=48)[0]


def test_cli_synth_and_extract(tmp_path, capsys):
    from pyramid.cli import main

    assert main(["synth", str(tmp_path / "s"), "--classes", "2", "--videos-per-class", "2",
                 "--frames", "8", "--size", "32x24", "--seed", "5"]) == 0
    videos = sorted(p.relative_to(tmp_path / "s" / "videos").as_posix()
                    for p in (tmp_path / "s" / "videos").rglob("*.avi"))
    assert videos == ["PullUp/v_PullUp_g01_c01.avi", "PullUp/v_PullUp_g02_c01.avi",
                      "RopeClimb/v_RopeClimb_g01_c01.avi", "RopeClimb/v_RopeClimb_g02_c01.avi"]
    args = ["extract", str(tmp_path / "s" / "videos"), str(tmp_path / "f"), "--flow", "farneback",
            "--short-side", "24", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    assert "extracted 4, already done 0, failed 0" in capsys.readouterr().out
    assert main(args) == 0
    assert "extracted 0, already done 4, failed 0" in capsys.readouterr().out
    recs, _ = load_split_records(tmp_path / "f", tmp_path / "s" / "splits", 1, "train")
    assert [(r.name, r.num_frames, r.num_flow) for r in recs] == [
        ("PullUp/v_PullUp_g02_c01", 8, 7), ("RopeClimb/v_RopeClimb_g02_c01", 8, 7)]
