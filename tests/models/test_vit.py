"""TAdaFormer / CLIP-ViT video models: exact at init against open_clip, checkpoint formats (open_clip,
OpenAI visual-only and TorchScript, the paper's release), CLIP's visual projection (``forward_embed``
equals ``encode_image`` on a static clip), positional-embedding resampling, the TAda branch's effect,
bad checkpoints, and the paper's parameter / FLOP counts (SPEC §2, §3, §6, §9)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tada
from release_reference import make_released_route_attn, released_route_attn
from tada.models import load_pretrained
from tada.models.flops import profile_model
from tada.models.pretrained import centre_inflate
from tada.models.vit import VideoViT, resample_pos_embed
from tada.nn.layers import drop_path

open_clip = pytest.importorskip("open_clip")


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _small(**kw):
    """A small VideoViT for fast tests: 128 wide, 2 layers, patch 16, 64 px (4x4 grid)."""
    args = dict(width=128, layers=2, heads=2, patch_size=16, img_size=64, tada_head_dim=32, num_classes=10)
    args.update(kw)
    return VideoViT(**args)


def _randomise_ln(module, gen):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))


def _clip_cls_before_ln_post(visual, frames):
    """open_clip's CLS token before ln_post for a batch of images, via a hook on ln_post's input."""
    seen = {}
    hook = visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    try:
        with torch.no_grad():
            visual(frames)
    finally:
        hook.remove()
    x = seen["x"]
    return x[:, 0] if x.dim() == 3 else x


# --------------------------------------------------------------------------------------------
# exact at init against open_clip's ViT-B-16 (OpenAI CLIP architecture: QuickGELU)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_b16(tmp_path_factory):
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    _randomise_ln(ref.visual, torch.Generator().manual_seed(1))  # LayerNorm affines are not 1/0
    path = tmp_path_factory.mktemp("clip") / "open_clip_vit_b16.pt"
    torch.save(ref.state_dict(), path)
    x = torch.randn(1, 3, 4, 224, 224, generator=torch.Generator().manual_seed(2))
    cls = _clip_cls_before_ln_post(ref.visual, x[0].transpose(0, 1))  # (4 frames, 768)
    return ref, path, x, cls


@pytest.fixture(scope="module")
def tadaformer_b16(clip_b16):
    _, path, _, _ = clip_b16
    return tada.create_model("tadaformer_b16", pretrained=path, num_classes=400).eval()


def test_tadaformer_b16_equals_clip_on_even_frames_at_init(clip_b16, tadaformer_b16):
    ref, _, x, cls = clip_b16
    m = tadaformer_b16
    report = m.load_report
    assert report.new_by_design and all(".tada." in k for k in report.new_by_design)
    assert report.reinitialised_head == ["head.bias", "head.weight"]
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape == (1, 768, 2, 1, 1)
        ours = feats[0, :, :, 0, 0].T  # (T' = 2, 768)
        # the blocks matter: the CLS token moved far from its embedding
        assert _rel(ours, cls[0::2]) < 1e-5, _rel(ours, cls[0::2])
        # head_norm is CLIP's ln_post on the temporal mean
        pre = m.forward_head(feats, pre_logits=True)
        assert _rel(pre[0], ref.visual.ln_post(cls[0::2].mean(0))) < 1e-5
    assert _rel(ours, ref.visual.class_embedding.expand_as(ours)) > 0.5


def test_tsn_vit_b16_equals_clip_on_every_frame(clip_b16):
    _, path, x, cls = clip_b16
    m = tada.create_model("tsn_vit_b16_clip", pretrained=path, num_classes=400).eval()
    assert m.frame_multiple == 1 and not m.load_report.new_by_design
    with torch.no_grad():
        feats = m.forward_features(x)
    assert feats.shape == (1, 768, 4, 1, 1)
    assert _rel(feats[0, :, :, 0, 0].T, cls) < 1e-5


class _OpenAIJitLike(nn.Module):
    """What an OpenAI TorchScript archive's state_dict holds: the CLIP (here the visual tower and a
    piece of the text tower, to keep the file small) plus scalar extras."""

    def __init__(self, clip):
        super().__init__()
        self.visual, self.ln_final = clip.visual, clip.ln_final
        for name, v in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(v))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_openai_visual_only_and_torchscript_layouts_load_the_same(clip_b16, tadaformer_b16, tmp_path):
    ref, _, _, _ = clip_b16
    full = ref.state_dict()
    # the open_clip dict of this architecture *is* the OpenAI layout; also check the visual-only
    # variant (no ``visual.`` prefix, with OpenAI's extras) and a TorchScript archive
    visual_only = {k[len("visual."):]: v for k, v in full.items() if k.startswith("visual.")}
    visual_only.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77))
    assert "proj" in visual_only and "transformer.resblocks.11.attn.in_proj_weight" in visual_only
    torch.save(visual_only, tmp_path / "visual.pt")
    torch.jit.save(torch.jit.script(_OpenAIJitLike(ref)), str(tmp_path / "openai_jit.pt"))
    expected = {k: v for k, v in tadaformer_b16.state_dict().items() if not k.startswith("head.")}
    read = {}
    for name in ("visual.pt", "openai_jit.pt"):
        sd = read[name] = tada.models.read_checkpoint(tmp_path / name)
        converted = tadaformer_b16.checkpoint_filter_fn(sd)
        assert "input_resolution" in sd or name == "visual.pt"
        new = tadaformer_b16.new_parameter_names()
        assert set(converted) == {k for k in expected if k not in new}, name
        for k, v in converted.items():
            assert torch.equal(v, expected[k]), (name, k)
    # the full pipeline on the archive, with CLIP's visual projection
    m = tada.create_model("tsn_vit_b16_clip", pretrained=tmp_path / "openai_jit.pt", num_classes=0, embed_dim=512)
    assert torch.equal(m.patch_embed.weight, ref.visual.conv1.weight)
    assert torch.equal(m.proj, ref.visual.proj)
    for name, sd in read.items():
        assert torch.equal(m.checkpoint_filter_fn(sd)["proj"], ref.visual.proj), name
    frame = clip_b16[2][:, :, 0]
    with torch.no_grad():
        got, want = m.eval().forward_embed(frame[:, :, None]), ref.encode_image(frame)
    assert _rel(got, want) < 1e-5, _rel(got, want)


def test_open_clip_gelu_model_with_mlp_act_gelu():
    """open_clip's own (LAION-style) ViTs use exact GELU: ``mlp_act="gelu"`` reproduces them."""
    torch.manual_seed(3)
    ref = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=16, image_size=64),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=1, layers=1),
    ).eval()
    _randomise_ln(ref.visual, torch.Generator().manual_seed(4))
    x = torch.randn(2, 3, 3, 64, 64)
    cls = _clip_cls_before_ln_post(ref.visual, x.transpose(1, 2).reshape(6, 3, 64, 64))
    for act, close in (("gelu", True), ("quick_gelu", False)):
        m = _small(tada=False, mlp_act=act).eval()
        load_pretrained(m, ref.state_dict())
        with torch.no_grad():
            ours = m.forward_features(x)[:, :, :, 0, 0].transpose(1, 2).reshape(6, 128)
        assert (_rel(ours, cls) < 1e-5) == close, (act, _rel(ours, cls))


