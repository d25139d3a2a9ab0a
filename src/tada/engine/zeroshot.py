"""Zero-shot classification with a video-text model (``tada zeroshot``) and open-vocabulary
prediction (``tada predict --labels``).

Zero-shot evaluation (SPEC §9, Table 11): for each official split, the *test* list of that split
(UCF101 ``testlist0N.txt`` with ``classInd.txt``; HMDB51 ``{class}_test_splitN.txt``, the videos
marked 2), its class names cleaned and put through the prompt templates, the class text embeddings
computed **once per split**, and the multi-view evaluation of the config's test protocol (``data.frames``,
``data.sampling``, ``data.test_clips`` x ``data.test_crops``, softmax scores summed over views) through
the engine's evaluator with the :class:`~tada.engine.tasks.video_text.VideoText` task. Reported: per-split
top-1 / top-5 / mean class accuracy and the **mean ± std across splits**, the std being the *sample*
standard deviation (denominator n - 1, as the spread over the three official splits is usually given;
``null`` for a single split). Files: ``zeroshot_{name}.json`` and ``zeroshot_{name}_split{N}_per_class.csv``
in ``train.output_dir``.

Any other annotation list works too: ``list_path`` (``{split}`` in it is replaced by the split number)
in ``data.format``, with ``--class-names`` to name (or rename) its classes.

The model and the task options (text tower, templates, clean-up) come from the checkpoint's own config;
the evaluation config gives the data and the test protocol; the input normalisation is the checkpoint's
(the one the model was trained with). Without a checkpoint the evaluation config's model is built with
its pretrained weights (e.g. CLIP itself: ``task.kwargs.clip=ViT-B-16.pt``).

    tada zeroshot configs/zeroshot/ucf101.yaml --checkpoint CKPT [--dataset ucf101|hmdb51] [--splits 1 2 3]
                  [--root VIDEOS] [--lists SPLIT_FILES_DIR] [--class-names FILE] [--templates T ...] [KEY=VALUE ...]
    tada zeroshot CONFIG --checkpoint CKPT --list my_test_{split}.txt --class-names names.txt
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..data import datasets as D
from ..data.classnames import check_templates, read_class_names
from ..data.labels import LabelSpace
from .build import autocast_for, build_loader, labels_of_checkpoint, test_transforms
from .checkpoint import load_checkpoint
from .config import Config, from_dict, load_config
from .evaluate import evaluate
from .metrics import EvalResult, write_per_class_csv
from .predict import read_test_views
from .tasks import build_task
from .tasks import video_text as _video_text  # noqa: F401  (registers task video_text)

__all__ = ["DATASETS", "STD_NOTE", "mean_std", "load_split", "run_zeroshot", "load_video_text", "zeroshot",
           "predict_labels", "build_parser", "main"]

log = logging.getLogger("tada.zeroshot")

DATASETS = ("ucf101", "hmdb51")
STD_NOTE = "sample standard deviation over the splits (denominator n - 1); null for one split"


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and *sample* standard deviation (n - 1) of ``values``; the std is None for fewer than two."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


# -- the splits -------------------------------------------------------------------------------------

def _first_existing(candidates: Sequence[Path], test, what: str) -> Path:
    for c in candidates:
        if test(c):
            return c
    raise FileNotFoundError(f"{what} not found; looked in {', '.join(str(c) for c in candidates)} "
                            "(give the folder of the split files with --lists)")


def _list_folders(root: Path, list_path, official: str) -> List[Path]:
    if list_path is not None:
        return [Path(list_path)]
    return [root, root / official, root.parent / official]


def _renamed(names: List[str], class_names, source: str) -> List[str]:
    if class_names is None:
        return names
    given = read_class_names(class_names) if not isinstance(class_names, (list, tuple)) else list(class_names)
    if len(given) != len(names):
        raise ValueError(f"{class_names if isinstance(class_names, (str, os.PathLike)) else 'class_names'} has "
                         f"{len(given)} class names but {source} has {len(names)} classes; give one name per class, "
                         "in the order of the class ids")
    return given


def load_split(dataset: Optional[str], split: Optional[int], *, root: Union[str, Path] = "", lists=None,
               list_path=None, class_names=None, data_format: Optional[str] = None
               ) -> Tuple[List[D.Sample], List[str], str]:
    """``(test samples, class names, annotation source)`` of one split.

    ``dataset``: ``"ucf101"`` (``testlist0{split}.txt`` and ``classInd.txt`` in the folder ``lists``, or
    in ``root``, ``root/ucfTrainTestlist`` or ``root/../ucfTrainTestlist``), ``"hmdb51"``
    (``{class}_test_split{split}.txt`` in ``lists``, or in ``root``, ``root/testTrainMulti_7030_splits`` or
    ``root/../testTrainMulti_7030_splits``: the videos marked 2), or None: the annotation list
    ``list_path`` (``{split}`` in it replaced by ``split``) in ``data_format``. ``class_names``: a file
    (or list) of names replacing the annotation's, one per class id, in id order."""
    root = Path(root or ".")
    if lists is not None and not Path(lists).is_dir():
        raise FileNotFoundError(f"--lists {lists}: not a folder (it takes the folder of the official split files)")
    if dataset == "ucf101":
        name = f"testlist{int(split):02d}.txt"
        folder = _first_existing(_list_folders(root, lists, "ucfTrainTestlist"),
                                 lambda c: (c / name).is_file(), f"UCF101 {name}")
        class_ind = folder / "classInd.txt"
        if not class_ind.is_file():
            raise FileNotFoundError(f"{class_ind} not found: UCF101's class ids come from the classInd.txt "
                                    f"beside {name}")
        samples, names = D.parse_ucf101(folder / name, class_ind)
        return samples, _renamed(names, class_names, str(folder / name)), str(folder / name)
    if dataset == "hmdb51":
        pattern = f"*_test_split{int(split)}.txt"
        folder = _first_existing(_list_folders(root, lists, "testTrainMulti_7030_splits"),
                                 lambda c: c.is_dir() and any(c.glob(pattern)), f"HMDB51 split files {pattern}")
        samples, names = D.parse_hmdb51(folder, split=int(split), subset="test")
        return samples, _renamed(names, class_names, f"{folder}/{pattern}"), f"{folder}/{pattern}"
    if dataset is not None:
        raise ValueError(f"unknown zero-shot dataset {dataset!r}; expected one of {list(DATASETS)} or none "
                         "(any annotation list with --list and --class-names)")
    if list_path is None:
        raise ValueError("give the annotation list to evaluate (--list PATH, or data.test_list), or --dataset")
    p = Path(str(list_path).replace("{split}", str(split)) if split is not None else str(list_path))
    if not p.is_absolute() and not p.exists() and (root / p).exists():
        p = root / p
    kwargs: Dict[str, Any] = {}
    if isinstance(class_names, (str, os.PathLike)) and data_format in ("kinetics", "csv", "kinetics_csv"):
        kwargs["class_names"] = str(class_names)  # the parser checks the labels against them
    samples, labels = D.load_annotations(p, data_format, root=str(root), **kwargs)
    names = labels.class_names if kwargs else _renamed(labels.class_names, class_names, str(p))
    return samples, names, str(p)


