"""Check a dataset before training on it: parse the list, probe and decode every video, report.

``inspect_dataset`` opens every video the annotation list names (probe, then decode the first,
middle and last frame), and returns a report: counts, classes and per-class counts, duration / fps /
resolution statistics, and every unreadable or missing file with its reason. ``tada data inspect``
prints it (or ``--json``) and exits with 1 when any file is bad, so it can gate a training job, and
with 2 when the list itself cannot be used: missing, empty, not UTF-8, a malformed line, or a label
outside the class names (given, or a ``classes.txt`` beside the list) -- the message names the file
and line.
"""
from __future__ import annotations

import os
import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .datasets import Sample, detect_format, load_annotations
from .decode import VideoDecodeError, probe, read_frames

__all__ = ["inspect_dataset", "check_video", "format_report"]


def check_video(path: str, *, backend: Optional[str] = None, clips: Sequence[Sample] = ()) -> Dict[str, Any]:
    """Probe ``path`` and decode its first, middle and last frames.

    Returns ``{"ok": bool, "reason": str | None, "num_frames", "fps", "duration", "width", "height"}``.
    ``clips`` (samples cut from this video by time) are checked to start before the video ends."""
    out: Dict[str, Any] = {"ok": False, "reason": None, "num_frames": None, "fps": None, "duration": None,
                           "width": None, "height": None}
    try:
        if not os.path.exists(path):
            raise VideoDecodeError(path, "file not found")
        info = probe(path, backend)
        out.update(num_frames=int(info.num_frames), fps=float(info.fps), duration=float(info.duration),
                   width=int(info.width), height=int(info.height))
        if info.num_frames <= 0:
            raise VideoDecodeError(path, "video has no frames")
        n = int(info.num_frames)
        frames = read_frames(path, sorted({0, n // 2, n - 1}), backend)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise VideoDecodeError(path, f"decoded an unexpected shape {tuple(frames.shape)}")
        for s in clips:
            if s.start_sec is not None and info.duration > 0 and s.start_sec > info.duration + 1.0 / max(info.fps, 1):
                raise VideoDecodeError(path, f"clip starts at {s.start_sec:.2f} s, after the end of the "
                                             f"video ({info.duration:.2f} s)")
        out["ok"] = True
    except VideoDecodeError as e:
        out["reason"] = e.reason
    except Exception as e:  # noqa: BLE001 - report any decoder failure, never crash the inspection
        out["reason"] = f"{type(e).__name__}: {e}"
    return out


def _summary(values: List[float]) -> Optional[Dict[str, float]]:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _label_key(label) -> Any:
    return tuple(label) if isinstance(label, (list, tuple)) else label


def inspect_dataset(
    list_path: os.PathLike | str,
    *,
    root: Optional[os.PathLike | str] = None,
    format: Optional[str] = None,
    backend: Optional[str] = None,
    workers: int = 1,
    progress: bool = True,
    **parser_kwargs,
) -> Dict[str, Any]:
    """Parse ``list_path`` (format detected when ``format`` is None), check every video under ``root``
    (default: the list's folder; for ``folder`` the folder itself) and return a report dict::

        {"list", "root", "format", "num_samples", "num_videos", "num_ok", "num_bad", "num_classes",
         "classes_seen", "per_class": {"min", "max", "min_class", "max_class"},
         "stats": {"duration", "fps", "width", "height", "num_frames"}: {"min", "median", "max"},
         "bad": [{"path", "reason", "samples"}]}
    """
    list_path = Path(list_path)
    fmt = detect_format(list_path) if format is None else format
    if root is None:
        root = list_path if fmt == "folder" else list_path.parent
    samples, labels = load_annotations(list_path, fmt, root=root, **parser_kwargs)
    by_video: Dict[str, List[Sample]] = {}
    for s in samples:
        by_video.setdefault(s.path, []).append(s)
    paths = list(by_video)

    def job(rel: str) -> Dict[str, Any]:
        full = rel if os.path.isabs(rel) else os.path.join(root, rel)
        return check_video(full, backend=backend, clips=by_video[rel])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc=f"inspect {list_path.name}", unit="video")
    results: Dict[str, Dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
        for rel, res in zip(paths, pool.map(job, paths)):
            results[rel] = res
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    good = [r for r in results.values() if r["ok"]]
    bad = [{"path": rel, "reason": r["reason"], "samples": len(by_video[rel])}
           for rel, r in results.items() if not r["ok"]]
    counts = Counter(_label_key(s.label) for s in samples)
    num_classes: Any = list(labels.sizes) if labels.multi_head else labels.sizes[0]
    per_class = None
    if counts:
        lo = min(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
        hi = max(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
        per_class = {"min": lo[1], "max": hi[1], "min_class": labels.name_of(lo[0]),
                     "max_class": labels.name_of(hi[0])}
    return {
        "list": str(list_path),
        "root": str(root),
        "format": fmt,
        "num_samples": len(samples),
        "num_videos": len(paths),
        "num_ok": len(good),
        "num_bad": len(bad),
        "num_classes": num_classes,
        "classes_seen": len(counts),
        "per_class": per_class,
        "stats": {key: _summary([r[key] for r in good]) for key in ("duration", "fps", "width", "height",
                                                                     "num_frames")},
        "bad": bad,
    }


def format_report(report: Dict[str, Any]) -> str:
    """The report as text, as ``tada data inspect`` prints it."""
    lines = [
        f"list        {report['list']}  (format {report['format']}, root {report['root']})",
        f"samples     {report['num_samples']} in {report['num_videos']} videos: "
        f"{report['num_ok']} readable, {report['num_bad']} bad",
        f"classes     {report['num_classes']} declared, {report['classes_seen']} with samples",
    ]
    pc = report["per_class"]
    if pc:
        lines.append(f"per class   min {pc['min']} ({pc['min_class']}), max {pc['max']} ({pc['max_class']})")
    units = {"duration": " s", "fps": "", "width": " px", "height": " px", "num_frames": ""}

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{v:.3f}".rstrip("0")

    for key, st in report["stats"].items():
        if st:
            u = units[key]
            lines.append(f"{key:<11} min {num(st['min'])}{u}, median {num(st['median'])}{u}, max {num(st['max'])}{u}")
    if report["bad"]:
        lines.append(f"bad files ({report['num_bad']}):")
        lines += [f"  {b['path']}: {b['reason']}" for b in report["bad"]]
    else:
        lines.append("all files readable")
    return "\n".join(lines)
