"""Class predictions for video files from a training checkpoint (``tada predict``).

The checkpoint carries its config and class names, so nothing else is needed: each video is read with
the config's test sampling (clips x crops views), the softmax scores of the views are summed, and the
top-k classes are returned with their averaged probabilities.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..data import datasets as D
from ..models import create_model
from .checkpoint import load_checkpoint
from .config import Config, from_dict
from .trainer import test_transforms

__all__ = ["load_for_inference", "predict_videos"]


def load_for_inference(checkpoint, device="cpu"):
    """``(model in eval mode, config, class names)`` from a checkpoint written by the trainer."""
    state = load_checkpoint(checkpoint)
    cfg = from_dict(Config, state.get("config") or {})
    names = state.get("class_names")
    if not names:
        raise ValueError(f"{checkpoint} has no class names; it was not written by `tada train`")
    if names and isinstance(names[0], list):
        raise ValueError("tada predict handles single-label checkpoints; this one has verb/noun heads")
    kwargs = dict(cfg.model.kwargs)
    kwargs["drop_rate"] = cfg.model.drop_rate
    model = create_model(cfg.model.name, num_classes=len(names), **kwargs)
    model.load_state_dict(state["model_state"])
    return model.to(device).eval(), cfg, list(names)


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
    d = cfg.data
    transforms = test_transforms(d)
    out = []
    for video in videos:
        # the test views of a one-video dataset: the same sampling and crops as `tada test`
        ds = D.VideoClipDataset([D.Sample(str(video), 0)], frames=d.frames, sampling=d.sampling, rate=d.rate,
                                target_fps=d.target_fps, train=False, transform=transforms,
                                num_clips=d.test_clips, num_crops=d.test_crops, backend=backend or d.backend)
        try:  # an unreadable video is reported (a one-video dataset cannot fill in for it)
            items = [ds[i] for i in range(len(ds))]
        except RuntimeError:
            items = None
        if items is None or not all(it["valid"] for it in items):
            out.append({"video": str(video), "error": ds.failures.get(str(video), "unreadable video")})
            continue
        x = torch.stack([it["video"] for it in items]).to(device)
        probs = torch.softmax(model(x).float(), dim=1).mean(0)
        k = min(topk, len(names))
        p, i = probs.topk(k)
        out.append({"video": str(Path(video)), "top": [(names[j], float(q)) for j, q in zip(i.tolist(), p.tolist())]})
    return out