def _test_dataset(cfg: Config, samples: Sequence[D.Sample]) -> D.VideoClipDataset:
    """The test views of ``samples`` with the config's protocol (as ``tada test`` reads them)."""
    d = cfg.data
    return D.VideoClipDataset(
        list(samples), root=d.root or None, frames=d.frames, sampling=d.sampling, rate=d.rate,
        target_fps=d.target_fps, train=False, transform=test_transforms(d), num_clips=d.test_clips,
        num_crops=d.test_crops, max_retries=d.max_retries, backend=d.backend, seed=cfg.train.seed)


# -- evaluation -------------------------------------------------------------------------------------

def _task_for(cfg: Config, names: Sequence[str], templates: Optional[Sequence[str]]):
    task = build_task(cfg, LabelSpace.single(names))
    if task.name != "video_text":
        raise ValueError(f"zero-shot classification needs a video-text model (task.name=video_text); the model's "
                         f"config has task.name={cfg.task.name!r}")
    if templates is not None:
        task.templates = check_templates(templates)
    return task


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _split_row(split, res: EvalResult, task, names: Sequence[str], source: str) -> Dict[str, Any]:
    return {"split": split, "top1": res.top1, "top5": res.top5, "mean_class_acc": res.mean_class_acc,
            "videos": res.num_videos, "views": res.num_views, "unreadable": len(res.invalid),
            "classes": len(names), "text_encodes": task.text_encodes, "list": source}


