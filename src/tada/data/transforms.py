"""Video transforms: train/test pipelines, a clip-consistent RandAugment, and mixup/cutmix for videos.

**Layout convention.** Pipelines take the decoder's uint8 clip ``(T, H, W, 3)`` and return a float32
``(3, T, H, W)`` tensor normalised with ``mean``/``std`` (given for pixels in [0, 1]); a DataLoader
stacks them into the ``(B, 3, T, H, W)`` the models take. Inside a pipeline the clip is a
:class:`torchvision.tv_tensors.Video` ``(T, 3, H, W)`` — a zero-copy view of the decoder's array —
so every ``torchvision.transforms.v2`` transform draws its random parameters once per call and
applies them to all frames: one crop window, one flip, one erasing box, the same RandAugment ops and
magnitudes for every frame of a clip.

**Call convention.** ``pipeline(clip) -> clip`` and ``pipeline(clip, label) -> (clip, label)``, the
torchvision v2 convention for extra inputs. Every transform passes the label through unchanged except
:class:`RandomHorizontalFlipVideo` with a ``label_map``: when it flips a clip whose label is in the map
it returns the mapped label (Something-Something: "pushing left to right" becomes "pushing right to
left"). Labels may be ints or 0-d integer tensors; other label types pass through untouched.

Train pipeline (:func:`build_train_transform`), in order: crop (``RandomResizedCrop`` with ``scale``,
the V2/TAdaFormer recipes; or, when ``short_side_range`` is given, a random short-side resize and a
random ``crop_size`` crop, the TAda2D recipe) → horizontal flip (optionally swapping labels) →
RandAugment (timm-style string) → random grayscale → to float and normalise → random erasing (one box,
filled with 0 = the mean colour, on every frame) → ``(3, T, H, W)``.

Test pipeline (:func:`build_test_transform`): resize the short side to ``short_side`` → crop
``crop_index`` of ``num_crops`` squares of side ``crop_size`` spread evenly along the long side
(3 crops: left/centre/right of a landscape frame, top/centre/bottom of a portrait one; 1 crop: the
centre) → normalise → ``(3, T, H, W)``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "SSV2_FLIP_MAP",
    "VideoPipeline", "ToVideo", "ToModelLayout", "ToFloatNormalize", "RandomHorizontalFlipVideo",
    "RandomGrayscaleVideo",
    "VideoRandAugment", "SpatialCrop", "rand_augment_from_string", "RAND_AUGMENT_OPS",
    "build_train_transform", "build_test_transform", "build_mixup", "VideoMixup", "LabelSmoothing",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Something-Something V2 classes whose meaning flips with the image (the release's pairs).
SSV2_FLIP_MAP: dict[int, int] = {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}


def _with_rest(clip, rest: tuple):
    return (clip, *rest) if rest else clip


class VideoPipeline(v2.Compose):
    """``v2.Compose`` for clips: ``pipeline(clip) -> clip``, ``pipeline(clip, label) -> (clip, label)``."""


class ToVideo(nn.Module):
    """uint8 ``(T, H, W, 3)`` → :class:`tv_tensors.Video` ``(T, 3, H, W)`` (a view, channels-last in
    memory, which is what torchvision's fast uint8 resize wants)."""

    def forward(self, clip, *rest):
        if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"expected a (T, H, W, 3) clip tensor, got "
                             f"{tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__}")
        return _with_rest(tv_tensors.Video(clip.permute(0, 3, 1, 2)), rest)


