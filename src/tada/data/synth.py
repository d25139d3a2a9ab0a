"""A synthetic temporal-reasoning benchmark: classes that only the order of the frames tells apart.

Twelve classes in six *time-reversal pairs*; the first ten (five pairs) are the default set::

    moving_right <-> moving_left        moving_down        <-> moving_up
    growing      <-> shrinking          fading_in          <-> fading_out
    widening     <-> narrowing          rotating_clockwise <-> rotating_counterclockwise  (opt-in)

``widening`` stretches the object horizontally while it thins vertically (area constant): a tall
shape turns wide; ``narrowing`` is its reverse. Rotation (in place, about the object's centre) is
opt-in (``--classes`` by name, or ``--classes 12``): its direction is not a trend of any spatially
pooled feature -- an orientation-tuned channel rises *and* falls as the shape turns, whichever the
direction -- and TAdaConv's routing sees only spatially pooled frames. In the default job a small
TAda2D learnt every other pair's direction (>= 94 %) but rotation's hardly (59 %), so the default
set leaves it out; it stays here as a harder task.

A video of the first class of a pair (the *forward* class) is drawn at random: shape (square,
rectangle, circle, triangle, diamond, cross), object colour, a low-contrast textured background
(smooth noise, stripes or a gradient), start position, size, speed and the strength of the per-pixel
noise. Objects are large (half-extent 14-32 % of the frame side, by class), contrast with the
background, and translate over 40-60 % of the frame: a tiny object on a busy background makes a
task that small models trained for minutes on a CPU do not learn at all (``tada demo``). A video of
the second class is literally the time-reversed rendering of its own, independent forward draw. Hence
the *set* of frames of a ``moving_left`` video is distributed exactly like the set of frames of a
``moving_right`` video: no single frame, nor any order-free statistic of the frames (a bag of frames,
an average over time), says which class of the pair it is. Only the order does -- which is what a
temporal model has to learn and a frame-averaging 2D baseline cannot beyond chance within a pair.

Default size (``make_synthetic_dataset`` and ``tada synth``): 10 classes x 60 videos, 16 frames of
64x64 at 30 fps, H.264 (libx264, yuv420p, crf 18, one thread), split 70/15/15 per class (42/9/9 videos
per class); about 3.5 MB on disk. Generating it takes about 12 s of CPU time (about 20 ms per video:
rendering in NumPy, then libx264); it is sized so that a small video model can train on it on a CPU in
minutes (``tada demo`` uses 150 videos per class: 1,500 written in about 23 s).
``tada synth --per-class 10 --frames 8 --size 32`` makes a toy copy in about a second.

Layout written under ``out``::

    videos/{class}/{class}_{i:04d}.mp4
    train.txt, val.txt, test.txt      Kinetics-style "videos/{class}/{class}_{i:04d}.mp4 {label}" lines
    classes.txt                       one class name per line; line number (from 0) = label
    synth.json                        the generation settings

Everything is a function of ``seed``: the same seed gives the same decoded frames (and, with the same
FFmpeg build, byte-identical files), and video ``i`` of a class does not depend on which other classes
or how many videos per class were asked for.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "SYNTH_CLASSES",
    "DEFAULT_CLASSES",
    "REVERSAL_PAIRS",
    "SHAPES",
    "BACKGROUNDS",
    "ClipParams",
    "RenderedClip",
    "draw_params",
    "render",
    "render_clip",
    "write_video",
    "resolve_classes",
    "make_synthetic_dataset",
    "reverse_clip",
    "split_counts",
    "FORWARD_CLASS",
]

log = logging.getLogger(__name__)

#: (forward class, its time reverse). The forward class is rendered; the reverse class is the
#: time-reversed rendering of an independent forward draw.
REVERSAL_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("moving_right", "moving_left"),
    ("moving_down", "moving_up"),
    ("growing", "shrinking"),
    ("fading_in", "fading_out"),
    ("widening", "narrowing"),
    ("rotating_clockwise", "rotating_counterclockwise"),
)
#: All classes in their canonical order (pairs adjacent); ``--classes N`` takes the first N.
SYNTH_CLASSES: Tuple[str, ...] = tuple(name for pair in REVERSAL_PAIRS for name in pair)
#: The default set (``tada synth`` without ``--classes``, ``tada demo``): all but the rotation pair.
DEFAULT_CLASSES: Tuple[str, ...] = SYNTH_CLASSES[:10]
#: every class -> the forward class of its pair (itself for a forward class)
FORWARD_CLASS = {rev: fwd for fwd, rev in REVERSAL_PAIRS}
FORWARD_CLASS.update({fwd: fwd for fwd, _ in REVERSAL_PAIRS})
_MOTION = {"moving_right": "translate_x", "moving_down": "translate_y", "growing": "scale",
           "fading_in": "fade", "widening": "stretch", "rotating_clockwise": "rotate"}

#: Background texture contrast (0: flat, 1: two unrelated colours) and the least RGB distance of the
#: object colour from both background colours: objects stand out, so that a small network trained
#: for minutes on a CPU sees them (the demo's recipe, ``tada demo``).
BG_CONTRAST = 0.3
MIN_COLOR_DISTANCE = 120.0

SHAPES: Tuple[str, ...] = ("square", "rectangle", "circle", "triangle", "diamond", "cross")
BACKGROUNDS: Tuple[str, ...] = ("noise", "stripes", "gradient")

# Shapes as unions of convex polygons in a unit frame (half-extent about 1), y pointing down.
_POLYGONS: Dict[str, List[List[Tuple[float, float]]]] = {
    "square": [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]],
    "rectangle": [[(-1.0, -0.5), (1.0, -0.5), (1.0, 0.5), (-1.0, 0.5)]],
    "triangle": [[(float(np.cos(a)), float(np.sin(a))) for a in np.deg2rad([-90.0, 30.0, 150.0])]],
    "diamond": [[(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]],
    "cross": [[(-1.0, -0.3), (1.0, -0.3), (1.0, 0.3), (-1.0, 0.3)],
              [(-0.3, -1.0), (0.3, -1.0), (0.3, 1.0), (-0.3, 1.0)]],
}


@dataclass
class ClipParams:
    """One random draw of a forward-class video. Lengths are in pixels, angles in radians."""

    motion: str  # translate_x | translate_y | scale | rotate | fade | stretch
    frames: int
    size: int
    shape: str
    color: Tuple[float, float, float]
    background: str
    bg_colors: Tuple[Tuple[float, float, float], Tuple[float, float, float]]
    bg_params: Tuple[float, ...]  # background-specific numbers (angle, period, phase, noise seed)
    center: Tuple[np.ndarray, np.ndarray]  # per-frame x, y of the object centre
    radius: np.ndarray  # per-frame half-extent
    angle: np.ndarray  # per-frame rotation
    alpha: np.ndarray  # per-frame opacity
    aspect: np.ndarray  # per-frame horizontal / vertical stretch of the screen-aligned shape (1: none)
    noise_std: float
    noise_seed: int


@dataclass
class RenderedClip:
    """A rendered video and its ground truth, per frame."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    mask: np.ndarray  # float32 (T, H, W): object coverage in [0, 1] (ignores opacity)
    centroid: np.ndarray  # float32 (T, 2): (x, y) of the object centre
    radius: np.ndarray  # float32 (T,)
    angle: np.ndarray  # float32 (T,)
    alpha: np.ndarray  # float32 (T,)
    aspect: np.ndarray  # float32 (T,)


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3)


