"""CLIP's text tower (SPEC §9): tokenisation equal to open_clip's, text embeddings equal to open_clip's
``encode_text`` on the same random weights from open_clip-layout, OpenAI-layout and TorchScript
checkpoints, ``logit_scale`` read from the file, the architecture read from shapes, and bad checkpoints."""
import math
import sys

import pytest
import torch
import torch.nn as nn

from tada.models import text as text_mod
from tada.models.text import (
    TEXT_CONFIGS,
    TextTransformer,
    clip_text_config,
    clip_text_state_dict,
    load_clip_text,
    tokenize,
)

open_clip = pytest.importorskip("open_clip")

TEXTS = [
    "a video of a person playing guitar.",
    "ApplyEyeMakeup",
    "brush_hair",
    "Hello,   World!!! (it's 3:45pm) -- #hashtags & @mentions; 'quotes' \"double\"",
    "café naïve façade — Ünïcödé, 東京の夜, Москва, 🎸🔥",
    "&amp; &lt;b&gt;html&lt;/b&gt;",
    "",
    "   ",
    "word " * 90,  # far longer than 77 tokens
    "supercalifragilisticexpialidocious " * 30,
]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _randomise_text(clip, seed):
    """LayerNorm affines and biases away from 1 / 0, so that every tensor matters (``CLIP``, or
    ``CustomTextCLIP`` with its tower under ``.text``)."""
    gen = torch.Generator().manual_seed(seed)
    tower = getattr(clip, "text", clip)
    with torch.no_grad():
        for module in (tower.transformer, tower.ln_final):
            for name, p in module.named_parameters():
                if name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            for m in module.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
        clip.logit_scale.fill_(3.21)  # not the init value: the loader must read it
    return clip


def _small_clip(*, quick_gelu=True, custom_text=False, **text):
    cfg = dict(context_length=20, vocab_size=49408, width=128, heads=2, layers=3)
    cfg.update(text)
    cls = open_clip.model.CustomTextCLIP if custom_text else open_clip.model.CLIP
    torch.manual_seed(0)
    model = cls(
        embed_dim=48,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, head_width=64, patch_size=16, image_size=32),
        text_cfg=open_clip.model.CLIPTextCfg(**cfg),
        quick_gelu=quick_gelu,
    ).eval()
    _randomise_text(model, 1)
    return model


def _encode_text(ref, tokens):
    with torch.no_grad():
        return ref.encode_text(tokens, normalize=False)


def _embed(tower, tokens):
    with torch.no_grad():
        return tower(tokens)


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("context_length", [77, 16])
def test_tokenize_equals_open_clip(context_length):
    ours = tokenize(TEXTS, context_length=context_length)
    want = open_clip.tokenize(TEXTS, context_length=context_length)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), context_length)
    assert torch.equal(ours, want)
    sot, eot = 49406, 49407
    assert (ours[:, 0] == sot).all() and (ours == eot).sum(1).eq(1).all()  # one start, one end each
    long_rows = ours[-2:]
    assert (long_rows[:, -1] == eot).all() and (long_rows != 0).all()  # cut, with the end token kept last
    assert tokenize("a dog").tolist() == tokenize(["a dog"]).tolist()
    assert not torch.equal(tokenize("a dog"), tokenize("a cat"))  # the control: texts are told apart
    assert tokenize([]).shape == (0, 77)


def test_tokenize_rejects_bad_input():
    with pytest.raises(ValueError, match="text 1 is a int"):
        tokenize(["ok", 3])
    with pytest.raises(ValueError, match="context_length must be an int >= 2"):
        tokenize(["ok"], context_length=1)
    with pytest.raises(ValueError, match="sequence of strings"):
        tokenize(5)


def test_tokenizer_without_open_clip_says_how_to_install(monkeypatch):
    text_mod._bpe.cache_clear()
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)  # what `import` sees when it is missing
    try:
        with pytest.raises(ImportError, match=r"pip install tada\[text\]"):
            tokenize(["a dog"])
    finally:
        monkeypatch.undo()
        text_mod._bpe.cache_clear()
    assert tokenize(["a dog"]).shape == (1, 77)