def run_zeroshot(model: nn.Module, cfg: Config, *, dataset: Optional[str] = None,
                 splits: Sequence[Optional[int]] = (1, 2, 3), lists=None, list_path=None, class_names=None,
                 templates: Optional[Sequence[str]] = None, name: Optional[str] = None, rank: int = 0,
                 world_size: int = 1, progress: bool = False, extra: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
    """Zero-shot evaluation of a ready :class:`~tada.models.videotext.VideoTextModel` on every split (see
    the module docstring and :func:`load_split`); ``cfg`` gives the data, the test protocol and the task
    options. ``dataset`` None: ``data.format`` when it is ``ucf101`` / ``hmdb51`` and no ``list_path`` is
    given, else the list ``list_path`` (default ``data.test_list``). Writes the JSON (with ``extra``) and
    per-class CSVs in ``cfg.train.output_dir`` (rank 0) and returns the JSON's content."""
    if dataset is not None and list_path is not None:
        raise ValueError("give either a dataset of official splits (with their folder in --lists) or an "
                         "annotation list (--list), not both")
    if dataset is None and list_path is None and cfg.data.format in DATASETS:
        dataset = cfg.data.format
    if dataset is None and list_path is None:
        list_path = cfg.data.test_list
    if dataset is None and "{split}" not in str(list_path):
        splits = [None]  # one list: one evaluation
    if not splits:
        raise ValueError("no splits to evaluate; give --splits 1 2 3")
    name = name or dataset or Path(str(list_path)).stem.replace("{split}", "")
    device = _device_of(model)
    out = Path(cfg.train.output_dir)
    rows, files, task = [], {}, None
    for split in splits:
        samples, names, source = load_split(dataset, split, root=cfg.data.root, lists=lists, list_path=list_path,
                                            class_names=class_names, data_format=cfg.data.format)
        task = _task_for(cfg, names, templates)
        task.check_labels(samples, "test")
        loader = build_loader(cfg, _test_dataset(cfg, samples), train=False, rank=rank, world_size=world_size,
                              device=device, collate_fn=task.collate)
        res = evaluate(model, loader, task, device=device, autocast=autocast_for(cfg, device), progress=progress)
        rows.append(_split_row(split, res, task, names, source))
        tag = f"split{split}" if split is not None else "all"
        if rank == 0:
            files[tag] = str(write_per_class_csv(out / f"zeroshot_{name}_{tag}_per_class.csv", res, names))
        log.info("zero-shot %s %s: %s", name, tag, res.summary())
    summary: Dict[str, Any] = {"dataset": name, "splits": rows}
    for key in ("top1", "top5", "mean_class_acc"):
        mean, std = mean_std([r[key] for r in rows])
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
    d = cfg.data
    summary.update(std=STD_NOTE, templates=list(task.templates), clean_names=task.options.clean_names,
                   protocol={"frames": d.frames, "sampling": d.sampling, "test_clips": d.test_clips,
                             "test_crops": d.test_crops, "test_short_side": d.test_short_side,
                             "test_crop_size": d.test_crop_size, "normalize": d.normalize},
                   per_class_csv=files, **(extra or {}))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"zeroshot_{name}.json"
        path.write_text(json.dumps(summary, indent=1))
        summary["results_json"] = str(path)
    return summary


def _run_config(cfg: Config, state: dict) -> Config:
    """The evaluation config with the model, the task and the normalisation of the checkpoint's."""
    saved = state.get("config") or {}
    if not saved:
        raise ValueError("the checkpoint carries no config (it was not written by `tada train`); evaluate a CLIP "
                         "model without --checkpoint, with its model and task.kwargs.clip in the config")
    ck = from_dict(Config, saved)
    if ck.task.name != "video_text":
        raise ValueError(f"the checkpoint was trained with task.name={ck.task.name!r}; zero-shot classification "
                         "needs a video-text model (train it with task.name=video_text)")
    if ck.data.normalize != cfg.data.normalize:
        log.warning("data.normalize=%s as the checkpoint was trained (the config says %s)", ck.data.normalize,
                    cfg.data.normalize)
    return dataclasses.replace(cfg, model=ck.model, task=ck.task,
                               data=dataclasses.replace(cfg.data, normalize=ck.data.normalize))


def load_video_text(checkpoint, cfg: Optional[Config] = None, *, device="cpu", ema: bool = False):
    """``(model in eval mode, run config, task)`` of a video-text training checkpoint (the text tower's
    shapes read from its state: no CLIP file needed). ``cfg``: the evaluation config (default: the
    checkpoint's own)."""
    state = load_checkpoint(checkpoint)
    key = "model_ema_state" if ema else "model_state"
    if key not in state:
        raise ValueError(f"{checkpoint} has no {key!r}" + (" (it was trained without train.ema_decay)" if ema else ""))
    saved = from_dict(Config, state.get("config") or {}) if cfg is None else cfg
    run_cfg = _run_config(saved, state)
    labels = labels_of_checkpoint(state) or LabelSpace.single(["class"])
    task = _task_for(run_cfg, labels.class_names, None)
    model = task.build_model_for_state(state[key], device)
    return model.eval(), run_cfg, task


def zeroshot(cfg: Config, checkpoint=None, *, dataset: Optional[str] = None, splits: Sequence[int] = (1, 2, 3),
             lists=None, list_path=None, class_names=None, templates: Optional[Sequence[str]] = None,
             ema: bool = False, progress: bool = False) -> Dict[str, Any]:
    """``tada zeroshot``: the checkpoint's video-text model (or, without one, the config's model with its
    pretrained weights) evaluated zero-shot on ``splits`` (see :func:`run_zeroshot`)."""
    from .distributed import cleanup, init_distributed

    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout)
    try:
        if checkpoint is not None:
            model, run_cfg, _ = load_video_text(checkpoint, cfg, device=dist.device, ema=ema)
        else:
            run_cfg = cfg
            model = _task_for(cfg, ["class"], None).build_model(dist.device, pretrained=True).eval()
        return run_zeroshot(model, run_cfg, dataset=dataset, splits=splits, lists=lists, list_path=list_path,
                            class_names=class_names, templates=templates, rank=dist.rank,
                            world_size=dist.world_size, progress=progress and dist.is_main,
                            extra={"checkpoint": str(checkpoint) if checkpoint is not None else None, "ema": ema})
    finally:
        cleanup()


