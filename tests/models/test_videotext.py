"""The video-text model: logits equal a hand computation and, built from an open_clip CLIP file,
open_clip's own logits on a static clip (TSN-ViT and TAdaFormer towers); gradients reach both towers;
CNN backbones (TSN, TAda2D) embed through a new projection; state dicts round-trip; bad input."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tada.models import create_model
from tada.models.text import TextTransformer, tokenize
from tada.models.videotext import CLIP_INIT_LOGIT_SCALE, VideoTextModel, create_video_text_model, text_kwargs_of

TINY_TEXT = {"name": "tiny", "layers": 1}
TEXTS = ["a video of a person brush hair.", "brush hair", "a video of a person cartwheel.", "cartwheel"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_logits_equal_a_hand_computation():
    torch.manual_seed(0)
    model = create_video_text_model("tsn_r_mini", text=TINY_TEXT).eval()
    x = torch.randn(3, 3, 4, 32, 32)
    tokens = tokenize(TEXTS, 16)
    with torch.no_grad():
        logits = model(x, model.encode_text(tokens))
        pooled = model.video.forward_features(x).mean(dim=(2, 3, 4))  # TSN: mean over T, H, W
        v = pooled @ model.video_proj.weight.t()
        v = v / v.norm(dim=1, keepdim=True)
        t = model.text(tokens)
        t = t / t.norm(dim=1, keepdim=True)
        want = math.exp(CLIP_INIT_LOGIT_SCALE) * v @ t.t()
        assert logits.shape == (3, 4)
        torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
        # un-normalised text features give the same logits (forward normalises them)
        torch.testing.assert_close(model(x, 7.0 * model.text(tokens)), want, rtol=1e-5, atol=1e-5)
        # class embeddings: each prompt normalised, averaged over the prompts of the class, normalised
        classes = model.encode_classes(tokens.reshape(2, 2, 16))
        mean = (t[0::2] + t[1::2]) / 2
        torch.testing.assert_close(classes, mean / mean.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x, class_tokens=tokens.reshape(2, 2, 16)),
                                   math.exp(CLIP_INIT_LOGIT_SCALE) * v @ classes.t(), rtol=1e-5, atol=1e-5)
        # the temperature is the parameter's, clamped at 100 as CLIP does
        model.logit_scale.fill_(1.0)
        torch.testing.assert_close(model(x, t), math.e * v @ t.t(), rtol=1e-5, atol=1e-5)
        model.logit_scale.fill_(9.0)
        torch.testing.assert_close(model(x, t), 100.0 * v @ t.t(), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------
# from a CLIP file: open_clip is the oracle
# --------------------------------------------------------------------------------------------
open_clip = pytest.importorskip("open_clip")


def _perturb(module: nn.Module, gen: torch.Generator) -> None:
    """Biases and LayerNorm affines away from 0 / 1, so that every tensor of the file matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (nn.Linear, nn.MultiheadAttention)):
                for name, p in m.named_parameters(recurse=False):
                    if "bias" in name:
                        p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A tiny OpenAI-architecture CLIP (QuickGELU) with random weights, saved as an open_clip state dict."""
    torch.manual_seed(1)
    ref = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=16, vocab_size=49408, width=64, heads=1, layers=2),
    ).eval()
    _perturb(ref, torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref.logit_scale.fill_(3.3)  # not CLIP's init: the file's value must be used
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(ref.state_dict(), path)
    return ref, path


VIT = dict(width=64, layers=2, heads=1, patch_size=8, img_size=32)


@pytest.mark.parametrize("video, extra", [("tsn_vit_b16_clip", {}), ("tadaformer_b16", {"tada_head_dim": 16})])
def test_from_a_clip_file_the_logits_equal_open_clips_on_a_static_clip(clip_file, video, extra):
    ref, path = clip_file
    model = create_video_text_model(video, clip=str(path), **VIT, **extra).eval()
    assert model.video_proj is None and model.embed_dim == 32  # CLIP's visual.proj, through forward_embed
    assert model.logit_scale.item() == pytest.approx(3.3)
    torch.manual_seed(5)
    frames = torch.randn(2, 3, 32, 32)
    static = frames[:, :, None].expand(-1, -1, 4, -1, -1).contiguous()
    tokens = tokenize(TEXTS, 16)
    with torch.no_grad():
        img = F.normalize(ref.encode_image(frames), dim=-1)
        txt = F.normalize(ref.encode_text(tokens), dim=-1)
        want = ref.logit_scale.exp() * img @ txt.t()
        assert _rel(model.encode_video(static), img) < 1e-5
        assert _rel(model.encode_text(tokens), txt) < 1e-5
        got = model(static, model.encode_text(tokens))
        assert _rel(got, want) < 1e-5, _rel(got, want)
        # a control: a clip whose second half differs is not the first frame's image embedding
        moving = static.clone()
        moving[:, :, 2:] = torch.randn_like(moving[:, :, 2:])
        assert _rel(model.encode_video(moving), img) > 1e-2


def test_a_clip_file_gives_the_text_tower_only_to_a_cnn_backbone(clip_file):
    ref, path = clip_file
    model = create_video_text_model("tsn_r_mini", clip=str(path))
    assert model.video_proj is not None and model.video_proj.in_features == model.video.num_features
    tokens = tokenize(TEXTS[:2], 16)
    with torch.no_grad():
        assert _rel(model.encode_text(tokens), F.normalize(ref.encode_text(tokens), dim=-1)) < 1e-5
    assert model.logit_scale.item() == pytest.approx(3.3)
    # pretrained=False: the architecture (read from the file) without any weights loaded
    blank = create_video_text_model("tsn_vit_b16_clip", clip=str(path), pretrained=False, **VIT)
    assert blank.logit_scale.item() == pytest.approx(CLIP_INIT_LOGIT_SCALE)
    assert blank.text.layers == 2 and blank.embed_dim == 32
    with pytest.raises(ValueError, match="does not match the CLIP checkpoint"):
        create_video_text_model("tsn_r_mini", clip=str(path), text={"width": 128})


# --------------------------------------------------------------------------------------------
# training, CNN towers, state dicts
# --------------------------------------------------------------------------------------------
def test_gradient_reaches_both_towers_and_a_frozen_text_tower_gets_none():
    torch.manual_seed(0)
    model = create_video_text_model("tsn_r_mini", text=TINY_TEXT)
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = tokenize(TEXTS, 16).reshape(2, 2, 16)
    F.cross_entropy(model(x, class_tokens=tokens), torch.tensor([0, 1])).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    first_video = next(n for n in grads if n.startswith("video."))  # the stem: the whole tower is reached
    for name in ("text.text_projection", "text.transformer.resblocks.0.attn.in_proj_weight", "logit_scale",
                 "video_proj.weight", first_video):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    model.freeze_text()
    assert model.text_frozen
    F.cross_entropy(model(x, class_tokens=tokens), torch.tensor([0, 1])).backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert model.video_proj.weight.grad.abs().sum() > 0
    model.freeze_text(False)
    assert not model.text_frozen


@pytest.mark.parametrize("name", ["tada2d_r_mini", "tsn_r_mini"])
def test_cnn_backbones_embed_through_a_new_projection(name):
    torch.manual_seed(0)
    model = create_video_text_model(name, text=TINY_TEXT, embed_dim=48)
    assert model.embed_dim == 48 and model.video_proj.weight.shape == (48, model.video.num_features)
    x = torch.randn(2, 3, 4, 32, 32)
    v = model.encode_video(x)
    assert v.shape == (2, 48)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    new = model.new_parameter_names()
    assert "video_proj.weight" in new and not any(n.startswith("text.") for n in new)
    video_new = {f"video.{n}" for n in create_model(name, num_classes=0).new_parameter_names()}
    assert video_new <= new and (bool(video_new) == name.startswith("tada"))  # TAda2D's routing functions
    assert model.head_keys() == set() and "logit_scale" in model.no_weight_decay()
    vit = create_video_text_model("tsn_vit_b16_clip", text=TINY_TEXT, embed_dim=16, **VIT)
    assert vit.embed_dim == vit.video.embed_dim == 16 and vit.video_proj is None
    with pytest.raises(ValueError, match="defines no layer_id"):
        model.layer_id("video_proj.weight")


def test_state_dict_round_trip_without_weights():
    torch.manual_seed(0)
    a = create_video_text_model("tadaformer_b16", text=TINY_TEXT, tada_head_dim=16, **VIT).eval()
    with torch.no_grad():
        a.logit_scale.fill_(2.5)
    b = create_video_text_model("tadaformer_b16", text=TINY_TEXT, tada_head_dim=16, pretrained=False, **VIT).eval()
    x, tokens = torch.randn(1, 3, 4, 32, 32), tokenize(TEXTS, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x, a.encode_text(tokens)), b(x, b.encode_text(tokens)))
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x, a.encode_text(tokens)), b(x, b.encode_text(tokens)))
    assert "video.proj" in a.state_dict() and "video_proj.weight" not in a.state_dict()


def test_text_descriptions():
    assert text_kwargs_of("tiny")["width"] == 64 and text_kwargs_of({"name": "tiny", "layers": 1})["layers"] == 1
    assert text_kwargs_of({"width": 32, "heads": 2}) == {"width": 32, "heads": 2} and text_kwargs_of(None) == {}
    with pytest.raises(ValueError, match="unknown text-tower argument"):
        text_kwargs_of({"name": "tiny", "depth": 3})
    with pytest.raises(ValueError, match="unknown text tower"):
        text_kwargs_of("huge")
    with pytest.raises(ValueError, match="a mapping"):
        text_kwargs_of(3)


def test_bad_input(clip_file):
    model = create_video_text_model("tsn_r_mini", text=TINY_TEXT)
    x = torch.randn(1, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="exactly one of text_features"):
        model(x)
    with pytest.raises(ValueError, match="exactly one of text_features"):
        model(x, torch.randn(2, 64), class_tokens=tokenize(["a"], 16))
    with pytest.raises(ValueError, match=r"text_features must be \(N, 64\)"):
        model(x, torch.randn(2, 32))
    with pytest.raises(ValueError, match="class tokens must be"):
        model.encode_classes(torch.zeros(2, 2, 2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a text tower"):
        create_video_text_model("tsn_r_mini")
    with pytest.raises(ValueError, match="embed_dim=32 but the text tower embeds into 64"):
        create_video_text_model("tsn_r_mini", text={"name": "tiny", "embed_dim": 64}, embed_dim=32)
    with pytest.raises(ValueError, match="embed_dim=16 but the text tower embeds into 32"):
        create_video_text_model("tsn_r_mini", clip=str(clip_file[1]), embed_dim=16)  # a CLIP file's is fixed
    with pytest.raises(ValueError, match="no classifier"):
        create_video_text_model("tsn_r_mini", text=TINY_TEXT, num_classes=10)
    with pytest.raises(ValueError, match="unknown model"):
        create_video_text_model("tsn_r_minii", text=TINY_TEXT)
    with pytest.raises(FileNotFoundError):
        create_video_text_model("tsn_r_mini", clip="/no/such/clip.pt")
    with pytest.raises(ValueError, match="TextTransformer"):
        VideoTextModel(create_model("tsn_r_mini", num_classes=0), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="same embed_dim"):
        VideoTextModel(create_model("tsn_vit_b16_clip", num_classes=0, embed_dim=16, **VIT), TextTransformer.tiny())
    with pytest.raises(ValueError, match="lr multiplier"):
        model.set_text_lr(0)
