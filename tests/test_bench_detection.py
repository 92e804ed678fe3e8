"""Tiny, fast checks of the detection / transfer benchmark pieces (no backbone, no training)."""

import os

import sys
from pathlib import Path

import numpy as np
import pytest

# the benchmark package lives in benches/ (not in the wheel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

from sharekan_bench import detection as D  # noqa: E402


def test_voc_ap_known_curves():
    # one perfect detection: AP 1 under both definitions
    assert D.voc_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
    assert D.voc_ap(np.array([1.0]), np.array([1.0]), use_07_metric=True) == pytest.approx(1.0)
    # TP, FP, TP with 2 ground truths: all-point = 0.5 * 1 + 0.5 * 2/3
    rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert D.voc_ap(rec, prec) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: recall 0..0.5 -> 1 (6 points), 0.6..1.0 -> 2/3 (5 points)
    assert D.voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_map_matching_and_duplicates():
    gt_b = [np.array([[0, 0, 10, 10]], np.float32), np.array([[20, 20, 40, 40]], np.float32)]
    gt_l = [np.array([0]), np.array([1])]
    perfect = [(gt_b[0].astype(float), np.array([0.9]), np.array([0])),
               (gt_b[1].astype(float), np.array([0.8]), np.array([1]))]
    assert D.voc_map(perfect, gt_b, gt_l)["map"] == pytest.approx(100.0)
    # a higher-scored duplicate of class 0 in image 0 is a false positive after the first match
    dup = [(np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float), np.array([0.9, 0.95]), np.array([0, 0])),
           perfect[1]]
    m = D.voc_map(dup, gt_b, gt_l)
    assert m["classes"] == 2 and m["map"] == pytest.approx(100.0)  # first (0.95) matches, IoU 0.81
    wrong_class = [(gt_b[0].astype(float), np.array([0.9]), np.array([1])), perfect[1]]
    # class 0: AP 0; class 1: the FP (0.9) ranks above the TP (0.8), AP 0.5
    assert D.voc_map(wrong_class, gt_b, gt_l)["map"] == pytest.approx(25.0)


def test_targets_decode_roundtrip():
    boxes = [np.array([[10, 12, 50, 40], [70, 80, 120, 126]], np.float32)]
    labels = [np.array([3, 17])]
    t = D.targets(boxes, labels, 128)[0]  # (4, 4, 6)
    assert t[..., 0].sum() == 2
    out = np.full((16, D.N_OUT), -20.0, np.float32)
    for gy, gx in zip(*np.nonzero(t[..., 0])):
        o = out[gy * 4 + gx]
        o[0] = 20.0
        o[1 + int(t[gy, gx, 1])] = 20.0
        o[21:23] = np.log(t[gy, gx, 2:4] / (1 - t[gy, gx, 2:4]))
        o[23:25] = t[gy, gx, 4:6]
    dets = D.decode(out, 1, 128)
    b, s, c = dets[0]
    top = np.argsort(-s)[:2]
    assert sorted(c[top].tolist()) == [3, 17]
    assert D.voc_map(dets, boxes, labels)["map"] == pytest.approx(100.0)


def test_cell_inputs_layout_and_norm():
    # s16 map (1, 2, 8, 8): value = 100 * channel + 10 * y + x; grid 4 x 4 of 2 x 2 sub-cells
    c, y, x = np.meshgrid(np.arange(2), np.arange(8), np.arange(8), indexing="ij")
    maps = {"s16": (100 * c + 10 * y + x)[None].astype(np.float16),
            "top": np.arange(16, dtype=np.float16).reshape(1, 1, 4, 4)}
    rows = D.cell_inputs(maps, "top+s16", 4)
    assert rows.shape == (16, 1 + 8) and rows.dtype == np.float32
    gy, gx = 2, 1
    r = rows[gy * 4 + gx]
    assert r[0] == gy * 4 + gx  # top map value of that cell
    # sub-cells in (dy, dx) order, channels innermost
    want = [100 * ch + 10 * (2 * gy + dy) + (2 * gx + dx) for dy in (0, 1) for dx in (0, 1) for ch in (0, 1)]
    assert r[1:].tolist() == want
    cells = np.random.default_rng(0).normal(size=(500, 12)).astype(np.float32) * np.arange(1, 13)
    z = D.CellNorm(cells)(cells)
    assert z.shape == (500, 12) and np.abs(z).max() < 1
    zp = D.CellNorm(cells, pca=5)
    assert zp(cells).shape == (500, 5) and np.abs(zp(cells)).max() < 1
    proj = ((cells - zp.mean) / zp.std) @ zp.proj  # whitened: unit variance, uncorrelated
    assert np.allclose(np.cov(proj.T, bias=True), np.eye(5), atol=1e-3)


