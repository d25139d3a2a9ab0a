"""Video transforms: one set of random parameters per clip, label-aware flips, RandAugment's magnitude
noise, test-time crops, mixup/cutmix on 5-D batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tada.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAND_AUGMENT_OPS,
    SSV2_FLIP_MAP,
    LabelSmoothing,
    RandomHorizontalFlipVideo,
    ToVideo,
    VideoRandAugment,
    build_mixup,
    build_test_transform,
    build_train_transform,
    rand_augment_from_string,
)

T = 6


def texture(h=96, w=128, lo=0, hi=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (h, w, 3), generator=g, dtype=torch.uint8)


def repeat(frame, t=T):
    return frame.unsqueeze(0).repeat(t, 1, 1, 1)


def normalise(x_thwc_uint8, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Reference: uint8 (T, H, W, 3) -> float (3, T, H, W)."""
    x = x_thwc_uint8.float().permute(3, 0, 1, 2) / 255
    return (x - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)


def test_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert SSV2_FLIP_MAP == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}


@pytest.mark.parametrize("recipe", [
    dict(),  # RandomResizedCrop + flip + RandAugment m9 n4 mstd0.5
    dict(scale=None, short_side_range=(100, 140), crop_size=96),  # TAda2D
    dict(grayscale_p=0.5, random_erasing_p=0.5, rand_augment="rand-m9-n4-mstd0.5-p1"),
])
def test_train_identical_frames_stay_identical(recipe):
    clip = repeat(texture(lo=40, hi=200))
    tf = build_train_transform(**{"crop_size": 64, **recipe})
    outs = []
    for seed in range(12):
        torch.manual_seed(seed)
        out, label = tf(clip, 7)
        size = recipe.get("crop_size", 64)
        assert out.shape == (3, T, size, size) and out.dtype == torch.float32 and label == 7
        for t in range(1, T):
            assert torch.equal(out[:, t], out[:, 0]), f"seed {seed}: frame {t} was transformed differently"
        outs.append(out[:, 0])
    # and the augmentation is random across calls
    assert len({tuple(o.flatten()[:64].tolist()) for o in outs}) > 6
    # single-input convention returns just the clip
    assert build_train_transform(crop_size=64)(clip).shape == (3, T, 64, 64)


def test_same_crop_window_on_every_frame():
    # frame t = base + 12 t: a crop/resize/flip that uses one window for all frames keeps the
    # frame-to-frame difference a constant 12 t (up to uint8 rounding); another window would not
    base = texture(lo=0, hi=160)
    clip = torch.stack([base + 12 * t for t in range(T)])
    tf = build_train_transform(crop_size=64, rand_augment=None, mean=(0, 0, 0), std=(1 / 255,) * 3)
    for seed in range(10):
        torch.manual_seed(seed)
        out = tf(clip)  # (3, T, 64, 64) in 0..255 units
        for t in range(1, T):
            diff = out[:, t] - out[:, 0]
            assert (diff - 12 * t).abs().max() <= 1.01, f"seed {seed}, frame {t}"
    # plain random crop (no resize): recover the window of each frame exactly
    tf = build_train_transform(crop_size=48, scale=None, short_side_range=(96, 96), flip=False,
                               rand_augment=None, mean=(0, 0, 0), std=(1 / 255,) * 3)
    windows = set()
    for seed in range(10):
        torch.manual_seed(seed)
        out = tf(clip).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # (T, 48, 48, 3)
        found = []
        for t in range(T):
            # candidate windows whose first row matches, then a full comparison
            rows = np.lib.stride_tricks.sliding_window_view(clip[t].numpy(), (1, 48, 3))[:, :, 0, 0]
            cands = np.argwhere((rows == out[t, 0]).all(axis=(-1, -2))[: 96 - 47])
            hits = [(y, x) for y, x in cands if np.array_equal(clip[t, y:y + 48, x:x + 48].numpy(), out[t])]
            assert len(hits) == 1
            found.append(hits[0])
        assert len(set(found)) == 1
        windows.add(found[0])
    assert len(windows) > 5