# --------------------------------------------------------------------------------------------
# equal to open_clip's encode_text on the same weights
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_b16():
    """open_clip's ViT-B-16 with random weights (its text tower is OpenAI CLIP's B/16 one; open_clip's
    own ViT-B-16 config uses exact GELU)."""
    torch.manual_seed(0)
    return _randomise_text(open_clip.create_model("ViT-B-16", pretrained=None).eval(), 2)


def test_open_clip_b16_text_tower_equals_encode_text(clip_b16):
    ref = clip_b16
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}  # as saved from DistributedDataParallel
    tower, logit_scale = load_clip_text(sd, act="gelu")
    assert clip_text_config(ref.state_dict()) == dict(
        vocab_size=49408, context_length=77, width=512, layers=12, heads=8, embed_dim=512, mlp_ratio=4.0)
    assert clip_text_config(ref.state_dict()) == {**TEXT_CONFIGS["clip_b16"], "mlp_ratio": 4.0}
    assert logit_scale.shape == () and logit_scale.item() == pytest.approx(3.21)
    tokens = tokenize(TEXTS)
    want = _encode_text(ref, tokens)
    got = _embed(tower, tokens)
    assert got.shape == (len(TEXTS), 512)
    assert _rel(got, want) < 1e-5, _rel(got, want)
    # the control: one weight perturbed by 1 % is visibly different
    with torch.no_grad():
        tower.transformer.resblocks[5].mlp.c_fc.weight.mul_(1.01)
    assert _rel(_embed(tower, tokens), want) > 1e-4


class _OpenAIJitLike(nn.Module):
    """What OpenAI's TorchScript CLIP archives hold: both towers, logit_scale and scalar extras."""

    def __init__(self, clip, context_length):
        super().__init__()
        self.visual, self.transformer = clip.visual, clip.transformer
        self.token_embedding, self.ln_final = clip.token_embedding, clip.ln_final
        self.positional_embedding, self.text_projection = clip.positional_embedding, clip.text_projection
        self.logit_scale = clip.logit_scale
        for name, v in (("input_resolution", 32), ("context_length", context_length), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(v))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_openai_layouts_plain_and_torchscript_equal_encode_text(tmp_path):
    ref = _small_clip(quick_gelu=True)  # OpenAI's CLIP: QuickGELU
    sd = ref.state_dict()
    # open_clip's CLIP keys are OpenAI's: a plain OpenAI state dict is the same dict, saved by torch.save
    torch.save(sd, tmp_path / "openai_state_dict.pt")
    torch.jit.save(torch.jit.script(_OpenAIJitLike(ref, 20)), str(tmp_path / "openai_jit.pt"))
    tokens = tokenize(TEXTS, context_length=20)
    want = _encode_text(ref, tokens)
    for name in ("openai_state_dict.pt", "openai_jit.pt"):
        tower, logit_scale = load_clip_text(tmp_path / name)
        assert (tower.width, tower.layers, tower.heads, tower.context_length, tower.embed_dim) == (128, 3, 2, 20, 48)
        assert logit_scale.item() == pytest.approx(3.21), name
        assert _rel(_embed(tower, tokens), want) < 1e-5, (name, _rel(_embed(tower, tokens), want))
    # OpenAI's files hold float16 weights: the tower is float32 with those values
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    tower, logit_scale = load_clip_text(half)
    assert tower.text_projection.dtype == torch.float32 and logit_scale.dtype == torch.float32
    rounded = _small_clip(quick_gelu=True)
    rounded.load_state_dict({k: v.float() for k, v in half.items()})
    assert _rel(_embed(tower, tokens), _encode_text(rounded, tokens)) < 1e-5
    # controls: a random tower, or these weights with the wrong activation, are visibly different
    assert _rel(_embed(TextTransformer(**clip_text_config(sd)), tokens), want) > 0.1
    wrong_act, _ = load_clip_text(sd, act="gelu")
    assert _rel(_embed(wrong_act, tokens), want) > 1e-3


