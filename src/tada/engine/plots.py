"""PNG plots of a run: loss / accuracy / lr curves, confusion matrix, per-class accuracy, and the
localisation timeline (ground truth against the top predictions of a few videos)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["plot_run", "plot_curves", "plot_confusion", "plot_per_class", "plot_timeline"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def plot_curves(out: Path, history: List[dict]) -> Optional[str]:
    steps_csv = out / "steps.csv"
    if not history and not steps_csv.exists():
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    if steps_csv.exists():
        with open(steps_csv) as f:
            rows = list(csv.DictReader(f))
        st = [int(r["step"]) for r in rows]
        axes[0].plot(st, [float(r["loss"]) for r in rows], lw=0.8, alpha=0.6, label="train (per step)")
        axes[2].plot(st, [float(r["lr"]) for r in rows])
    if history:
        ep = [r["epoch"] for r in history]
        axes[0].plot([e * (max(st) / max(ep)) if steps_csv.exists() else e for e in ep],
                     [r["train_loss"] for r in history], "o-", label="train (epoch mean)")
        for key, lab in (("val_top1", "val top-1"), ("val_top5", "val top-5"), ("val_top1_ema", "val top-1 (EMA)")):
            if any(key in r for r in history):
                axes[1].plot([r["epoch"] for r in history if key in r], [r[key] for r in history if key in r],
                             "o-", label=lab)
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend()
    axes[1].set(title="accuracy (%)", xlabel="epoch", ylim=(0, 100))
    if axes[1].lines:
        axes[1].legend()
    axes[2].set(title="learning rate", xlabel="step")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_confusion(out: Path, confusion, class_names: Optional[Sequence[str]], name: str = "test") -> str:
    plt = _plt()
    n = confusion.shape[0]
    cm = confusion.float()
    cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)))
    im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    labels = list(class_names) if class_names is not None and n <= 60 else None
    if labels:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out / f"{name}_confusion.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_per_class(out: Path, per_class: Sequence[float], class_names: Optional[Sequence[str]],
                   name: str = "test") -> str:
    plt = _plt()
    n = len(per_class)
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * n + 2), 3.5))
    ax.bar(range(n), [0 if v != v else v for v in per_class])
    if class_names is not None and n <= 60:
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=7)
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title="per-class accuracy")
    fig.tight_layout()
    path = out / f"{name}_per_class.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_run(out, history: List[dict], result=None, class_names=None, name: str = "test") -> Dict[str, str]:
    out = Path(out)
    paths = {}
    curves = plot_curves(out, history)
    if curves:
        paths["curves_png"] = curves
    if result is not None and result.confusion is not None:
        paths["confusion_png"] = plot_confusion(out, result.confusion, class_names, name)
        paths["per_class_png"] = plot_per_class(out, result.per_class_acc, class_names, name)
    return paths


def plot_timeline(path, videos: Sequence, predictions: Sequence[Sequence[dict]], top: int = 5) -> str:
    """One row pair per video: its ground-truth segments (``videos[i].segments``) above its ``top``
    highest-scoring predictions (``{"segment": [s, e], "score", "label"?}``), on a seconds axis."""
    plt = _plt()
    n = len(videos)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.3 * n + 0.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    labels = sorted({s.label for v in videos for s in v.segments})
    colour = {lab: cmap(i % 10) for i, lab in enumerate(labels)}
    for ax, video, preds in zip(axes[:, 0], videos, predictions):
        for seg in video.segments:
            ax.barh(1, seg.end - seg.start, left=seg.start, height=0.6, color=colour[seg.label], edgecolor="k")
            ax.text(seg.start, 1.38, seg.label, fontsize=6, va="bottom")
        best = sorted(preds or [], key=lambda p: -p["score"])[:top]
        for j, p in enumerate(best):
            s, e = p["segment"]
            c = colour.get(p.get("label"), "0.5")
            ax.barh(-0.15 * j, e - s, left=s, height=0.12, color=c, alpha=0.4 + 0.6 * (j == 0))
        ax.set(xlim=(0, video.duration), yticks=[1, -0.3], yticklabels=["truth", f"top {len(best)}"])
        ax.set_title(video.id, fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