def draw_params(class_name: str, rng: np.random.Generator, *, frames: int, size: int) -> ClipParams:
    """Draw the parameters of a video of the *forward* class of ``class_name``'s pair."""
    if class_name not in FORWARD_CLASS:
        raise ValueError(f"unknown synthetic class {class_name!r}; known: {', '.join(SYNTH_CLASSES)}")
    motion = _MOTION[FORWARD_CLASS[class_name]]
    T, S = frames, float(size)
    t = np.linspace(0.0, 1.0, T)
    shapes = [s for s in SHAPES if s != "circle"] if motion == "rotate" else list(SHAPES)
    shape = shapes[int(rng.integers(len(shapes)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    bg_a, bg_b = _color(rng), _color(rng)
    # A low-contrast background texture: the second colour lies BG_CONTRAST of the way to a random one.
    bg_b = bg_a + BG_CONTRAST * (bg_b - bg_a)
    # An object colour that stands out from both background colours.
    for _ in range(100):
        color = _color(rng)
        if min(np.linalg.norm(color - bg_a), np.linalg.norm(color - bg_b)) > MIN_COLOR_DISTANCE:
            break
    bg_params = (float(rng.uniform(0, np.pi)), float(rng.uniform(0.12, 0.3) * S),
                 float(rng.uniform(0, 2 * np.pi)), float(rng.integers(2**31)))
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    alpha = np.ones(T)
    aspect = np.ones(T)
    if motion in ("translate_x", "translate_y"):
        r = rng.uniform(0.14, 0.2) * S
        travel = min(rng.uniform(0.4, 0.6) * S, S - 2 * r)  # a large share of the frame
        start = rng.uniform(r, S - r - travel)
        along = start + travel * t
        across = np.full(T, rng.uniform(r, S - r))
        center = (along, across) if motion == "translate_x" else (across, along)
        radius = np.full(T, r)
    elif motion == "scale":
        r0, r1 = rng.uniform(0.06, 0.12) * S, rng.uniform(0.24, 0.32) * S
        radius = r0 + (r1 - r0) * t
        center = (np.full(T, rng.uniform(r1, S - r1)), np.full(T, rng.uniform(r1, S - r1)))
    elif motion == "rotate":
        r = rng.uniform(0.22, 0.3) * S
        speed = np.deg2rad(rng.uniform(8.0, 14.0)) * (16 - 1) / max(T - 1, 1)  # per-frame step, 16-frame scale
        speed = min(speed, np.deg2rad(20.0))
        angle = angle[0] + speed * np.arange(T)  # increasing angle = clockwise on screen (y down)
        center = (np.full(T, rng.uniform(r, S - r)), np.full(T, rng.uniform(r, S - r)))
        radius = np.full(T, r)
    elif motion == "stretch":
        # Width x sqrt(a), height / sqrt(a): the area stays; a goes from 1/k (tall) to k (wide).
        r = rng.uniform(0.16, 0.22) * S
        k = rng.uniform(2.0, 2.8)
        aspect = np.exp(np.log(k) * (2 * t - 1))
        reach = 1.2 * r * np.sqrt(k)
        center = (np.full(T, rng.uniform(reach, S - reach)), np.full(T, rng.uniform(reach, S - reach)))
        radius = np.full(T, r)
    else:  # fade
        r = rng.uniform(0.16, 0.26) * S
        a0, a1 = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
        alpha = a0 + (a1 - a0) * t
        center = (np.full(T, rng.uniform(r, S - r)), np.full(T, rng.uniform(r, S - r)))
        radius = np.full(T, r)
    return ClipParams(
        motion=motion, frames=T, size=size, shape=shape, color=tuple(color), background=background,
        bg_colors=(tuple(bg_a), tuple(bg_b)), bg_params=bg_params, center=center, radius=radius,
        angle=angle, alpha=alpha, aspect=aspect, noise_std=float(rng.uniform(1.0, 3.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small 2-D array to (size, size)."""
    k = a.shape[0]
    pos = (np.arange(size) + 0.5) * k / size - 0.5
    rows = np.stack([np.interp(pos, np.arange(k), a[:, j]) for j in range(k)], axis=1)
    return np.stack([np.interp(pos, np.arange(k), rows[i]) for i in range(size)], axis=0)


def _background(p: ClipParams) -> np.ndarray:
    S = p.size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    theta, period, phase, seed = p.bg_params
    if p.background == "noise":
        coarse = np.random.default_rng(int(seed)).random((max(S // 8, 2), max(S // 8, 2)))
        m = _upsample(coarse, S)
    elif p.background == "stripes":
        m = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
    else:  # gradient
        proj = xx * np.cos(2 * theta) + yy * np.sin(2 * theta)
        m = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
    a, b = np.asarray(p.bg_colors[0]), np.asarray(p.bg_colors[1])
    return a * (1.0 - m[..., None]) + b * m[..., None]


def _coverage(p: ClipParams, supersample: int = 3) -> np.ndarray:
    """Object coverage (T, H, W) in [0, 1], anti-aliased by supersampling (computed in the object's box)."""
    S, T, k = p.size, p.frames, supersample
    out = np.zeros((T, S, S), dtype=np.float32)
    for i in range(T):
        cx, cy, r = p.center[0][i], p.center[1][i], p.radius[i]
        sx = np.sqrt(p.aspect[i])  # screen-aligned stretch: x by sx, y by 1 / sx
        reach = 1.2 * r * max(sx, 1.0 / sx) + 1.0  # every shape lies within 1.13 half-extents of its centre
        x0, x1 = max(int(np.floor(cx - reach)), 0), min(int(np.ceil(cx + reach)), S)
        y0, y1 = max(int(np.floor(cy - reach)), 0), min(int(np.ceil(cy + reach)), S)
        if x1 <= x0 or y1 <= y0:
            continue
        gx = x0 + (np.arange((x1 - x0) * k) + 0.5) / k
        gy = y0 + (np.arange((y1 - y0) * k) + 0.5) / k
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        dx, dy = (xx - cx) / sx, (yy - cy) * sx
        c, s = np.cos(p.angle[i]), np.sin(p.angle[i])
        # Rotate the pixel into the shape's frame (inverse rotation) and scale to unit size.
        u = (c * dx + s * dy) / r
        v = (-s * dx + c * dy) / r
        if p.shape == "circle":
            inside = u * u + v * v <= 1.0
        else:
            inside = np.zeros_like(u, dtype=bool)
            for poly in _POLYGONS[p.shape]:
                pos = np.ones_like(inside)
                neg = np.ones_like(inside)
                for (ax, ay), (bx, by) in zip(poly, poly[1:] + poly[:1]):
                    cross = (bx - ax) * (v - ay) - (by - ay) * (u - ax)
                    pos &= cross >= 0
                    neg &= cross <= 0
                inside |= pos | neg
        out[i, y0:y1, x0:x1] = inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3))
    return out


def render(p: ClipParams) -> RenderedClip:
    """Render a forward draw into frames."""
    bg = _background(p)
    cov = _coverage(p)
    a = (cov * p.alpha[:, None, None].astype(np.float32))[..., None]
    video = bg[None] * (1.0 - a) + np.asarray(p.color)[None, None, None] * a
    video = video + np.random.default_rng(p.noise_seed).normal(0.0, p.noise_std, size=video.shape)
    frames = np.clip(np.rint(video), 0, 255).astype(np.uint8)
    return RenderedClip(
        frames=frames, mask=cov, centroid=np.stack(p.center, axis=1).astype(np.float32),
        radius=p.radius.astype(np.float32), angle=p.angle.astype(np.float32), alpha=p.alpha.astype(np.float32),
        aspect=p.aspect.astype(np.float32),
    )


def reverse_clip(clip: RenderedClip) -> RenderedClip:
    return RenderedClip(*(np.ascontiguousarray(getattr(clip, f)[::-1]) for f in
                          ("frames", "mask", "centroid", "radius", "angle", "alpha", "aspect")))


def render_clip(class_name: str, seed: Union[int, Sequence[int], np.random.Generator], *,
                frames: int = 16, size: int = 64) -> RenderedClip:
    """Render one video of ``class_name``: a forward draw, time-reversed for the second class of a pair."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    clip = render(draw_params(class_name, rng, frames=frames, size=size))
    return clip if FORWARD_CLASS[class_name] == class_name else reverse_clip(clip)


def write_video(path: Union[str, Path], frames: np.ndarray, *, fps: int = 30, crf: int = 18,
                faststart: bool = False) -> None:
    """Write uint8 (T, H, W, 3) RGB frames as H.264 (libx264, yuv420p) in an .mp4, deterministically.
    ``faststart``: the index (moov) first, as for streaming; a copy cut short then still opens and
    fails only mid-stream."""
    import av

    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {W}x{H}")
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(int(fps), 1),
            # With the macroblock-tree lookahead on, x264 (threads=1 or not) now and then wrote different
            # bytes for the same frames (about 1 run in 15); without it the output is reproducible.
            options={"crf": str(crf), "preset": "medium", "threads": "1", "tune": "psnr",
                     "x264-params": "threads=1:lookahead-threads=1:mbtree=0:rc-lookahead=0"},
        )
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, int(fps))
        for i in range(T):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, int(fps))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def resolve_classes(classes: Union[None, int, str, Sequence[Union[str, int]]]) -> List[str]:
    """``None`` -> the default set (:data:`DEFAULT_CLASSES`, 10); an int N -> the first N in canonical
    (pair-by-pair) order; names -> those."""
    if classes is None:
        return list(DEFAULT_CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    if isinstance(classes, int) or (len(classes) == 1 and str(classes[0]).isdigit()):
        n = int(classes if isinstance(classes, int) else classes[0])
        if not 1 <= n <= len(SYNTH_CLASSES):
            raise ValueError(f"number of classes must be in 1..{len(SYNTH_CLASSES)}, got {n}")
        return list(SYNTH_CLASSES[:n])
    names = [str(c) for c in classes]
    unknown = [c for c in names if c not in SYNTH_CLASSES]
    if unknown:
        raise ValueError(f"unknown synthetic class(es) {unknown}; known: {', '.join(SYNTH_CLASSES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {names}")
    return names


def split_counts(n: int, ratios: Tuple[float, float, float]) -> Tuple[int, int, int]:
    n_val = int(round(n * ratios[1]))
    n_test = int(round(n * ratios[2]))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"per_class={n} is too small to split {ratios}")
    return n_train, n_val, n_test


def make_synthetic_dataset(
    out: Union[str, Path],
    *,
    classes: Union[None, int, Sequence[str]] = None,
    per_class: int = 60,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    fps: int = 30,
    split: Tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: bool = False,
) -> Dict[str, Path]:
    """Write the synthetic dataset under ``out``; return the paths of its lists and files.

    Returns ``{"root", "train", "val", "test", "classes", "meta"}``. The lists are stratified: each class
    is split ``split`` (train/val/test) on its own.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16, got {size}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    names = resolve_classes(classes)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lists: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    jobs = [(name, i) for name in names for i in range(per_class)]
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="tada synth", unit="video")
    for name, i in iterator:
        rel = Path("videos") / name / f"{name}_{i:04d}.mp4"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        # Seeded by (seed, canonical class id, i): independent of the other classes and of per_class.
        clip = render_clip(name, [seed, SYNTH_CLASSES.index(name), i], frames=frames, size=size)
        write_video(out / rel, clip.frames, fps=fps)
    for label, name in enumerate(names):
        order = np.random.default_rng([seed, SYNTH_CLASSES.index(name), 10**6]).permutation(per_class)
        n_train, n_val, _ = split_counts(per_class, split)
        parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
        for key, idx in parts.items():
            lists[key] += [f"videos/{name}/{name}_{i:04d}.mp4 {label}" for i in sorted(idx.tolist())]
    paths = {"root": out}
    for key, lines in lists.items():
        paths[key] = out / f"{key}.txt"
        paths[key].write_text("".join(line + "\n" for line in lines))
    paths["classes"] = out / "classes.txt"
    paths["classes"].write_text("".join(n + "\n" for n in names))
    paths["meta"] = out / "synth.json"
    meta = {"classes": names, "per_class": per_class, "frames": frames, "size": size, "seed": seed, "fps": fps,
            "split": list(split), "pairs": [list(p) for p in REVERSAL_PAIRS if p[0] in names or p[1] in names],
            "codec": "h264 (libx264, yuv420p, crf 18, preset medium, threads 1, no mbtree)",
            "counts": {k: len(v) for k, v in lists.items()}}
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %d synthetic videos to %s in %.1f s", len(jobs), out, time.perf_counter() - t0)
    return paths