# --------------------------------------------------------------------------------------------
# CLIP's visual projection: the video embedding of video-text models (SPEC §9)
# --------------------------------------------------------------------------------------------
def _static(frames, t):
    """A clip of ``t`` copies of each image ``(B, 3, H, W)``."""
    return frames[:, :, None].expand(-1, -1, t, -1, -1).contiguous()


def test_forward_embed_equals_clip_encode_image_on_a_static_clip(clip_b16):
    """TAdaFormer-B/16 (the TSN CLIP ViT: in the OpenAI-archive test above) from open_clip's ViT-B-16."""
    ref, _, x, cls = clip_b16
    frame = x[:, :, 0]
    with torch.no_grad():
        want = ref.encode_image(frame)  # (1, 512), un-normalised
    m = tada.create_model("tadaformer_b16", num_classes=0, embed_dim=512).eval()
    load_pretrained(m, ref.state_dict())
    assert torch.equal(m.proj, ref.visual.proj)
    with torch.no_grad():
        got, moving = m.forward_embed(_static(frame, 2))[0], m.forward_embed(x)[0]
    assert _rel(got, want[0]) < 1e-5, _rel(got, want[0])
    # on a clip of different frames: ln_post of the mean CLS token (frames 0 and 2 at init), then proj
    with torch.no_grad():
        want_clip = ref.visual.ln_post(cls[0::2].mean(0)) @ ref.visual.proj
        mean_of_images = (ref.visual.ln_post(cls[0::2]) @ ref.visual.proj).mean(0)
    assert _rel(moving, want_clip) < 1e-5, _rel(moving, want_clip)
    assert _rel(moving, mean_of_images) > 1e-3  # the control: averaging the image embeddings is not it