def test_open_clip_custom_text_layout_and_linear_projection():
    ref = _small_clip(custom_text=True, quick_gelu=False)  # the tower under text.*
    sd = ref.state_dict()
    assert "text.token_embedding.weight" in sd and "token_embedding.weight" not in sd
    tokens = tokenize(TEXTS[:4], context_length=20)
    want = _encode_text(ref, tokens)
    tower, logit_scale = load_clip_text(sd, act="gelu")
    assert logit_scale.item() == pytest.approx(3.21)
    assert _rel(_embed(tower, tokens), want) < 1e-5

    # the projection stored as an nn.Linear without bias, (embed_dim, width)
    linear = dict(sd)
    linear["text.text_projection.weight"] = linear.pop("text.text_projection").t().clone()
    tower2, _ = load_clip_text(linear, act="gelu")
    assert torch.equal(tower2.text_projection, tower.text_projection)
    linear["text.text_projection.bias"] = torch.zeros(48)
    with pytest.raises(ValueError, match="text_projection.bias"):
        load_clip_text(linear, act="gelu")


# --------------------------------------------------------------------------------------------
# the tower itself
# --------------------------------------------------------------------------------------------
def test_architecture_is_read_from_shapes():
    ref = _small_clip(context_length=12, vocab_size=1000, width=192, heads=3, layers=4, mlp_ratio=2.0)
    sd = ref.state_dict()
    cfg = clip_text_config(sd)
    assert cfg == dict(vocab_size=1000, context_length=12, width=192, layers=4, heads=3, embed_dim=48, mlp_ratio=2.0)
    assert clip_text_config(sd, heads=6)["heads"] == 6
    tokens = torch.randint(1, 999, (3, 12), generator=torch.Generator().manual_seed(3))
    tokens[:, 7] = 999  # the end token: the largest id of each row
    tower, _ = load_clip_text(sd)
    assert _rel(_embed(tower, tokens), _encode_text(ref, tokens)) < 1e-5
    # a width that is not a multiple of CLIP's 64-wide heads needs heads=
    odd = _small_clip(width=96, heads=2, layers=1).state_dict()
    with pytest.raises(ValueError, match="pass heads="):
        clip_text_config(odd)
    assert clip_text_config(odd, heads=2)["heads"] == 2


def test_causal_mask_makes_padding_and_length_irrelevant():
    torch.manual_seed(0)
    tower = TextTransformer.tiny().eval()
    assert (tower.context_length, tower.width, tower.layers, tower.heads, tower.embed_dim) == (16, 64, 2, 2, 64)
    tokens = tokenize(["a red square moving left", "a blue circle"], context_length=16)
    full = _embed(tower, tokens)
    assert full.shape == (2, 64)
    padded = tokens.clone()
    padded[0, 8:] = 123  # after the end token (position 6): never attended to by it
    assert padded[0].argmax() == tokens[0].argmax()
    torch.testing.assert_close(_embed(tower, padded), full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_embed(tower, tokens[:, :8]), full, rtol=1e-6, atol=1e-6)  # shorter inputs
    changed = tokens.clone()
    changed[0, 2] = 500  # a token before the end token does matter
    assert (_embed(tower, changed)[0] - full[0]).abs().max() > 1e-4
    torch.testing.assert_close(tower.encode(["a red square moving left", "a blue circle"]), full)