def test_iou_matrix_matches_iou():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 100, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 100, (3, 2, 2)), axis=1).transpose(0, 2, 1).reshape(3, 4)[:, [0, 2, 1, 3]]
    m = D.iou_matrix(a, b)
    for i in range(5):
        for j in range(3):
            assert m[i, j] == pytest.approx(D.iou(a[i], b[j]))


@pytest.mark.skipif(not os.path.exists(D.EMOJI_FONT), reason="fonts-noto-color-emoji not installed")
def test_make_set_exact_boxes():
    pytest.importorskip("skimage")
    cfg = D.DetConfig()
    bgs = [np.full((64, 64, 3), 128, np.uint8)]
    images, boxes, labels = D.make_set(4, bgs, cfg.obj_px, cfg, seed=0)
    assert images.shape == (4, 128, 128, 3) and images.dtype == np.uint8
    for b, lab in zip(boxes, labels):
        assert 1 <= len(b) <= cfg.max_objects and len(b) == len(lab)
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 128).all() and (b[:, 2:] > b[:, :2]).all()
        assert ((lab >= 0) & (lab < 20)).all()
    # same seed, same set
    again = D.make_set(4, bgs, cfg.obj_px, cfg, seed=0)
    assert np.array_equal(images, again[0])


def test_shift_images_shapes():
    pytest.importorskip("skimage")
    from sharekan_bench.transfer import shift_images

    imgs = np.random.default_rng(0).integers(0, 255, (3, 28, 28)).astype(np.uint8)
    for kind in ("scale", "bg"):
        out = shift_images(imgs, kind, 0)
        assert out.shape == imgs.shape and out.dtype == np.uint8
    assert (shift_images(imgs, "scale", 0) > 0).sum(axis=(1, 2)).max() <= 18 * 18


def test_detection_and_transfer_markdown():
    from sharekan_bench import report

    dense = {"method": "dense FP32", "K": None, "bytes": 1000, "file_bytes": None, "ratio": 1.0}
    row = lambda m, k, ratio, mp: {"method": m, "K": k, "bytes": 50, "ratio": ratio, **{
        f"{a}_{s}": mp for a in ("map", "map07") for s in ("test", "bg", "small")},
        **{f"sqnr_{s}": 30.0 for s in ("test", "bg", "small")},
        **{f"retention_{s}": mp for s in ("test", "bg", "small")}}
    d = {**dense, **row("dense FP32", None, 1.0, 100.0)}
    res = {"config": {"image_px": 128, "max_objects": 3, "obj_px": [36, 72], "small_px": [18, 34],
                      "inputs": "s16", "pca": None, "hidden": 32, "grid_size": 10, "epochs": 1,
                      "calib_rows": 2048},
           "dense_bytes": 1000, "head_widths": [384, 32, 25],
           "images": {"train": 1, "test": 1, "bg": 1, "small": 1}, "objects": {"train": 1, "test": 1, "bg": 1, "small": 1},
           "train_seconds": 1.0,
           "rows": [d, row("SHARe-KAN FP32 codebook", 16, 10.0, 99.6), row("SHARe-KAN Int8", 16, 20.0, 99.5)]}
    md = report.detection_markdown(res)
    assert "**met**: up to 20.0x" in md and "Int8 costs +0.10 points (met)" in md
    tres = {"config": {"n": 10}, "heads": {"kan": {"dense_bytes": 10**6, "rows": [
        {"method": "dense FP32", "K": None, "ratio": 1.0, **{f"acc_{s}": 90.0 for s in ("test", "scale", "bg")},
         **{f"retention_{s}": 100.0 for s in ("test", "scale", "bg")}},
        {"method": "SHARe-KAN FP32 codebook", "K": 16, "ratio": 10.0, **{f"acc_{s}": 90.0 for s in ("test", "scale", "bg")},
         **{f"retention_{s}": 100.0 for s in ("test", "scale", "bg")}},
        {"method": "SHARe-KAN Int8", "K": 16, "ratio": 20.0, **{f"acc_{s}": 89.0 for s in ("test", "scale", "bg")},
         **{f"retention_{s}": 99.0 for s in ("test", "scale", "bg")}}]}}}
    md = report.transfer_markdown(tres)
    assert "**missed**" in md and "Int8 costs +1.00 points (missed)" in md
