"""Every registered model, parametrised over the registry: a new model is tested without new code."""
import pytest
import torch

import tada
from tada.models import create_model, list_models
from tada.models.flops import PAPER, profile

MODELS = list_models()


def _input_for(model, frames, batch=2):
    patch = getattr(model, "patch_size", None)  # ViTs: 4x4 patches (the positional embedding is resampled)
    size = 4 * patch if patch else 64
    return torch.randn(batch, 3, frames, size, size)


def _frame_counts(model):
    fm = getattr(model, "frame_multiple", 1)
    return (2, 4) if fm == 2 else (3, 4)


def test_the_paper_models_are_registered():
    expected = {
        "tsn_r50", "tada2d_r50", "tsn_convnext_tiny", "tsn_convnext_small", "tsn_convnext_base",
        "tadaconvnext_tiny", "tadaconvnextv2_tiny", "tadaconvnextv2_small", "tadaconvnextv2_base",
        "tsn_vit_b16_clip", "tsn_vit_l14_clip", "tadaformer_b16", "tadaformer_l14",
    }
    assert expected <= set(MODELS), sorted(expected - set(MODELS))
    assert tada.list_models("tadaformer*") == ["tadaformer_b16", "tadaformer_l14"]


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_two_frame_counts_and_surface(name):
    """One build per model (the big ones take seconds to initialise): training forward + backward at
    two frame counts, then forward_features / forward_head / reset_classifier in eval mode."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    assert model.model_name == name
    big = sum(p.numel() for p in model.parameters()) > 60e6
    batch = 1 if big else 2
    model.train()
    for t in _frame_counts(model):
        x = _input_for(model, t, batch)
        out = model(x)
        assert out.shape == (batch, 7), (t, out.shape)
        assert torch.isfinite(out).all()
        model.zero_grad(set_to_none=True)
        out.logsumexp(1).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"parameters outside the graph: {no_grad[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)

    model.eval()
    x = _input_for(model, _frame_counts(model)[1], batch=1)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.dim() == 5 and feats.shape[:2] == (1, model.num_features)
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
        model.reset_classifier(3)
        assert model(x).shape == (1, 3)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", [n for n in MODELS if "mini" in n])
def test_headless(name):
    headless = create_model(name, num_classes=0)
    assert not any(n.startswith("head.") for n, _ in headless.named_parameters())
    x = _input_for(headless, _frame_counts(headless)[0], batch=1)
    assert headless(x).shape == (1, headless.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_is_rejected_where_it_enters(name):
    with torch.device("meta"):  # only the checks at the entrance run
        model = create_model(name, num_classes=2)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 4, 64, 64))
    if model.frame_multiple == 2:
        with pytest.raises(ValueError, match="multiple of 2"):
            model(torch.randn(1, 3, 3, 64, 64))


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="tada2d_r50"):
        create_model("tada2d_r5O")
    with pytest.raises(ValueError, match="tadaformer_b16"):
        create_model("tadaformer_b_16")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tsn_r50", num_classes=-1)
    with pytest.raises(TypeError):
        create_model("tsn_r50", not_an_option=1)


@pytest.mark.parametrize("row", PAPER, ids=lambda r: f"{r.model}-{r.frames}x{r.size}{'-' + r.note if r.note else ''}")
def test_params_and_flops_match_the_paper(row):
    """SPEC §3: params within 1.5 % and GFLOPs within 3 % (TAdaConvNeXt-V1 5 %), at the paper's
    frames and resolution, 400-class head."""
    p = profile(row.model, row.frames, row.size, overrides=dict(row.overrides), paper=row)
    if row.params_m:
        assert abs(p.params_diff) <= 100 * row.params_tol, f"params {p.params_m:.2f}M vs paper {row.params_m}M"
    assert abs(p.gflops_diff) <= 100 * row.gflops_tol, f"GFLOPs {p.gflops:.2f} vs paper {row.gflops}"


@pytest.mark.parametrize("name", [n for n in MODELS if "mini" in n] + ["tsn_vit_b16_clip"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, drop_rate=0.0).train()
    x = _input_for(model, _frame_counts(model)[0], batch=2)

    saved = []

    def grads():
        model.zero_grad(set_to_none=True)
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x).square().sum()
        saved.append(total[0])
        out.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = grads()
    model.load_state_dict(state)  # BN running stats back to where they were
    model.set_grad_checkpointing(True)
    got = grads()
    model.set_grad_checkpointing(False)
    assert saved[1] < 0.6 * saved[0], saved  # the blocks' activations were not kept
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def _blocks(model):
    return sum(1 for m in model.modules() if isinstance(m, model.grad_checkpoint_types))


def _smaller(model):
    """An architecture override other than the model's own, for its family (what ``model.kwargs`` may set)."""
    from tada.models.convnext import VideoConvNeXt
    from tada.models.resnet import VideoResNet
    from tada.models.vit import VideoViT

    if isinstance(model, VideoViT):
        return {"layers": 2}
    assert isinstance(model, (VideoResNet, VideoConvNeXt)), type(model)
    return {"depths": (1, 1, 1, 1) if _blocks(model) > 4 else (1, 1, 2, 1)}


@pytest.mark.parametrize("name", MODELS)
def test_architecture_can_be_overridden_by_keyword(name):
    """``create_model(name, depths=...)`` replaces the variant's default (it used to raise TypeError:
    multiple values for 'depths'), keeping the variant's kind (TSN stays TSN, TAda stays TAda)."""
    from tada.nn import TAdaConv2d

    with torch.device("meta"):
        default = create_model(name, num_classes=3)
        override = _smaller(default)
        small = create_model(name, num_classes=3, **override)

    def has_tada(m):
        return any(isinstance(b, TAdaConv2d) for b in m.modules())

    expected = override["layers"] if "layers" in override else sum(override["depths"])
    assert _blocks(small) == expected != _blocks(default)
    assert has_tada(small) == has_tada(default)