def test_tiny_tower_trains_and_reports_layers_for_lr_decay():
    torch.manual_seed(0)
    tower = TextTransformer.tiny(act="gelu", vocab_size=100)  # a small vocabulary keeps the steps cheap
    tokens = torch.randint(1, 98, (4, 16), generator=torch.Generator().manual_seed(4))
    tokens[:, 9] = 99  # end tokens
    target = torch.eye(4, 64)
    opt = torch.optim.AdamW(tower.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(tower(tokens), target)
        opt.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    ids = {n: tower.layer_id(n) for n, _ in tower.named_parameters()}
    assert ids["token_embedding.weight"] == 0 and ids["positional_embedding"] == 0
    assert ids["transformer.resblocks.1.mlp.c_fc.weight"] == 2 and ids["text_projection"] == 3
    assert tower.no_weight_decay() <= set(ids)


def test_own_state_dict_round_trips_and_keys_are_openais(clip_b16):
    tower = TextTransformer.from_config("clip_b16")
    text_keys = {k for k in clip_b16.state_dict() if not k.startswith("visual.") and k != "logit_scale"}
    assert set(tower.state_dict()) == text_keys  # OpenAI / open_clip keys, one for one
    small = TextTransformer.tiny()
    back, scale = load_clip_text(small.state_dict(), heads=2, default_logit_scale=math.log(1 / 0.07))
    assert scale.item() == pytest.approx(math.log(1 / 0.07))
    tokens = tokenize(["a dog"], context_length=16)
    assert torch.equal(_embed(back, tokens), _embed(small, tokens))
    # the head count is not in the shapes: 64-wide heads (CLIP's) are assumed unless heads= says otherwise
    one_head, _ = load_clip_text(small.state_dict(), default_logit_scale=0.0)
    assert one_head.heads == 1 and _rel(_embed(one_head, tokens), _embed(small, tokens)) > 1e-3
    with pytest.raises(ValueError, match="no logit_scale.*default_logit_scale"):
        load_clip_text(small.state_dict())


def test_bad_tokens_are_refused():
    tower = TextTransformer.tiny()
    with pytest.raises(ValueError, match="integer token ids"):
        tower(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="integer token ids"):
        tower(torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="length 77.*1..16"):
        tower(tokenize(["a dog"]))
    with pytest.raises(ValueError, match="outside this text tower's vocabulary of 49408"):
        tower(torch.full((1, 4), 49408))
    with pytest.raises(ValueError, match="divisible by heads"):
        TextTransformer(width=64, heads=3)
    with pytest.raises(ValueError, match="unknown act"):
        TextTransformer.tiny(act="relu")
    with pytest.raises(ValueError, match="unknown text tower"):
        TextTransformer.from_config("clip_h14")


# --------------------------------------------------------------------------------------------
# bad checkpoints
# --------------------------------------------------------------------------------------------
def test_checkpoints_without_a_clip_text_tower_are_refused(tmp_path):
    sd = _small_clip().state_dict()
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    with pytest.raises(ValueError, match="visual tower but no text tower"):
        load_clip_text(visual)
    visual_only = {k[len("visual."):]: v for k, v in visual.items()}  # OpenAI's visual tower alone
    torch.save(visual_only, tmp_path / "visual.pt")
    with pytest.raises(ValueError, match="visual tower but no text tower"):
        load_clip_text(tmp_path / "visual.pt")
    with pytest.raises(ValueError, match="video model"):
        load_clip_text({"backbone.conv1.weight": torch.zeros(1), "head.out.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unrecognised checkpoint for a CLIP text tower"):
        load_clip_text({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="Hugging Face"):
        clip_text_state_dict({"text.transformer.embeddings.word_embeddings.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_clip_text(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_clip_text(tmp_path / "junk.pt")

    layer_scale = dict(sd)
    layer_scale["transformer.resblocks.0.ls_1.gamma"] = torch.ones(128)
    with pytest.raises(ValueError, match="ls_1.gamma"):
        load_clip_text(layer_scale)
    gap = {k: v for k, v in sd.items() if not k.startswith("transformer.resblocks.1.")}
    with pytest.raises(ValueError, match="not numbered 0..N-1"):
        load_clip_text(gap)
    bad_pos = dict(sd, positional_embedding=torch.zeros(20, 96))
    with pytest.raises(ValueError, match="inconsistent text tower"):
        load_clip_text(bad_pos)
    bad_scale = dict(sd, logit_scale=torch.zeros(3))
    with pytest.raises(ValueError, match="logit_scale has shape"):
        load_clip_text(bad_scale)