# -- open-vocabulary prediction -------------------------------------------------------------------

@torch.no_grad()
def predict_labels(videos: Sequence[str], checkpoint, labels: Optional[Sequence[str]] = None, *,
                   templates: Optional[Sequence[str]] = None, device: str = "cpu", backend=None,
                   topk: Optional[int] = None) -> List[Dict[str, Any]]:
    """Rank free-text ``labels`` for each video file with a video-text checkpoint (``tada predict
    --labels``). Each label is cleaned (as in training, unless the checkpoint's task says
    ``clean_names: false``) and put through the templates (default: the checkpoint's); a video's scores
    are the softmax over the labels, averaged over its test views, so they sum to 1. ``labels`` None:
    the checkpoint's own class names. Returns ``{"video", "top": [(label, score), ...]}`` (all labels,
    best first, or the ``topk`` best) or ``{"video", "error"}`` for a file that cannot be read."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu")
    model, cfg, task = load_video_text(checkpoint, device=device)
    if labels is not None:
        labels = [str(lb).strip() for lb in labels]
        if not labels or any(not lb for lb in labels):
            raise ValueError(f"give at least one non-empty label to rank (got {list(labels)!r})")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels given twice: {sorted({lb for lb in labels if labels.count(lb) > 1})}")
        task = _task_for(cfg, labels, templates if templates is not None else task.templates)
    elif templates is not None:
        task.templates = check_templates(templates)
    names = task.labels.class_names
    if topk is not None and topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    text = task.text_features(model)
    out = []
    for video in videos:
        x, ds = read_test_views(video, cfg.data, backend)
        if x is None:
            out.append({"video": str(video), "error": ds.failures.get(str(video), "unreadable video")})
            continue
        probs = torch.softmax(model(x.to(device), text).float(), dim=1).mean(0)
        p, i = probs.sort(descending=True)
        k = len(names) if topk is None else min(topk, len(names))
        ranked = [(names[j], float(q)) for j, q in zip(i[:k].tolist(), p[:k].tolist())]
        out.append({"video": str(Path(video)), "top": ranked})
    return out


# -- the command ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tada zeroshot",
        description="Zero-shot classification of a video-text checkpoint on the official UCF101 / HMDB51 test "
                    "splits (or any annotation list): per-split top-1 / top-5 and their mean ± sample std "
                    "(n - 1) across splits; results JSON and per-class CSVs in train.output_dir.")
    p.add_argument("config", help="evaluation config (data and test protocol), e.g. configs/zeroshot/ucf101.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.test_clips=1")
    p.add_argument("--checkpoint", default=None,
                   help="a video-text checkpoint of `tada train` (default: the config's model, pretrained)")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: data.format when it is one of these")
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3], help="official splits (default 1 2 3)")
    p.add_argument("--root", default=None, help="the videos' folder (= data.root)")
    p.add_argument("--lists", default=None, help="the folder of the split files (default: looked for near --root)")
    p.add_argument("--list", dest="list_path", default=None,
                   help="any annotation list instead of --dataset ({split} in it is the split number)")
    p.add_argument("--class-names", default=None, help="class names, one per line (or '<id> <name>' lines)")
    p.add_argument("--templates", nargs="+", default=None,
                   help="prompt templates with '{}' (default: the checkpoint's)")
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--no-progress", action="store_true")
    return p


def _print_summary(s: Dict[str, Any]) -> None:
    for r in s["splits"]:
        tag = f"split {r['split']}" if r["split"] is not None else "all"
        print(f"{s['dataset']} {tag}: top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  ({r['videos']} videos, "
              f"{r['classes']} classes)")

    def pm(key):
        std = s[f"{key}_std"]
        return f"{s[f'{key}_mean']:.2f}" + (f" ± {std:.2f}" if std is not None else "")

    print(f"{s['dataset']} zero-shot: top-1 {pm('top1')}  top-5 {pm('top5')}  (± sample std over splits) "
          f"-> {s.get('results_json', '')}")


def _main(argv: List[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    overrides = list(args.overrides) + ([f"data.root={args.root}"] if args.root is not None else [])
    cfg = load_config(args.config, overrides)
    summary = zeroshot(cfg, args.checkpoint, dataset=args.dataset, splits=args.splits, lists=args.lists,
                       list_path=args.list_path, class_names=args.class_names, templates=args.templates,
                       ema=args.ema, progress=not args.no_progress and sys.stderr.isatty())
    if "results_json" in summary:
        _print_summary(summary)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``tada zeroshot``; returns the exit code (2: a bad option, path or value, with a one-line message)."""
    from .commands import run_command

    return run_command("tada zeroshot", _main, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