class ToFloatNormalize(nn.Module):
    """uint8 video → float32 ``(x / 255 - mean) / std`` in one fused pass per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std need 3 values and std > 0, got {mean}, {std}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        scale = torch.tensor([1 / (255 * s) for s in self.std]).view(3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)]).view(3, 1, 1)
        self.register_buffer("_scale", scale, persistent=False)
        self.register_buffer("_shift", shift, persistent=False)

    def forward(self, clip, *rest):
        x = clip.as_subclass(torch.Tensor)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (T, 3, H, W) video, got shape {tuple(x.shape)}")
        t, c, h, w = x.shape
        # written straight into (3, T, H, W) memory, so ToModelLayout needs no copy
        out = torch.empty((c, t, h, w), dtype=torch.float32, device=x.device).transpose(0, 1)
        out.copy_(x)
        if x.dtype == torch.uint8:
            out.mul_(self._scale).sub_(self._shift)
        else:  # float input in [0, 1]
            out.mul_(self._scale * 255).sub_(self._shift)
        return _with_rest(tv_tensors.Video(out), rest)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class ToModelLayout(nn.Module):
    """Video ``(T, 3, H, W)`` → plain contiguous tensor ``(3, T, H, W)``."""

    def forward(self, clip, *rest):
        return _with_rest(clip.as_subclass(torch.Tensor).transpose(0, 1).contiguous(), rest)


def _symmetric_map(label_map: Mapping[int, int] | None) -> dict[int, int]:
    out: dict[int, int] = {}
    for a, b in (label_map or {}).items():
        a, b = int(a), int(b)
        for k, v in ((a, b), (b, a)):
            if out.get(k, v) != v:
                raise ValueError(f"flip label map is inconsistent: {k} maps to both {out[k]} and {v}")
            out[k] = v
    return out


class RandomHorizontalFlipVideo(nn.Module):
    """Flip every frame with probability ``p``; when flipped, labels in ``label_map`` are swapped
    (the map is made symmetric: ``{86: 87}`` also maps 87 → 86)."""

    def __init__(self, p: float = 0.5, label_map: Mapping[int, int] | None = None):
        super().__init__()
        self.p = float(p)
        self.label_map = _symmetric_map(label_map)

    def map_label(self, label):
        if isinstance(label, bool) or label is None:
            return label
        if isinstance(label, int):
            return self.label_map.get(label, label)
        if isinstance(label, torch.Tensor) and label.ndim == 0 and not label.is_floating_point():
            new = self.label_map.get(int(label))
            return label if new is None else torch.tensor(new, dtype=label.dtype)
        return label

    def forward(self, clip, *rest):
        if torch.rand(()) >= self.p:
            return _with_rest(clip, rest)
        clip = TF.horizontal_flip(clip)
        if rest and self.label_map:
            rest = (self.map_label(rest[0]), *rest[1:])
        return _with_rest(clip, rest)

    def extra_repr(self) -> str:
        return f"p={self.p}, label_map={self.label_map}"


class RandomGrayscaleVideo(nn.Module):
    """With probability ``p`` turn every frame grey (3 equal channels). ``v2.RandomGrayscale`` passes
    :class:`tv_tensors.Video` inputs through untouched, hence this transform."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        self.p = float(p)

    def forward(self, clip, *rest):
        if torch.rand(()) >= self.p:
            return _with_rest(clip, rest)
        gray = TF.rgb_to_grayscale(clip.as_subclass(torch.Tensor), num_output_channels=3)
        return _with_rest(tv_tensors.wrap(gray, like=clip) if isinstance(clip, tv_tensors.TVTensor) else gray, rest)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------------------
# RandAugment with clip-consistent ops and timm's magnitude-noise semantics


def _signed(mag: float, sign: float, scale: float) -> float:
    return sign * scale * mag / 10.0


def _solarize_add(x: torch.Tensor, add: int) -> torch.Tensor:
    if add <= 0:
        return x
    raw = x.as_subclass(torch.Tensor)
    add = min(int(add), 127)  # x < 128, so x + add <= 254 cannot overflow uint8
    out = torch.where(raw < 128, raw + add, raw)
    return tv_tensors.wrap(out, like=x) if isinstance(x, tv_tensors.TVTensor) else out


def _solarize(x, mag):
    threshold = round(256 * (1 - mag / 10.0))
    return x if threshold > 255 else TF.solarize(x, threshold=threshold)


def _affine(x, fill, *, angle=0.0, translate=(0.0, 0.0), shear=(0.0, 0.0)):
    return TF.affine(x, angle=angle, translate=list(translate), scale=1.0, shear=list(shear),
                     interpolation=InterpolationMode.BILINEAR, fill=fill)


