"""A synthetic *untrimmed* benchmark for temporal action localisation (``tada synth --untrimmed``).

Long videos (default 20-40 s) of a distracting background with 1-4 action instances of the synthetic
classes of :mod:`tada.data.synth` (time-reversal pairs: ``moving_right`` / ``moving_left``, ...), each
at its own time and separated by gaps, with ActivityNet-style ground truth. Because the two classes of
a pair differ only in the order of their frames, a localiser that labels the segments needs temporal
features: the paper's Table 12 pattern (TSN vs TAda2D features for BMN) in miniature.

**One video** (every draw a function of ``(seed, video index)`` only, so video ``i`` does not depend
on how many videos were asked for):

* *background*, the whole video: a low-contrast texture of :data:`~tada.data.synth.BACKGROUNDS`
  (smooth noise, stripes, gradient; the synth's contrast rule) that drifts slowly -- a sub-pixel
  sinusoidal wobble of 1-3 px with a period of 15-40 s on each axis, no steady direction -- plus
  per-pixel noise (std 1-3) on every frame;
* *distractors*: 1-2 small shapes (half-extent 7-12 % of the side) that are not actions: each stays
  at its place with i.i.d. per-frame jitter (std 0.5-1.5 px, no trend in position, size, opacity or
  aspect) and is visible for the whole video or pops in and out abruptly for a random stretch;
* *instances*: ``k`` action instances, ``k`` uniform in ``instances``, each ``round(L * fps)``
  frames long (``L`` uniform in ``instance_seconds``, at least 2 frames), placed at random with at
  least ``min_gap`` seconds between two instances and ``min_gap / 2`` before the first and after the
  last. The object of an instance of class ``c`` with render seed ``s`` is exactly the object of
  :func:`tada.data.synth.render_clip` ``(c, s, frames=n, size=size)`` -- its shape, motion and
  opacity over the instance's frames, time-reversed for the second class of a pair -- drawn in a
  colour that stands out from this video's background, over the background and the distractors.
  Classes are uniform over ``classes``; in 30 % of the videos with two or more instances whose pair
  is complete, the instances alternate between the two directions of one pair (so a video can hold
  ``moving_right`` and ``moving_left``), which only the order of frames tells apart.

**Time rule.** Frame ``j`` is shown at ``j / fps`` s and lasts ``1 / fps``; a video of ``N`` frames
lasts ``N / fps`` s (its ``duration``). An instance on frames ``j0 .. j0 + n - 1`` has the segment
``[j0 / fps, (j0 + n) / fps]``: start = the time of its first frame, end = the time just after its
last frame, so segment lengths are ``n / fps`` and adjacent frames' segments would tile the video.

Layout written under ``out``::

    videos/untrimmed_{i:04d}.mp4    H.264 (libx264, yuv420p, crf 18, the synth's deterministic settings)
    annotations.json                ActivityNet-style ground truth (tada.data.segments), subsets
                                    "training" / "validation" / "testing" (split, default 60/20/20)
    videos.txt                      "videos/untrimmed_{i:04d}.mp4" lines: the list ``tada extract --list`` reads
    classes.txt                     class names, one a line (line number = class id)
    synth_untrimmed.json            the generation settings and counts

Size: the defaults (60 videos, 20-40 s, 10 fps, 64x64) make about 18k frames; rendering and
encoding them takes well under a minute of one CPU core.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from .segments import Segment, UntrimmedVideo, write_activitynet_json
from .synth import (BACKGROUNDS, BG_CONTRAST, MIN_COLOR_DISTANCE, REVERSAL_PAIRS, SHAPES, ClipParams, draw_params,
                    render, resolve_classes, write_video)

__all__ = [
    "ANET_SUBSETS",
    "PAIR_VIDEO_PROB",
    "ActionInstance",
    "Distractor",
    "UntrimmedPlan",
    "RenderedUntrimmed",
    "plan_untrimmed",
    "render_untrimmed",
    "make_untrimmed_dataset",
]

log = logging.getLogger(__name__)

#: ActivityNet subset names, in the order of ``split``.
ANET_SUBSETS: Tuple[str, str, str] = ("training", "validation", "testing")
#: Share of videos (with >= 2 instances) whose instances alternate between the two directions of a pair.
PAIR_VIDEO_PROB = 0.3
_PARTNER = {a: b for pair in REVERSAL_PAIRS for a, b in (pair, pair[::-1])}
_REVERSED = {rev for _, rev in REVERSAL_PAIRS}
_DRIFT_PX = (1.0, 3.0)  # wobble amplitude of the background, pixels
_DRIFT_PERIOD_S = (15.0, 40.0)
_DISTRACTOR_RADIUS = (0.07, 0.12)  # of the frame side
_DISTRACTOR_JITTER = (0.5, 1.5)  # px, std of the i.i.d. per-frame offset


@dataclass(frozen=True)
class ActionInstance:
    """One action instance: ``num_frames`` frames from ``start_frame``; its object is the object of
    ``render_clip(label, seed, frames=num_frames, size=...)``, drawn in ``color``."""

    label: str
    start_frame: int
    num_frames: int
    seed: int
    color: Tuple[float, float, float]

    @property
    def end_frame(self) -> int:
        """One past the instance's last frame."""
        return self.start_frame + self.num_frames


