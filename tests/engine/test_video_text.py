"""Text-supervised training (task video_text) through the engine's trainer on the engine's tiny real
colour clips: a frozen text tower is encoded once per run, a trained one every step; both lower the
loss; resume is exact; label smoothing / mixup act on the class-text logits; `tada test` reports it;
the text tower's own lr reaches the optimiser's groups."""
import csv
import json
import math

import pytest
import torch

import tada.engine.tasks.video_text  # noqa: F401  (registers the task)
from tada.data.labels import LabelSpace
from tada.engine import evaluate as E
from tada.engine.config import ConfigError, load_config
from tada.engine.optim import param_groups
from tada.engine.tasks import build_task
from tada.engine.tasks.base import soft_cross_entropy
from tada.engine.tasks.video_text import VideoText
from tada.engine.trainer import Trainer, TrainingStopped
from tada.models.text import tokenize

TEXT = "task.kwargs.text={name: tiny, layers: 1}"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cfg(synth, out, *extra):
    return load_config(None, [
        "model.name=tsn_r_mini", "model.drop_rate=0.0", "data.format=kinetics", f"data.root={synth}",
        "data.train_list=train.txt", "data.val_list=val.txt", "data.test_list=test.txt", "data.class_names=classes.txt",
        "data.frames=4", "data.sampling=segment", "data.crop_size=32", "data.train_scale=[0.7, 1.0]", "data.flip=false",
        "data.test_short_side=32", "data.test_crop_size=32", "data.test_clips=1", "data.batch_size=4",
        "data.num_workers=0", "optim.name=adamw", "optim.lr=2.0e-3", "optim.weight_decay=0.0", "optim.epochs=2",
        "optim.warmup_epochs=0", f"train.output_dir={out}", "train.seed=3", "train.deterministic=true",
        "task.name=video_text", TEXT, *extra])


def _losses(out):
    with open(out / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _count_text_calls(model) -> list:
    calls = []
    model.text.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return calls


def test_frozen_text_tower_is_encoded_once_per_run_lowers_the_loss_and_resumes_exactly(synth, tmp_path):
    run = tmp_path / "frozen"
    tr = Trainer(_cfg(synth, run), progress=False)
    assert isinstance(tr.task, VideoText) and tr.task.num_outputs() == 3
    calls = _count_text_calls(tr.model)
    text_before = {k: v.clone() for k, v in tr.model.text.state_dict().items()}
    out = tr.fit()
    # 14 steps and 2 validations, one encoding of the 3 classes x 2 templates
    assert out["steps"] == 14 and len(out["history"]) == 2
    assert tr.task.text_encodes == 1 and calls == [6]
    assert all(torch.equal(v, tr.model.text.state_dict()[k]) for k, v in text_before.items())
    in_optimizer = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in tr.model.text.parameters())
    assert id(tr.model.logit_scale) in in_optimizer  # the temperature is trained (train_logit_scale)
    losses = _losses(run)
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    assert out["history"][-1]["val_top1"] >= 80  # chance is 33 %

    # `tada test` on the checkpoint: a new run, a new encoding, classification's reports
    task, res, files = E.test_checkpoint(_cfg(synth, run), run / "last.pt")
    assert task.text_encodes == 1 and res.num_videos == 9 and res.top1 >= 80
    with open(files["results_json"]) as f:
        summary = json.load(f)
    assert summary["templates"] == ["a video of a person {}.", "{}"] and summary["text_encodes"] == 1
    assert summary["top1"] == pytest.approx(res.top1)

    # resume: the resumed run encodes the (unchanged) class texts once more and continues exactly
    part = tmp_path / "part"
    with pytest.raises(TrainingStopped, match="stopped at step 4"):
        Trainer(_cfg(synth, part, "train.stop_after_steps=4"), progress=False).fit()
    resumed = Trainer(_cfg(synth, part), progress=False)
    resumed.fit()
    assert resumed.task.text_encodes == 1
    assert _losses(part) == pytest.approx(losses, rel=1e-5, abs=1e-6)


