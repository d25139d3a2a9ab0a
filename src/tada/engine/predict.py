"""Class predictions for video files from a training checkpoint (``tada predict``).

The checkpoint carries its config and class names, so nothing else is needed: each video is read with
the config's test sampling (clips x crops views), the softmax scores of the views are summed, and the
top-k classes are returned with their averaged probabilities.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..data import datasets as D
from . import build
from .build import test_transforms

__all__ = ["load_for_inference", "predict_videos", "read_test_views"]


def read_test_views(video, d, backend=None) -> Tuple[Optional[torch.Tensor], D.VideoClipDataset]:
    """The test views ``(V, 3, T, H, W)`` of one video file with data config ``d``'s protocol (the
    same sampling and crops as ``tada test``; None when it cannot be read) and its one-video dataset,
    whose ``failures`` say why. Used by ``tada predict``, ``tada predict --labels`` and ``tada explain``."""
    ds = D.VideoClipDataset([D.Sample(str(video), 0)], frames=d.frames, sampling=d.sampling, rate=d.rate,
                            target_fps=d.target_fps, train=False, transform=test_transforms(d),
                            num_clips=d.test_clips, num_crops=d.test_crops, backend=backend or d.backend)
    try:  # an unreadable video is reported (a one-video dataset cannot fill in for it)
        items = [ds[i] for i in range(len(ds))]
    except RuntimeError:
        return None, ds
    if not all(it["valid"] for it in items):
        return None, ds
    return torch.stack([it["video"] for it in items]), ds


def load_for_inference(checkpoint, device="cpu"):
    """``(model in eval mode, config, class names)`` from a single-label checkpoint written by the trainer."""
    model, cfg, labels = build.load_for_inference(checkpoint, device)
    if labels.multi_head:
        raise ValueError(f"tada predict handles single-label checkpoints; this one has {len(labels.heads)} heads "
                         f"({', '.join(labels.heads)})")
    return model, cfg, labels.class_names


@torch.no_grad()
def predict_videos(videos: Sequence[str], checkpoint, *, topk: int = 5, device: str = "cpu",
                   backend=None) -> List[Dict]:
    """For each video: ``{"video", "top": [(class name, probability), ...]}`` or ``{"video", "error"}``
    when the file cannot be read (other videos are still predicted)."""
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    model, cfg, names = load_for_inference(checkpoint, device)
    out = []
    for video in videos:
        x, ds = read_test_views(video, cfg.data, backend)
        if x is None:
            out.append({"video": str(video), "error": ds.failures.get(str(video), "unreadable video")})
            continue
        x = x.to(device)
        probs = torch.softmax(model(x).float(), dim=1).mean(0)
        k = min(topk, len(names))
        p, i = probs.topk(k)
        out.append({"video": str(Path(video)), "top": [(names[j], float(q)) for j, q in zip(i.tolist(), p.tolist())]})
    return out