@dataclass(frozen=True)
class Distractor:
    """A shape that is not an action: at ``anchor`` (x, y) with i.i.d. jitter, on frames
    ``first_frame .. first_frame + num_frames - 1``."""

    shape: str
    color: Tuple[float, float, float]
    anchor: Tuple[float, float]
    radius: float
    angle: float
    jitter: float
    first_frame: int
    num_frames: int
    seed: int


@dataclass(frozen=True)
class UntrimmedPlan:
    """Everything drawn for one video; :func:`render_untrimmed` turns it into frames."""

    video_id: str
    num_frames: int
    fps: int
    size: int
    background: str
    bg_colors: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    bg_params: Tuple[float, float, float, int]  # angle, period (px), phase, noise-texture seed
    drift: Tuple[float, float, float, float, float, float]  # amplitude x, y (px); period x, y (s); phase x, y
    distractors: Tuple[Distractor, ...]
    instances: Tuple[ActionInstance, ...]
    noise_std: float
    noise_seed: int

    @property
    def duration(self) -> float:
        """Seconds: ``num_frames / fps``."""
        return self.num_frames / self.fps

    def segments(self) -> Tuple[Segment, ...]:
        """Ground truth in seconds (module doc, "Time rule"), in time order."""
        return tuple(Segment(start=i.start_frame / self.fps, end=i.end_frame / self.fps, label=i.label)
                     for i in self.instances)

    def video(self, subset: str) -> UntrimmedVideo:
        return UntrimmedVideo(id=self.video_id, duration=self.duration, subset=subset, segments=self.segments(),
                              fps=float(self.fps))


@dataclass
class RenderedUntrimmed:
    """A rendered video: uint8 frames ``(N, S, S, 3)`` and the opacity-weighted coverage of the action
    objects ``(N, S, S)`` in ``[0, 1]`` (zero outside the instances)."""

    frames: np.ndarray
    action_mask: np.ndarray
    plan: UntrimmedPlan


# --------------------------------------------------------------------------------------------------
# drawing


def _color_against(rng: np.random.Generator, bg: Sequence[np.ndarray]) -> Tuple[float, float, float]:
    """A colour at least MIN_COLOR_DISTANCE from every background colour (the synth's rule)."""
    for _ in range(100):
        c = rng.uniform(0.0, 255.0, size=3)
        if min(np.linalg.norm(c - b) for b in bg) > MIN_COLOR_DISTANCE:
            break
    return tuple(float(v) for v in c)


def _pick_classes(rng: np.random.Generator, k: int, classes: Sequence[str]) -> List[str]:
    paired = [c for c in classes if _PARTNER[c] in classes]
    if k >= 2 and paired and rng.random() < PAIR_VIDEO_PROB:
        first = paired[int(rng.integers(len(paired)))]
        return [first if j % 2 == 0 else _PARTNER[first] for j in range(k)]
    return [classes[int(rng.integers(len(classes)))] for _ in range(k)]