def test_trained_text_tower_is_encoded_every_step_lowers_the_loss_and_resumes_exactly(synth, tmp_path):
    # one lr for both towers (a from-scratch text tower at the video tower's 2e-3 collapses its class
    # embeddings into one within a few steps); one validation, at the end
    opts = ("task.kwargs.text_trainable=true", "optim.lr=5.0e-4", "optim.epochs=3", "train.eval_every=3")
    full = tmp_path / "full"
    tr = Trainer(_cfg(synth, full, *opts), progress=False)
    calls = _count_text_calls(tr.model)
    text_before = {k: v.clone() for k, v in tr.model.text.state_dict().items()}
    out = tr.fit()
    assert out["steps"] == 21 and "val_top1" in out["history"][-1]
    # every training step encodes the 3 x 2 prompts with gradients, the validation once more
    assert tr.task.text_encodes == 21 + 1 and calls == [6] * 22
    changed = [k for k, v in text_before.items() if not torch.equal(v, tr.model.text.state_dict()[k])]
    assert "text_projection" in changed and "token_embedding.weight" in changed
    ref = _losses(full)
    assert len(ref) == 21 and all(math.isfinite(v) for v in ref)
    assert sum(ref[-4:]) / 4 < 0.5 * sum(ref[:4]) / 4, ref

    part = tmp_path / "part"
    with pytest.raises(TrainingStopped, match="stopped at step 9"):
        Trainer(_cfg(synth, part, *opts, "train.stop_after_steps=9"), progress=False).fit()
    resumed = Trainer(_cfg(synth, part, *opts), progress=False)
    resumed.fit()
    assert resumed.task.text_encodes == 12 + 1  # the resumed run's own steps and validation
    assert _losses(part) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_label_smoothing_and_mixup_act_on_the_class_text_logits(synth, tmp_path):
    cfg = _cfg(synth, tmp_path / "r", "train.label_smoothing=0.1", "train.mixup_alpha=0.8")
    task = build_task(cfg, LabelSpace.single(["red", "green", "blue"]))
    model = task.build_model(pretrained=False)
    torch.manual_seed(0)
    x0 = torch.rand(4, 3, 4, 32, 32)
    x, batch = task.prepare(x0.clone(), {"label": torch.tensor([0, 1, 2, 0])})
    target = batch["target"]
    assert target.shape == (4, 3) and torch.allclose(target.sum(1), torch.ones(4))
    assert (target > 0.1 / 3 - 1e-6).all() and not torch.equal(x, x0)  # smoothed everywhere, clips mixed
    logits = task.forward(model, x)
    assert logits.shape == (4, 3)
    by_hand = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(task.loss(logits, batch), by_hand)
    torch.testing.assert_close(soft_cross_entropy(logits, target), by_hand)
    # the logits are the model's exp(s) * cos against the class texts (cleaned, both templates averaged)
    texts = task.class_texts()
    assert texts[0] == ["a video of a person red.", "red"]
    t = model.encode_classes(tokenize(sum(texts, []), 16).reshape(3, 2, 16))
    torch.testing.assert_close(logits, model.scale() * model.encode_video(x) @ t.t(), rtol=1e-5, atol=1e-5)


def test_class_names_are_cleaned_or_kept():
    cfg = load_config(None, ["task.name=video_text", TEXT, "task.kwargs.templates=['{} now']"])
    task = build_task(cfg, LabelSpace.single(["ApplyEyeMakeup", "brush_hair"]))
    assert task.class_texts() == [["apply eye makeup now"], ["brush hair now"]]
    raw = build_task(load_config(None, ["task.name=video_text", TEXT, "task.kwargs.clean_names=false"]),
                     LabelSpace.single(["ApplyEyeMakeup"]))
    assert raw.class_texts() == [["a video of a person ApplyEyeMakeup.", "ApplyEyeMakeup"]]