def test_projection_is_loaded_with_embed_dim_and_dropped_without():
    clip = _small_clip(128, 16).eval()  # open_clip's own layout, exact GELU, embed_dim 32, 64 px
    sd = clip.state_dict()
    frames = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = clip.encode_image(frames)
    for tada_flag in (False, True):
        m = _small(tada=tada_flag, mlp_act="gelu", embed_dim=32, num_classes=0).eval()
        load_pretrained(m, sd)
        assert torch.equal(m.proj, clip.visual.proj)
        with torch.no_grad():
            assert _rel(m.forward_embed(_static(frames, 2)), want) < 1e-5
    plain = _small(mlp_act="gelu")
    load_pretrained(plain, sd)  # a classifier: CLIP's projection is dropped
    assert plain.proj is None and "proj" not in plain.state_dict()
    with pytest.raises(ValueError, match="without a projection: pass embed_dim="):
        plain.forward_embed(_static(frames, 2))
    with pytest.raises(ValueError, match=r"shape mismatch.*proj: checkpoint .128, 32. vs model .128, 16."):
        load_pretrained(_small(embed_dim=16), sd)

    # own checkpoints: the projection round-trips, a classifier drops it
    src = _small(embed_dim=32)
    dst = _small(embed_dim=32)
    load_pretrained(dst, src.state_dict())
    assert _same_state(src, dst)
    load_pretrained(_small(), src.state_dict())
    # a checkpoint without one (a classifier, the release's TAdaFormer) cannot fill a projection
    with pytest.raises(ValueError, match="missing keys: proj"):
        load_pretrained(_small(embed_dim=32), _small().state_dict())
    with pytest.raises(ValueError, match="missing keys: proj"):
        load_pretrained(VideoViT(width=D, layers=1, heads=4, patch_size=16, img_size=64, tada_head_dim=HEAD_DIM,
                                 num_classes=10, embed_dim=32),
                        _released_state(torch.Generator().manual_seed(10), 1, False, False))
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        _small(embed_dim=0)
    assert src.layer_id("proj") == src.layers + 1  # the head group of layer-wise lr decay
    assert "embed_dim=32" in repr(src)


# --------------------------------------------------------------------------------------------
# positional embedding and input sizes
# --------------------------------------------------------------------------------------------
def test_other_input_sizes_resample_the_positional_embedding(tadaformer_b16):
    m = tadaformer_b16
    assert m.pos_embed(14, 14) is m.positional_embedding  # 224: no interpolation at all
    pos = m.pos_embed(10, 10)
    assert pos.shape == (101, 768)
    assert torch.equal(pos[0], m.positional_embedding[0])  # the CLS position is kept
    grid = m.positional_embedding[1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(10, 10), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[1:], want.permute(0, 2, 3, 1).reshape(100, 768))
    with torch.no_grad():
        out = m(torch.randn(1, 3, 2, 160, 160))
    assert out.shape == (1, 400) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        m(torch.randn(1, 3, 2, 100, 112))