# name -> fn(video_uint8, magnitude in [0, 10], sign in {-1, +1}, fill) ; severity grows with magnitude
RAND_AUGMENT_OPS: dict[str, Callable[..., Any]] = {
    "AutoContrast": lambda x, m, s, f: TF.autocontrast(x),
    "Equalize": lambda x, m, s, f: TF.equalize(x),
    "Invert": lambda x, m, s, f: TF.invert(x),
    "Rotate": lambda x, m, s, f: _affine(x, f, angle=_signed(m, s, 30.0)),
    "Posterize": lambda x, m, s, f: TF.posterize(x, bits=8 - int(round(4 * m / 10.0))),
    "Solarize": lambda x, m, s, f: _solarize(x, m),
    "SolarizeAdd": lambda x, m, s, f: _solarize_add(x, int(round(110 * m / 10.0))),
    "Color": lambda x, m, s, f: TF.adjust_saturation(x, 1.0 + _signed(m, s, 0.9)),
    "Contrast": lambda x, m, s, f: TF.adjust_contrast(x, 1.0 + _signed(m, s, 0.9)),
    "Brightness": lambda x, m, s, f: TF.adjust_brightness(x, 1.0 + _signed(m, s, 0.9)),
    "Sharpness": lambda x, m, s, f: TF.adjust_sharpness(x, 1.0 + _signed(m, s, 0.9)),
    "ShearX": lambda x, m, s, f: _affine(x, f, shear=(math.degrees(math.atan(_signed(m, s, 0.3))), 0.0)),
    "ShearY": lambda x, m, s, f: _affine(x, f, shear=(0.0, math.degrees(math.atan(_signed(m, s, 0.3))))),
    "TranslateX": lambda x, m, s, f: _affine(x, f, translate=(_signed(m, s, 0.45) * x.shape[-1], 0.0)),
    "TranslateY": lambda x, m, s, f: _affine(x, f, translate=(0.0, _signed(m, s, 0.45) * x.shape[-2])),
}


class VideoRandAugment(nn.Module):
    """RandAugment for clips (timm's ``rand-m{m}-n{n}-mstd{mstd}`` semantics, same ops for every frame).

    Per call: ``num_ops`` ops are drawn uniformly with replacement from ``ops``; each is applied with
    probability ``prob`` at magnitude ``clip(N(magnitude, magnitude_std), 0, magnitude_max)`` (a fresh
    draw per op; ``magnitude_std=inf`` draws ``U(0, magnitude)`` instead; 0 keeps ``magnitude``) and a
    random sign for signed ops (rotate, shear, translate, colour/contrast/brightness/sharpness factors).
    The whole ``(T, 3, H, W)`` uint8 clip is transformed at once, so geometry and magnitudes are the
    same on every frame; the histogram ops (AutoContrast, Equalize) and Contrast use each frame's own
    statistics, as image RandAugment applied frame by frame with shared parameters does.

    Magnitude → argument at level m (0..10): rotate ±3m°, shear ±0.03m (tangent), translate ±0.045m
    of the side, enhance factors 1 ± 0.09m, posterize to 8 − round(0.4m) bits, solarize above
    256(1 − m/10), solarize-add +11m below 128. Randomness from torch's global generator.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0, *,
                 prob: float = 0.5, magnitude_max: float = 10.0, ops: Sequence[str] | None = None,
                 fill: Sequence[int] = (124, 116, 104)):
        super().__init__()
        self.ops = list(ops) if ops is not None else list(RAND_AUGMENT_OPS)
        unknown = [o for o in self.ops if o not in RAND_AUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {list(RAND_AUGMENT_OPS)}")
        if num_ops < 0 or not 0 <= prob <= 1 or magnitude_std < 0:
            raise ValueError(f"bad RandAugment settings n={num_ops}, p={prob}, mstd={magnitude_std}")
        self.num_ops, self.magnitude, self.magnitude_std = int(num_ops), float(magnitude), float(magnitude_std)
        self.prob, self.magnitude_max, self.fill = float(prob), float(magnitude_max), [int(v) for v in fill]

    def sample_magnitude(self) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = float(torch.rand(())) * m
        elif self.magnitude_std > 0:
            m = m + self.magnitude_std * float(torch.randn(()))
        return min(max(m, 0.0), self.magnitude_max)

    def sample_params(self) -> list[tuple[str, float, float]]:
        """The ``(op, magnitude, sign)`` list one call applies (ops skipped by ``prob`` left out)."""
        params = []
        for _ in range(self.num_ops):
            op = self.ops[int(torch.randint(len(self.ops), ()))]
            mag = self.sample_magnitude()
            sign = -1.0 if float(torch.rand(())) < 0.5 else 1.0
            if float(torch.rand(())) < self.prob:
                params.append((op, mag, sign))
        return params

    def apply(self, clip, params: Sequence[tuple[str, float, float]]):
        """Apply ``params`` to a uint8 ``(…, 3, H, W)`` tensor / Video."""
        if clip.dtype != torch.uint8:
            raise TypeError(f"VideoRandAugment expects uint8 frames, got {clip.dtype}")
        if params and not clip.is_contiguous():
            # the decoder's layout is channels-last; torchvision's per-channel ops (autocontrast,
            # equalize, …) are several times faster on contiguous (T, 3, H, W) memory
            clip = tv_tensors.wrap(clip.contiguous(), like=clip) if isinstance(clip, tv_tensors.TVTensor) \
                else clip.contiguous()
        for op, mag, sign in params:
            clip = RAND_AUGMENT_OPS[op](clip, mag, sign, self.fill)
        return clip

    def forward(self, clip, *rest):
        return _with_rest(self.apply(clip, self.sample_params()), rest)

    def extra_repr(self) -> str:
        return (f"num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}, "
                f"prob={self.prob}, ops={len(self.ops)}")


def rand_augment_from_string(spec: str, **kwargs) -> VideoRandAugment:
    """Parse timm's RandAugment string, e.g. ``"rand-m9-n4-mstd0.5"``: ``m`` magnitude, ``n`` number of
    ops, ``mstd`` magnitude std (``inf`` for uniform), ``mmax`` magnitude cap, ``p`` op probability."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    args = {}
    names = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max", "p": "prob"}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)([0-9.]+|inf)", part)
        if not match or match.group(1) not in names:
            raise ValueError(f"unsupported RandAugment option {part!r} in {spec!r}; known: {sorted(names)}")
        key, val = names[match.group(1)], float(match.group(2))
        args[key] = int(val) if key == "num_ops" else val
    args.setdefault("magnitude", 9.0)
    args.setdefault("num_ops", 2)
    return VideoRandAugment(**{**args, **kwargs})