def _flipped(out_first_frame):
    """The test clip is dark on the left half, bright on the right: flipped if left is brighter."""
    w = out_first_frame.shape[-1]
    return bool(out_first_frame[..., : w // 2].mean() > out_first_frame[..., w // 2:].mean())


def test_flip_swaps_exactly_the_mapped_labels():
    frame = torch.zeros(32, 48, 3, dtype=torch.uint8)
    frame[:, 24:] = 200
    clip = repeat(frame)
    tf = build_train_transform(crop_size=32, scale=(1.0, 1.0), flip_label_map=SSV2_FLIP_MAP,
                               rand_augment=None)
    for label in [86, 87, 93, 94, 166, 167, 0, 5, 88, 165, 173]:
        seen = set()
        for seed in range(16):
            torch.manual_seed(seed)
            out, new = tf(clip, label)
            flipped = _flipped(out[0, 0])
            seen.add(flipped)
            if flipped:
                assert new == SSV2_FLIP_MAP.get(label, label)
            else:
                assert new == label
        assert seen == {True, False}
    flip = RandomHorizontalFlipVideo(p=1.0, label_map={3: 4})  # made symmetric
    v = ToVideo()(clip)
    assert flip(v, 4)[1] == 3 and flip(v, 3)[1] == 4 and flip(v, 5)[1] == 5
    assert flip(v, torch.tensor(3))[1].item() == 4
    assert torch.equal(flip(v), v.flip(-1))
    assert RandomHorizontalFlipVideo(p=0.0, label_map={3: 4})(v, 3)[1] == 3
    assert RandomHorizontalFlipVideo(p=1.0)(v, 86)[1] == 86  # no map: labels untouched
    with pytest.raises(ValueError, match="inconsistent"):
        RandomHorizontalFlipVideo(label_map={1: 2, 2: 3})


@pytest.mark.parametrize("op", sorted(RAND_AUGMENT_OPS))
def test_rand_augment_op_is_the_same_on_every_frame(op):
    ra = VideoRandAugment(num_ops=1, magnitude=9, ops=[op])
    frames = [texture(64, 80, lo=40, hi=200, seed=s) for s in range(3)]
    clip = ToVideo()(torch.stack(frames))
    for sign in (-1.0, 1.0):
        params = [(op, 9.0, sign)]
        out = ra.apply(clip, params)
        assert out.shape == clip.shape and out.dtype == torch.uint8
        for t in range(3):  # the clip op equals the op on each frame alone
            assert torch.equal(out[t], ra.apply(clip[t:t + 1], params)[0])
    if op not in ("AutoContrast",):
        assert not torch.equal(out, clip), f"{op} at magnitude 9 changed nothing"
    # magnitude 0 is the identity for every magnitude-controlled op
    if op not in ("AutoContrast", "Equalize", "Invert"):
        assert torch.equal(ra.apply(clip, [(op, 0.0, 1.0)]), clip)


def test_rand_augment_magnitude_noise():
    ra = rand_augment_from_string("rand-m9-n4-mstd0.5")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.prob) == (4, 9.0, 0.5, 0.5)
    torch.manual_seed(0)
    m = torch.tensor([ra.sample_magnitude() for _ in range(4000)])
    assert abs(m.mean() - 9.0) < 0.03 and abs(m.std() - 0.5) < 0.03
    assert m.max() <= 10 and (m != 9.0).all()
    # clipped to [0, mmax]: at m10 about half the draws hit the cap exactly
    ra10 = rand_augment_from_string("rand-m10-n2-mstd0.5")
    m = torch.tensor([ra10.sample_magnitude() for _ in range(4000)])
    assert m.max() == 10.0 and 0.45 < (m == 10.0).float().mean() < 0.55
    # mstd0: fixed magnitude; mstdinf: uniform over [0, m]
    assert {rand_augment_from_string("rand-m7-n2").sample_magnitude() for _ in range(50)} == {7.0}
    m = torch.tensor([rand_augment_from_string("rand-m8-mstdinf").sample_magnitude() for _ in range(4000)])
    assert 0 <= m.min() < 0.2 and 7.8 < m.max() <= 8 and abs(m.mean() - 4) < 0.15
    # each of n ops applied with probability p; one magnitude per op application
    counts = [len(ra.sample_params()) for _ in range(2000)]
    assert abs(np.mean(counts) - 2.0) < 0.1
    assert all(len(rand_augment_from_string("rand-m9-n3-p1").sample_params()) == 3 for _ in range(20))
    with pytest.raises(ValueError):
        rand_augment_from_string("rand-m9-x3")


def test_random_erasing_and_grayscale_are_clip_level():
    clip = torch.stack([texture(seed=s) for s in range(T)])  # different frames
    tf = build_train_transform(crop_size=96, scale=(1.0, 1.0), flip=False, rand_augment=None,
                               random_erasing_p=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        out = tf(clip)
        erased = (out == 0).all(dim=0)  # (T, H, W): value 0 = the mean colour, never a real pixel
        assert erased[0].any()
        for t in range(1, T):
            assert torch.equal(erased[t], erased[0])
    gray = build_train_transform(crop_size=96, scale=(1.0, 1.0), flip=False, rand_augment=None,
                                 grayscale_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))(clip)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


def test_test_time_three_crops():
    clip = torch.stack([texture(256, 400, seed=s) for s in range(3)])  # landscape, short side already 256
    for k, x0 in enumerate([0, 72, 144]):  # left, centre, right
        out, label = build_test_transform(crop_index=k)(clip, 9)
        assert out.shape == (3, 3, 256, 256) and label == 9
        torch.testing.assert_close(out, normalise(clip[:, :, x0:x0 + 256]))
    portrait = clip.transpose(1, 2).contiguous()  # 400 x 256
    for k, y0 in enumerate([0, 72, 144]):  # top, centre, bottom
        out = build_test_transform(crop_index=k)(portrait)
        torch.testing.assert_close(out, normalise(portrait[:, y0:y0 + 256]))
    # one crop = centre; resize first: 200x300 -> short side 128 -> 128x192, crop 112 at (8, 40)
    small = torch.stack([texture(200, 300, seed=s) for s in range(2)])
    out = build_test_transform(short_side=128, crop_size=112, num_crops=1, mean=CLIP_MEAN, std=CLIP_STD)(small)
    assert out.shape == (3, 2, 112, 112)
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(small.permute(0, 3, 1, 2), [128, 192], antialias=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, normalise(resized[:, 8:120, 40:152], CLIP_MEAN, CLIP_STD))
    with pytest.raises(ValueError):
        build_test_transform(num_crops=3, crop_index=3)


def _batch(b=4, t=3, h=32, w=40):
    # sample i, frame j: constant 10 i + j, so where a pixel came from is readable
    x = torch.zeros(b, 3, t, h, w)
    for i in range(b):
        for j in range(t):
            x[i, :, j] = 10 * i + j
    return x


def test_cutmix_cuts_the_same_box_in_every_frame():
    mix = build_mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=5)
    np.random.seed(0)
    hits = 0
    for _ in range(20):
        x0 = _batch()
        y = torch.tensor([0, 1, 2, 3])
        x, target = mix(x0.clone(), y)
        assert x.shape == x0.shape and target.shape == (4, 5)
        torch.testing.assert_close(target.sum(1), torch.ones(4))
        for i in range(4):
            src = 3 - i  # timm mixes with the flipped batch
            box = x[i] != x0[i]  # (3, T, H, W)
            if not box.any():
                continue
            hits += 1
            for c in range(3):
                for j in range(3):
                    assert torch.equal(box[c, j], box[0, 0]), "cutmix box differs between frames/channels"
                    assert (x[i, c, j][box[0, 0]] == 10 * src + j).all()  # same frame j of the partner
            ys, xs = box[0, 0].nonzero(as_tuple=True)
            area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert area == box[0, 0].sum()  # a rectangle
            lam = 1 - area.item() / (32 * 40)
            assert target[i, y[i]].item() == pytest.approx(lam, abs=1e-5)
            assert target[i, y[src]].item() == pytest.approx(1 - lam, abs=1e-5)
    assert hits > 10


def test_mixup_blends_and_smooths():
    k, s = 10, 0.1
    mix = build_mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=s, num_classes=k)
    np.random.seed(1)
    x0 = _batch()
    y = torch.tensor([1, 2, 3, 4])
    x, target = mix(x0.clone(), y)
    torch.testing.assert_close(target.sum(1), torch.ones(4))
    off, on = s / k, 1 - s + s / k
    lam = (target[0, 1].item() - off) / (on - off)
    assert 0 < lam < 1
    torch.testing.assert_close(x, lam * x0 + (1 - lam) * x0.flip(0))
    assert target.min().item() == pytest.approx(off)
    # label smoothing alone
    ls = build_mixup(0.0, 0.0, label_smoothing=0.1, num_classes=10)
    assert isinstance(ls, LabelSmoothing)
    xx, t = ls(x0, torch.tensor([3, 0, 9, 3]))
    assert xx is x0
    assert t[0, 3].item() == pytest.approx(0.91) and t[0, 0].item() == pytest.approx(0.01)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="even"):
        build_mixup(0.8, 1.0, 0.1, 10)(_batch(b=3), torch.tensor([0, 1, 2]))