def test_non_square_inputs_and_constant_grids():
    m = _small().eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 2, 64, 96)).shape == (1, 10)
    const = torch.randn(1, 8).expand(17, 8).clone()
    torch.testing.assert_close(resample_pos_embed(const, (5, 7)), const[:1].expand(36, 8))


def test_checkpoint_of_another_resolution_is_resampled_on_load():
    src = _small(img_size=96)  # a 6x6 grid, like CLIP@336 into a 224 model
    m = _small()
    load_pretrained(m, src.state_dict())
    want = resample_pos_embed(src.positional_embedding.detach(), (4, 4))
    assert torch.equal(m.positional_embedding.detach(), want)


# --------------------------------------------------------------------------------------------
# the TAda branch
# --------------------------------------------------------------------------------------------
def _centre_stem(m, gen):
    with torch.no_grad():
        m.patch_embed.weight.copy_(centre_inflate(0.05 * torch.randn(128, 3, 16, 16, generator=gen), 3))


def test_tada_branch_adds_zero_at_init_and_makes_frame_order_matter():
    torch.manual_seed(5)  # the model's init too: the effect checked below depends on it
    gen = torch.Generator().manual_seed(5)
    m = _small().eval()
    _centre_stem(m, gen)  # the stem sees frames 0, 2, 4 only, as from a CLIP checkpoint
    x = torch.randn(2, 3, 6, 64, 64, generator=gen)
    rolled = x.roll(2, dims=2)  # the stem now sees frames 2, 4, 0: the same frames, reordered
    with torch.no_grad():
        y0, y0_rolled = m(x), m(rolled)
        torch.testing.assert_close(y0, y0_rolled, rtol=1e-5, atol=1e-6)  # order-free at init
        for blk in m.blocks:
            blk.tada.proj.weight.normal_(0, 0.2, generator=gen)
        y1, y1_rolled = m(x), m(rolled)
    assert (y1 - y0).abs().max() > 1e-3
    assert (y1 - y1_rolled).abs().max() > 1e-3

    tsn = _small(tada=False).eval()
    with torch.no_grad():
        perm = x[:, :, torch.tensor([3, 0, 5, 1, 4, 2])]
        torch.testing.assert_close(tsn(x), tsn(perm), rtol=1e-5, atol=1e-6)


def test_cls_token_gets_nothing_from_the_tada_branch():
    blk = _small(layers=1).blocks[0].eval()
    with torch.no_grad():
        blk.tada.proj.weight.normal_()
        blk.tada.proj.bias.normal_()
        x = torch.randn(2 * 2, 17, 128)
        out = blk._tada(blk.tada, x, 2, (2, 4, 4))
    assert torch.equal(out[:, 0], x[:, 0]) and not torch.equal(out[:, 1:], x[:, 1:])