# --------------------------------------------------------------------------------------------------
# test-time crops


class SpatialCrop(nn.Module):
    """Crop ``crop_index`` of ``num_crops`` ``size``×``size`` squares placed evenly along the long side
    (offsets ``k * (L - size) // (num_crops - 1)``; for 3 crops left/centre/right), centred on the short
    side. One crop is the centre crop."""

    def __init__(self, size: int, num_crops: int = 3, crop_index: int | None = None):
        super().__init__()
        if crop_index is None:
            crop_index = num_crops // 2
        if num_crops < 1 or not 0 <= crop_index < num_crops:
            raise ValueError(f"crop_index must be in [0, {num_crops}), got {crop_index}")
        self.size, self.num_crops, self.crop_index = int(size), int(num_crops), int(crop_index)

    def offsets(self, height: int, width: int) -> tuple[int, int]:
        s = self.size
        if height < s or width < s:
            raise ValueError(f"frame {height}x{width} is smaller than the {s}x{s} crop")
        along = lambda length: (length - s) // 2 if self.num_crops == 1 else \
            self.crop_index * (length - s) // (self.num_crops - 1)  # noqa: E731
        if width >= height:
            return (height - s) // 2, along(width)
        return along(height), (width - s) // 2

    def forward(self, clip, *rest):
        top, left = self.offsets(clip.shape[-2], clip.shape[-1])
        return _with_rest(TF.crop(clip, top, left, self.size, self.size), rest)

    def extra_repr(self) -> str:
        return f"size={self.size}, num_crops={self.num_crops}, crop_index={self.crop_index}"


# --------------------------------------------------------------------------------------------------
# builders