def _place(rng: np.random.Generator, lengths: Sequence[int], num_frames: int, gap: int) -> List[int]:
    """Start frames of instances of ``lengths`` (in this order), >= ``gap`` frames apart and
    >= ``gap // 2`` from both ends, the free frames spread at random."""
    k, margin = len(lengths), gap // 2
    free = num_frames - sum(lengths) - (k - 1) * gap - 2 * margin
    if free < 0:
        raise ValueError(f"{k} instances of {list(lengths)} frames do not fit in {num_frames} frames")
    cuts = np.sort(rng.integers(0, free + 1, size=k))
    slack = np.diff(np.concatenate([[0], cuts])).tolist()  # free frames before each instance
    starts, t = [], margin
    for j, n in enumerate(lengths):
        t += int(slack[j]) + (gap if j else 0)
        starts.append(t)
        t += n
    return starts


def plan_untrimmed(index: int, *, seed: int = 0, classes: Union[None, int, Sequence[str]] = None,
               duration: Tuple[float, float] = (20.0, 40.0), instances: Tuple[int, int] = (1, 4),
               instance_seconds: Tuple[float, float] = (2.0, 4.0), min_gap: float = 1.0, fps: int = 10,
               size: int = 64) -> UntrimmedPlan:
    """Draw video ``index`` (module doc); a function of ``(seed, index)`` and the settings only."""
    names = resolve_classes(classes)
    _check_settings(duration, instances, instance_seconds, min_gap, fps, size)
    rng = np.random.default_rng([int(seed), int(index)])
    num_frames = max(2, int(round(rng.uniform(*duration) * fps)))
    # background
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg_a = rng.uniform(0.0, 255.0, size=3)
    bg_b = bg_a + BG_CONTRAST * (rng.uniform(0.0, 255.0, size=3) - bg_a)
    bg_params = (float(rng.uniform(0, np.pi)), float(rng.uniform(0.12, 0.3) * size),
                 float(rng.uniform(0, 2 * np.pi)), int(rng.integers(2**31)))
    drift = (*(float(v) for v in rng.uniform(*_DRIFT_PX, size=2)),
             *(float(v) for v in rng.uniform(*_DRIFT_PERIOD_S, size=2)),
             *(float(v) for v in rng.uniform(0, 2 * np.pi, size=2)))
    # distractors
    distractors = []
    for _ in range(int(rng.integers(1, 3))):
        r = float(rng.uniform(*_DISTRACTOR_RADIUS) * size)
        if rng.random() < 0.5:
            first, n = 0, num_frames
        else:
            n = int(rng.integers(max(1, num_frames // 6), max(2, num_frames // 2) + 1))
            first = int(rng.integers(0, num_frames - n + 1))
        distractors.append(Distractor(
            shape=SHAPES[int(rng.integers(len(SHAPES)))], color=_color_against(rng, (bg_a, bg_b)),
            anchor=(float(rng.uniform(r, size - r)), float(rng.uniform(r, size - r))), radius=r,
            angle=float(rng.uniform(0, 2 * np.pi)), jitter=float(rng.uniform(*_DISTRACTOR_JITTER)),
            first_frame=first, num_frames=n, seed=int(rng.integers(2**31))))
    # instances
    k = int(rng.integers(instances[0], instances[1] + 1))
    labels = _pick_classes(rng, k, names)
    lengths = [max(2, int(round(rng.uniform(*instance_seconds) * fps))) for _ in range(k)]
    starts = _place(rng, lengths, num_frames, int(round(min_gap * fps)))
    insts = tuple(ActionInstance(label=c, start_frame=s, num_frames=n, seed=int(rng.integers(2**31)),
                           color=_color_against(rng, (bg_a, bg_b)))
                  for c, s, n in zip(labels, starts, lengths))
    return UntrimmedPlan(
        video_id=f"untrimmed_{int(index):04d}", num_frames=num_frames, fps=int(fps), size=int(size),
        background=background, bg_colors=(tuple(map(float, bg_a)), tuple(map(float, bg_b))), bg_params=bg_params,
        drift=drift, distractors=tuple(distractors), instances=insts, noise_std=float(rng.uniform(1.0, 3.0)),
        noise_seed=int(rng.integers(2**31)))


# --------------------------------------------------------------------------------------------------
# rendering


def _texture(plan: UntrimmedPlan, side: int, offset: float) -> np.ndarray:
    """The background texture on a ``side`` x ``side`` canvas (pixel centres at ``i + 0.5 - offset``),
    float32 ``(side, side, 3)``."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5 - offset
    theta, period, phase, tex_seed = plan.bg_params
    S = plan.size
    if plan.background == "noise":
        k = max(S // 8, 2)
        coarse = np.random.default_rng(int(tex_seed)).random((k + 2, k + 2))  # one cell of margin per side
        pos_y = (yy[:, 0] + S / k) * k / S - 0.5  # bilinear, coarse cell centres every S / k px
        pos_x = (xx[0] + S / k) * k / S - 0.5
        grid = np.arange(k + 2)
        rows = np.stack([np.interp(pos_y, grid, coarse[:, j]) for j in range(k + 2)], axis=1)
        m = np.stack([np.interp(pos_x, grid, rows[i]) for i in range(side)], axis=0)
    elif plan.background == "stripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    else:  # gradient over the visible frame
        proj = xx * np.cos(2 * theta) + yy * np.sin(2 * theta)
        lo, hi = min(0.0, S * np.cos(2 * theta)) + min(0.0, S * np.sin(2 * theta)), \
            max(0.0, S * np.cos(2 * theta)) + max(0.0, S * np.sin(2 * theta))
        m = np.clip((proj - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    a, b = np.asarray(plan.bg_colors[0]), np.asarray(plan.bg_colors[1])
    return (a * (1.0 - m[..., None]) + b * m[..., None]).astype(np.float32)


def _background_frames(plan: UntrimmedPlan) -> np.ndarray:
    """The drifting texture, float32 ``(N, S, S, 3)``: each frame a sub-pixel (bilinear) crop."""
    S, N = plan.size, plan.num_frames
    ax, ay, px, py, fx, fy = plan.drift
    margin = int(math.ceil(max(ax, ay))) + 1
    canvas = _texture(plan, S + 2 * margin, margin)
    t = np.arange(N) / plan.fps
    ox = margin + ax * np.sin(2 * np.pi * t / px + fx)
    oy = margin + ay * np.sin(2 * np.pi * t / py + fy)
    out = np.empty((N, S, S, 3), dtype=np.float32)
    for j in range(N):
        x0, y0 = int(np.floor(ox[j])), int(np.floor(oy[j]))
        wx, wy = np.float32(ox[j] - x0), np.float32(oy[j] - y0)
        top = canvas[y0:y0 + S, x0:x0 + S] * (1 - wx) + canvas[y0:y0 + S, x0 + 1:x0 + 1 + S] * wx
        bot = canvas[y0 + 1:y0 + 1 + S, x0:x0 + S] * (1 - wx) + canvas[y0 + 1:y0 + 1 + S, x0 + 1:x0 + 1 + S] * wx
        out[j] = top * (1 - wy) + bot * wy
    return out


def _distractor_coverage(d: Distractor, size: int) -> np.ndarray:
    """Coverage ``(n, S, S)`` of a distractor: the synth's shape renderer with a jittered, fixed shape."""
    n = d.num_frames
    jit = np.random.default_rng(d.seed).normal(0.0, d.jitter, size=(2, n))
    p = ClipParams(
        motion="translate_x", frames=n, size=size, shape=d.shape, color=d.color, background="gradient",
        bg_colors=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), bg_params=(0.0, 1.0, 0.0, 0.0),
        center=(d.anchor[0] + jit[0], d.anchor[1] + jit[1]), radius=np.full(n, d.radius),
        angle=np.full(n, d.angle), alpha=np.ones(n), aspect=np.ones(n), noise_std=0.0, noise_seed=0)
    return render(p).mask


def _instance_coverage(inst: ActionInstance, size: int) -> np.ndarray:
    """Opacity-weighted coverage ``(n, S, S)`` of an instance's object: render_clip's object, reversed in
    time for the second class of a pair."""
    p = draw_params(inst.label, np.random.default_rng(inst.seed), frames=inst.num_frames, size=size)
    clip = render(p)
    cov = clip.mask * clip.alpha[:, None, None]
    return np.ascontiguousarray(cov[::-1]) if inst.label in _REVERSED else cov


def _paint(video: np.ndarray, first: int, cov: np.ndarray, color: Sequence[float]) -> None:
    a = cov[..., None]
    seg = video[first:first + len(cov)]
    seg *= 1.0 - a
    seg += a * np.asarray(color, dtype=np.float32)


def render_untrimmed(plan: UntrimmedPlan, *, actions: bool = True) -> RenderedUntrimmed:
    """Frames of ``plan``: background, distractors, then (``actions``) the instances' objects, then the
    per-pixel noise. ``actions=False`` gives the same video without its instances (for tests)."""
    video = _background_frames(plan)
    for d in plan.distractors:
        _paint(video, d.first_frame, _distractor_coverage(d, plan.size), d.color)
    mask = np.zeros(video.shape[:3], dtype=np.float32)
    if actions:
        for inst in plan.instances:
            cov = _instance_coverage(inst, plan.size).astype(np.float32)
            _paint(video, inst.start_frame, cov, inst.color)
            mask[inst.start_frame:inst.end_frame] = cov
    noise = np.random.default_rng(plan.noise_seed).normal(0.0, plan.noise_std, size=video.shape)
    video += noise.astype(np.float32)
    frames = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    return RenderedUntrimmed(frames=frames, action_mask=mask, plan=plan)


# --------------------------------------------------------------------------------------------------
# the dataset


def _pair(value, name: str, kind=float) -> Tuple:
    try:
        lo, hi = (kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    if not lo <= hi:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    return lo, hi


def _check_settings(duration, instances, instance_seconds, min_gap, fps, size) -> None:
    d_lo, _ = _pair(duration, "duration")
    i_lo, i_hi = _pair(instances, "instances", int)
    s_lo, s_hi = _pair(instance_seconds, "instance_seconds")
    if not (isinstance(fps, int) and not isinstance(fps, bool) and fps >= 1):
        raise ValueError(f"fps must be an integer >= 1, got {fps!r}")
    if not (isinstance(size, int) and size >= 16 and size % 2 == 0):
        raise ValueError(f"size must be an even integer >= 16, got {size!r}")
    if d_lo <= 0 or s_lo <= 0 or i_lo < 0 or not (math.isfinite(min_gap) and min_gap >= 0):
        raise ValueError(f"duration and instance_seconds must be positive, instances >= 0 and min_gap >= 0; got "
                         f"duration={duration}, instance_seconds={instance_seconds}, instances={instances}, "
                         f"min_gap={min_gap}")
    gap = int(round(min_gap * fps))
    need = i_hi * max(2, int(round(s_hi * fps))) + max(i_hi - 1, 0) * gap + 2 * (gap // 2)
    have = max(2, int(round(d_lo * fps)))
    if need > have:
        raise ValueError(f"{i_hi} instances of up to {s_hi} s with {min_gap} s gaps need {need / fps:.1f} s, but "
                         f"videos may be as short as {d_lo} s: lower instances or instance_seconds, or raise "
                         "duration")


def _split_counts(n: int, split: Sequence[float]) -> Tuple[int, int, int]:
    try:
        ratios = [float(r) for r in split]
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers (training, validation, testing), got {split!r}") from None
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split must be three non-negative shares summing to 1, got {split!r}")
    n_val, n_test = int(round(n * ratios[1])), int(round(n * ratios[2]))
    if n >= 3:  # every asked-for subset gets a video
        n_val, n_test = max(n_val, int(ratios[1] > 0)), max(n_test, int(ratios[2] > 0))
    n_train = n - n_val - n_test
    if n_train < int(ratios[0] > 0):
        raise ValueError(f"num_videos={n} is too small to split {list(split)}")
    return n_train, n_val, n_test


def make_untrimmed_dataset(
    out: Union[str, Path],
    *,
    classes: Union[None, int, Sequence[str]] = None,
    num_videos: int = 60,
    duration: Tuple[float, float] = (20.0, 40.0),
    instances: Tuple[int, int] = (1, 4),
    instance_seconds: Tuple[float, float] = (2.0, 4.0),
    min_gap: float = 1.0,
    fps: int = 10,
    size: int = 64,
    seed: int = 0,
    split: Tuple[float, float, float] = (0.6, 0.2, 0.2),
    progress: bool = False,
) -> Dict[str, Path]:
    """Write the synthetic untrimmed dataset under ``out`` (module doc); return the paths
    ``{"root", "annotations", "videos", "classes", "meta"}`` (``videos``: the list file).

    ``classes``: as :func:`tada.data.synth.resolve_classes` (default the 10 default classes). The
    subsets are a seeded random split of the videos (``split`` = training/validation/testing shares).
    Settings that cannot hold ``instances[1]`` instances of ``instance_seconds[1]`` in the shortest
    video raise ``ValueError`` before anything is written."""
    names = resolve_classes(classes)
    if not (isinstance(num_videos, int) and num_videos >= 1):
        raise ValueError(f"num_videos must be an integer >= 1, got {num_videos!r}")
    _check_settings(duration, instances, instance_seconds, min_gap, fps, size)
    counts = _split_counts(num_videos, split)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    order = np.random.default_rng([int(seed), 10**6]).permutation(num_videos)
    subset_of = {}
    for name, lo, hi in zip(ANET_SUBSETS, np.cumsum([0, *counts[:2]]), np.cumsum(counts)):
        subset_of.update({int(i): name for i in order[lo:hi]})
    iterator = range(num_videos)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="tada synth --untrimmed", unit="video")
    videos: Dict[str, UntrimmedVideo] = {}
    for i in iterator:
        plan = plan_untrimmed(i, seed=seed, classes=names, duration=duration, instances=instances,
                          instance_seconds=instance_seconds, min_gap=min_gap, fps=fps, size=size)
        write_video(out / "videos" / f"{plan.video_id}.mp4", render_untrimmed(plan).frames, fps=fps)
        videos[plan.video_id] = plan.video(subset_of[i])
    paths = {"root": out, "annotations": out / "annotations.json", "videos": out / "videos.txt",
             "classes": out / "classes.txt", "meta": out / "synth_untrimmed.json"}
    write_activitynet_json(videos, paths["annotations"])
    paths["videos"].write_text("".join(f"videos/{vid}.mp4\n" for vid in videos))
    paths["classes"].write_text("".join(n + "\n" for n in names))
    per_class = {n: sum(s.label == n for v in videos.values() for s in v.segments) for n in names}
    meta = {"classes": names, "num_videos": num_videos, "duration": list(duration), "instances": list(instances),
            "instance_seconds": list(instance_seconds), "min_gap": min_gap, "fps": fps, "size": size, "seed": seed,
            "split": list(split), "pair_video_prob": PAIR_VIDEO_PROB,
            "time_rule": "frame j at j / fps s; an instance on frames j0..j0+n-1 is the segment [j0/fps, (j0+n)/fps]",
            "codec": "h264 (libx264, yuv420p, crf 18, preset medium, threads 1, no mbtree)",
            "counts": {s: sum(v.subset == s for v in videos.values()) for s in ANET_SUBSETS},
            "instances_per_class": per_class,
            "frames": sum(round(v.duration * fps) for v in videos.values())}
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %d synthetic untrimmed videos to %s in %.1f s", num_videos, out, time.perf_counter() - t0)
    return paths