def test_drop_path_is_one_decision_per_video():
    torch.manual_seed(0)
    x = torch.ones(64 * 3, 5, 4)
    y = drop_path(x, 0.5, True, batch=64).reshape(64, 3 * 5 * 4)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert (y == y[:, :1]).all()  # all frames and tokens of a video share the decision
    assert torch.equal(drop_path(x, 0.5, False, batch=64), x)
    m = _small(drop_path_rate=0.3, double_tada=True, temp_enhance=True).train()
    assert [b.drop_path.p for b in m.blocks] == pytest.approx([0.0, 0.3])
    m(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_options_are_validated():
    with pytest.raises(ValueError, match="tada=True"):
        _small(tada=False, double_tada=True)
    with pytest.raises(ValueError, match="tada_head_dim"):
        _small(tada_head_dim=48)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        _small(img_size=70)
    with pytest.raises(ValueError, match="heads"):
        _small(heads=3)
    with pytest.raises(ValueError, match="mlp_act"):
        _small(mlp_act="relu")
    with pytest.raises(ValueError, match="drop_path_rate"):
        _small(drop_path_rate=1.0)
    with pytest.raises(ValueError, match="multiple of 2"):
        _small()(torch.randn(1, 3, 3, 64, 64))


# --------------------------------------------------------------------------------------------
# the paper's released layout (SPEC §6)
# --------------------------------------------------------------------------------------------
D, C, HEAD_DIM = 256, 128, 32  # branch on 128 channels, routing on 64 = 2 heads of 32


def _released_branch(gen, temp_enhance):
    r = lambda *s, scale=0.1: scale * torch.randn(*s, generator=gen)  # noqa: E731
    kt = 3 if temp_enhance else 1
    t = {
        "tada_pre_proj.weight": r(C, D, kt, 1, 1), "tada_pre_proj.bias": r(C),
        "tadaconv.weight": r(1, 1, C, 1, 3, 3, scale=0.3), "tadaconv.bias": r(1, 1, C),
        "tada_proj.weight": r(D, C, 1, 1, 1), "tada_proj.bias": r(D),
    }
    for bn in ("bn_a", "bn_b"):
        t.update({
            f"tadaconv.{bn}.weight": 1 + r(C), f"tadaconv.{bn}.bias": r(C),
            f"tadaconv.{bn}.running_mean": r(C), f"tadaconv.{bn}.running_var": 0.5 + torch.rand(C, generator=gen),
            f"tadaconv.{bn}.num_batches_tracked": torch.tensor(7),
        })
    for k, v in make_released_route_attn(C, 2, generator=gen).items():
        t[f"tadaconv.rf_func.{k}"] = v
    return t


def _released_state(gen, layers, temp_enhance, double_tada, num_classes=10):
    r = lambda *s, scale=0.1: scale * torch.randn(*s, generator=gen)  # noqa: E731
    sd = {
        "backbone.conv1.weight": r(D, 3, 3, 16, 16, scale=0.02),
        "backbone.class_embedding": r(D), "backbone.positional_embedding": r(17, D),
        "backbone.ln_pre.weight": 1 + r(D), "backbone.ln_pre.bias": r(D),
        "backbone.ln_post.weight": 1 + r(D), "backbone.ln_post.bias": r(D),
        "head.out.weight": r(num_classes, D), "head.out.bias": r(num_classes),
    }
    for i in range(layers):
        p = f"backbone.layers.{i}."
        sd.update({
            p + "attn.in_proj_weight": r(3 * D, D, scale=0.05), p + "attn.in_proj_bias": r(3 * D),
            p + "attn.out_proj.weight": r(D, D, scale=0.05), p + "attn.out_proj.bias": r(D),
            p + "mlp.c_fc.weight": r(4 * D, D, scale=0.05), p + "mlp.c_fc.bias": r(4 * D),
            p + "mlp.c_proj.weight": r(D, 4 * D, scale=0.05), p + "mlp.c_proj.bias": r(D),
        })
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(D), r(D)
        for branch in ("tada", "tada2") if double_tada else ("tada",):
            sd.update({f"{p}{branch}.{k}": v for k, v in _released_branch(gen, temp_enhance).items()})
    return sd


def _reference_branch(t, x, head_dim):
    """The released TAda branch written from SPEC §2 on released tensors; ``x`` (B, D, T, gh, gw)."""
    w = t["tada_pre_proj.weight"]
    y = F.conv3d(x, w, t["tada_pre_proj.bias"], padding=(w.shape[2] // 2, 0, 0))  # (B, C, T, gh, gw)
    rf = {k[len("tadaconv.rf_func."):]: v for k, v in t.items() if k.startswith("tadaconv.rf_func.")}
    alpha, beta = released_route_attn(rf, y, head_dim, zero_init=False)  # (B, C, T)
    kernel, bias = t["tadaconv.weight"][0, 0], t["tadaconv.bias"][0, 0]
    b, c, frames = alpha.shape
    z = torch.stack([
        torch.cat([
            F.conv2d(y[i:i + 1, :, f], kernel * alpha[i, :, f, None, None, None], bias * beta[i, :, f],
                     padding=1, groups=c)
            for i in range(b)
        ]) for f in range(frames)
    ], dim=2)  # per-(video, frame) kernels, as the release computes them
    zp = F.pad(z, (0, 0, 0, 0, 1, 1))
    pooled = (zp[:, :, :-2] + zp[:, :, 1:-1] + zp[:, :, 2:]) / 3

    def bn(v, name):
        g = lambda s: t[f"tadaconv.{name}.{s}"][None, :, None, None, None]  # noqa: E731
        return (v - g("running_mean")) / torch.sqrt(g("running_var") + 1e-5) * g("weight") + g("bias")

    a = bn(z, "bn_a") + bn(pooled, "bn_b")
    a = a * torch.sigmoid(1.702 * a)
    return F.conv3d(a, t["tada_proj.weight"], t["tada_proj.bias"])


@pytest.mark.parametrize("temp_enhance,double_tada", [(False, False), (True, True)])
def test_released_tadaformer_layout(tmp_path, temp_enhance, double_tada):
    gen = torch.Generator().manual_seed(6)
    sd = _released_state(gen, 2, temp_enhance, double_tada)
    path = tmp_path / "released.pyth"
    torch.save({"epoch": 0, "model_state": sd, "cfg": {}}, path)
    m = VideoViT(width=D, layers=2, heads=4, patch_size=16, img_size=64, tada_head_dim=HEAD_DIM,
                 temp_enhance=temp_enhance, double_tada=double_tada, num_classes=10).eval()
    report = load_pretrained(m, path)
    assert not report.new_by_design and not report.reinitialised_head  # everything came from the file

    assert torch.equal(m.patch_embed.weight, sd["backbone.conv1.weight"])
    assert torch.equal(m.head_norm.weight, sd["backbone.ln_post.weight"])
    assert torch.equal(m.head.weight, sd["head.out.weight"])
    assert torch.equal(m.blocks[1].attn.in_proj_weight, sd["backbone.layers.1.attn.in_proj_weight"])
    branch_names = ("tada", "tada2") if double_tada else ("tada",)
    for name in branch_names:
        ours = getattr(m.blocks[1], name)
        rel = {k[len(f"backbone.layers.1.{name}."):]: v for k, v in sd.items()
               if k.startswith(f"backbone.layers.1.{name}.")}
        assert torch.equal(ours.conv.weight, rel["tadaconv.weight"][0, 0])
        assert torch.equal(ours.conv.bias, rel["tadaconv.bias"].flatten())
        assert torch.equal(ours.tpool.norm1.running_var, rel["tadaconv.bn_a.running_var"])
        assert torch.equal(ours.tpool.norm2.weight, rel["tadaconv.bn_b.weight"])
        assert torch.equal(ours.proj.weight, rel["tada_proj.weight"].flatten(1))
        want_pre = rel["tada_pre_proj.weight"] if temp_enhance else rel["tada_pre_proj.weight"].flatten(1)
        assert torch.equal(ours.pre_proj.weight, want_pre)

        # the routing against the independent reference of the released V2 routing
        x = torch.randn(2, C, 6, 3, 3, generator=gen)
        rf = {k[len("tadaconv.rf_func."):]: v for k, v in rel.items() if k.startswith("tadaconv.rf_func.")}
        with torch.no_grad():
            alpha, beta = ours.conv.routing(x)
        want_alpha, want_beta = released_route_attn(rf, x, HEAD_DIM, zero_init=False)
        assert _rel(alpha, want_alpha) < 1e-5 and _rel(beta, want_beta) < 1e-5

        # the whole branch against a reference written on the released tensors
        tokens = torch.randn(2, D, 4, 4, 4, generator=gen)  # (B, D, T, gh, gw)
        with torch.no_grad():
            got = ours(tokens.permute(0, 2, 3, 4, 1).reshape(8, 16, D), 2, (4, 4, 4))
        want = _reference_branch(rel, tokens, HEAD_DIM).permute(0, 2, 3, 4, 1).reshape(8, 16, D)
        assert _rel(got, want) < 1e-5, _rel(got, want)
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, 3, 4, 64, 64))).all()