def build_train_transform(*, crop_size: int = 224, scale: tuple[float, float] | None = (0.08, 1.0),
                          short_side_range: tuple[int, int] | None = None, flip: bool = True,
                          flip_label_map: Mapping[int, int] | None = None,
                          rand_augment: str | None = "rand-m9-n4-mstd0.5", grayscale_p: float = 0.0,
                          random_erasing_p: float = 0.0, mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> VideoPipeline:
    """Training pipeline, uint8 ``(T, H, W, 3)`` → float ``(3, T, crop, crop)`` (see module doc).

    Crop: ``short_side_range=(lo, hi)`` → short side resized to a uniform integer in [lo, hi], then a
    random ``crop_size`` crop (TAda2D; takes precedence over ``scale``); else ``scale`` →
    ``RandomResizedCrop(crop_size, scale)``; if both are None, short side → ``crop_size`` + random crop.
    """
    steps: list[Callable] = [ToVideo()]
    if short_side_range is not None:
        lo, hi = (int(v) for v in short_side_range)
        if not crop_size <= lo <= hi:
            raise ValueError(f"short_side_range {short_side_range} must satisfy crop_size <= lo <= hi")
        steps += [v2.RandomShortestSize(min_size=list(range(lo, hi + 1)), antialias=True), v2.RandomCrop(crop_size)]
    elif scale is not None:
        steps.append(v2.RandomResizedCrop(crop_size, scale=tuple(scale), antialias=True))
    else:
        steps += [v2.Resize(crop_size, antialias=True), v2.RandomCrop(crop_size)]
    if flip:
        steps.append(RandomHorizontalFlipVideo(0.5, flip_label_map))
    if rand_augment:
        steps.append(rand_augment_from_string(rand_augment))
    if grayscale_p > 0:
        steps.append(RandomGrayscaleVideo(grayscale_p))
    steps.append(ToFloatNormalize(mean, std))
    if random_erasing_p > 0:
        steps.append(v2.RandomErasing(random_erasing_p, value=0))
    steps.append(ToModelLayout())
    return VideoPipeline(steps)


def build_test_transform(*, short_side: int = 256, crop_size: int = 256, num_crops: int = 3,
                         crop_index: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> VideoPipeline:
    """Test pipeline for spatial view ``crop_index`` (default: the centre one) of ``num_crops``."""
    if crop_size > short_side:
        raise ValueError(f"crop_size {crop_size} > short_side {short_side}")
    return VideoPipeline([
        ToVideo(),
        v2.Resize(short_side, antialias=True),
        SpatialCrop(crop_size, num_crops, crop_index),
        ToFloatNormalize(mean, std),
        ToModelLayout(),
    ])


# --------------------------------------------------------------------------------------------------
# mixup / cutmix on (B, 3, T, H, W) batches


class LabelSmoothing(nn.Module):
    """``(x, y) -> (x, soft targets)`` with only label smoothing: ``1 - s + s/K`` on the label,
    ``s/K`` elsewhere (timm's convention)."""

    def __init__(self, label_smoothing: float, num_classes: int):
        super().__init__()
        self.label_smoothing, self.num_classes = float(label_smoothing), int(num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        off = self.label_smoothing / self.num_classes
        target = torch.full((y.shape[0], self.num_classes), off, device=y.device)
        return x, target.scatter_(1, y.long().view(-1, 1), 1.0 - self.label_smoothing + off)


class VideoMixup(nn.Module):
    """timm's :class:`timm.data.Mixup` for clips ``(B, C, T, H, W)``.

    timm cuts its cutmix box out of ``x[:, :, y0:y1, x0:x1]``, which for a 5-D batch would cut along
    time and height; here the batch is viewed as ``(B, C*T, H, W)`` so the box spans every channel of
    every frame (the same box in all frames), then viewed back. Mixing is in place on ``x``. The
    batch size must be even (timm's constraint; use ``drop_last=True``). Randomness: numpy's global
    generator (timm's)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, label_smoothing: float, num_classes: int,
                 **mixup_kwargs):
        super().__init__()
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                           num_classes=num_classes, **mixup_kwargs)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        if x.ndim != 5:
            raise ValueError(f"expected a (B, C, T, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {x.shape[0]} (use drop_last=True)")
        b, c, t, h, w = x.shape
        flat = x.view(b, c * t, h, w) if x.is_contiguous() else x.reshape(b, c * t, h, w)
        flat, target = self.mixup(flat, y)
        out = flat.view(b, c, t, h, w)
        if out.data_ptr() != x.data_ptr():
            x.copy_(out)
        return x, target


def build_mixup(mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, label_smoothing: float = 0.0,
                num_classes: int = 400, **mixup_kwargs) -> nn.Module:
    """Batch-level augmentation ``(x (B, 3, T, H, W), y (B,)) -> (x, soft targets (B, num_classes))``.

    With both alphas 0 it only smooths labels (:class:`LabelSmoothing`), so a training loop can always
    use soft targets. Extra keywords go to :class:`timm.data.Mixup` (``prob``, ``switch_prob``, ``mode``,
    ``cutmix_minmax``, ``correct_lam``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if mixup_alpha <= 0 and cutmix_alpha <= 0 and mixup_kwargs.get("cutmix_minmax") is None:
        return LabelSmoothing(label_smoothing, num_classes)
    return VideoMixup(mixup_alpha, cutmix_alpha, label_smoothing, num_classes, **mixup_kwargs)