def test_the_text_tower_gets_its_own_lr_and_layer_decay():
    cfg = load_config(None, [
        "model.name=tsn_vit_b16_clip", "model.kwargs={width: 64, layers: 2, heads: 1, patch_size: 8, img_size: 32}",
        "task.name=video_text", TEXT, "task.kwargs.text_trainable=true", "task.kwargs.text_lr_mult=0.1",
        "task.kwargs.text_layer_decay=0.5"])
    model = build_task(cfg, LabelSpace.single(["a", "b"])).build_model(pretrained=False)
    scales = model.param_lr_scales()
    # the text tower: 0.1 x 0.5 ** (depth 2 - layer): embeddings 0, its one block 1, ln_final / projection 2
    assert scales["text.token_embedding.weight"] == pytest.approx(0.025)
    assert scales["text.transformer.resblocks.0.attn.in_proj_weight"] == pytest.approx(0.05)
    assert scales["text.text_projection"] == pytest.approx(0.1) and len(scales) == len(list(model.text.parameters()))
    assert model.layer_id("video.blocks.1.ln_1.weight") == 2 and model.layer_id("text.ln_final.weight") == 3
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.7)
    lr_of = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    for name, s in scales.items():
        assert lr_of[name] == pytest.approx(s), name
    assert lr_of["video.blocks.0.attn.in_proj_weight"] == pytest.approx(0.7 ** 2)  # the video tower's decay
    assert lr_of["logit_scale"] == pytest.approx(1.0)


def test_bad_options_are_refused_when_the_task_is_built():
    labels = LabelSpace.single(["a"])
    with pytest.raises(ValueError, match="needs a text tower"):
        build_task(load_config(None, ["task.name=video_text"]), labels)
    with pytest.raises(ValueError, match="exactly one '{}'"):
        build_task(load_config(None, ["task.name=video_text", TEXT, "task.kwargs.templates=['no slot']"]), labels)
    with pytest.raises(ValueError, match="unknown text tower 'huge'"):
        build_task(load_config(None, ["task.name=video_text", "task.kwargs.text=huge"]), labels)
    with pytest.raises(ValueError, match="text_lr_mult must be > 0"):
        build_task(load_config(None, ["task.name=video_text", TEXT, "task.kwargs.text_lr_mult=0"]), labels)
    with pytest.raises(ConfigError, match="did you mean 'templates'"):
        build_task(load_config(None, ["task.name=video_text", TEXT, "task.kwargs.template=['{}']"]), labels)
    with pytest.raises(ValueError, match="one head"):
        build_task(load_config(None, ["task.name=video_text", TEXT]), LabelSpace.verb_noun(["v"], ["n"]))
    with pytest.raises(FileNotFoundError, match="no-such-clip.pt"):
        build_task(load_config(None, ["task.name=video_text", "task.kwargs.clip=no-such-clip.pt"]),
                   labels).build_model()


def test_the_zero_shot_recipes():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "zeroshot"
    cfg = load_config(root / "k400_tadaformer_b16.yaml")
    task = build_task(cfg, LabelSpace.single(["abseiling", "air drumming"]))
    o = task.options
    assert (cfg.model.name, cfg.task.name, o.clip, o.text_trainable, o.text_layer_decay) == (
        "tadaformer_b16", "video_text", "checkpoints/ViT-B-16.pt", True, 0.7)
    assert task.templates == ("a video of a person {}.", "{}")
    # the paper's TAdaFormer-B/16 K400 settings (SPEC §4)
    assert (cfg.optim.lr, cfg.optim.base_batch_size, cfg.optim.epochs, cfg.optim.layer_decay) == (5e-5, 256, 30, 0.7)
    assert (cfg.optim.new_param_lr_mult, cfg.train.label_smoothing, cfg.train.ema_decay) == (10.0, 0.1, 0.9996)
    assert (cfg.data.frames, cfg.data.sampling, cfg.data.normalize) == (16, "segment", "clip")
    for name, fmt in (("ucf101", "ucf101"), ("hmdb51", "hmdb51")):
        ev = load_config(root / f"{name}.yaml")
        assert (ev.data.format, ev.data.test_list, ev.data.test_clips, ev.data.test_crops) == (fmt, None, 1, 1)
        assert (ev.data.frames, ev.data.test_crop_size, ev.task.name) == (16, 224, "video_text")