def test_released_branch_with_linear_shaped_projections():
    gen = torch.Generator().manual_seed(7)
    sd = _released_state(gen, 1, False, False)
    for k in ("backbone.layers.0.tada.tada_pre_proj.weight", "backbone.layers.0.tada.tada_proj.weight"):
        sd[k] = sd[k].flatten(1)  # 2-D Linear weights are accepted too
    m = VideoViT(width=D, layers=1, heads=4, patch_size=16, img_size=64, tada_head_dim=HEAD_DIM, num_classes=10)
    load_pretrained(m, sd)
    assert torch.equal(m.blocks[0].tada.pre_proj.weight, sd["backbone.layers.0.tada.tada_pre_proj.weight"])


# --------------------------------------------------------------------------------------------
# bad checkpoints
# --------------------------------------------------------------------------------------------
def _small_clip(width, patch):
    torch.manual_seed(8)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            layers=2, width=width, head_width=64, patch_size=patch, image_size=64 // patch * patch
        ),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=1, layers=1),
    )


def test_bad_checkpoints_raise_and_leave_the_model_unchanged(tmp_path):
    import torchvision

    m = _small()
    before = {k: v.clone() for k, v in m.state_dict().items()}

    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="unrecognised checkpoint format.*visual.conv1.weight"):
        load_pretrained(m, tmp_path / "r50.pth")

    torch.save(_small().state_dict(), tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_pretrained(m, tmp_path / "truncated.pth")

    # a wider CLIP with another patch size (as ViT-L/14 into B/16): shapes differ
    with pytest.raises(ValueError, match="shape mismatch.*in_proj_weight: checkpoint .576, 192. vs model .384, 128."):
        load_pretrained(m, _small_clip(192, 14).state_dict())
    # a deeper model: unexpected blocks
    with pytest.raises(ValueError, match="unexpected keys.*blocks.2"):
        load_pretrained(m, _small(layers=3).state_dict())
    # another family's released checkpoint
    with pytest.raises(ValueError, match="not a TAdaFormer"):
        load_pretrained(m, {"backbone.stages.0.0.dwconv.weight": torch.zeros(1), "head.out.weight": torch.zeros(1)})
    # a CLIP with extra visual pieces (e.g. attention pooling) is not silently half-loaded
    sd = _small_clip(128, 16).state_dict()
    sd["visual.attn_pool.query"] = torch.zeros(1, 128)
    with pytest.raises(ValueError, match="attn_pool"):
        load_pretrained(m, sd)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    load_pretrained(m, _small_clip(128, 16).state_dict())  # the right size loads


def test_own_checkpoints_round_trip_and_tsn_to_tada():
    src = _small(temp_enhance=True)
    dst = _small(temp_enhance=True)
    load_pretrained(dst, src.state_dict())
    assert _same_state(src, dst)
    tsn = _small(tada=False)
    m = _small()
    report = load_pretrained(m, tsn.state_dict())  # a 2D stem is centre-inflated, branches are new
    assert report.new_by_design
    assert torch.equal(m.patch_embed.weight, centre_inflate(tsn.patch_embed.weight.detach(), 3))


# --------------------------------------------------------------------------------------------
# FLOP counting details (the paper rows of flops.PAPER are checked in test_registry.py)
# --------------------------------------------------------------------------------------------
def test_flop_count_includes_attention():
    """The spatial attention's two matmuls (2 * L^2 * D per frame and layer) are counted."""
    with torch.device("meta"):
        tsn = tada.create_model("tsn_vit_b16_clip", num_classes=0)
    _, gflops = profile_model(tsn, 1, 224)
    linear = 12 * 197 * 768 * (3 * 768 + 768 + 2 * 4 * 768) + 196 * 768 * 3 * 256
    attention = 12 * 2 * 197 ** 2 * 768
    assert math.isclose(gflops * 1e9, linear + attention, rel_tol=1e-3)
