"""PyTorchVideo as a test oracle: its SlowFast-R50 and Slow-R50 (random weights, random BN statistics),
saved as a state dict in its own key layout, load into ours through ``pretrained=`` and give the same
logits on the same clip."""
import torch

import tada
from model_testing import randomise_bn


def _randomise(model):
    return randomise_bn(model, torch.Generator().manual_seed(0)).eval()


def _compare(source, ours_name, x_ours, x_source, tmp_path, **ours_kwargs):
    path = tmp_path / "pytorchvideo.pyth"
    torch.save({"model_state": source.state_dict()}, path)
    ours = tada.create_model(ours_name, pretrained=str(path), num_classes=400, drop_rate=0.0, **ours_kwargs).eval()
    with torch.no_grad():
        want, got = source(x_source), ours(x_ours)
    assert got.shape == want.shape == (1, 400)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_slowfast_r50_8x8_gives_pytorchvideos_logits(tmp_path):
    from pytorchvideo.models.slowfast import create_slowfast

    source = _randomise(create_slowfast(model_num_class=400, dropout_rate=0.0,
                                        head_pool_kernel_sizes=((8, 2, 2), (32, 2, 2))))
    torch.manual_seed(1)
    x = torch.randn(1, 3, 32, 64, 64)
    _compare(source, "slowfast_r50_8x8", x, [x[:, :, ::4], x], tmp_path)


def test_slow_r50_gives_pytorchvideos_logits(tmp_path):
    from pytorchvideo.models.resnet import create_resnet

    source = _randomise(create_resnet(model_num_class=400, dropout_rate=0.0, stem_conv_kernel_size=(1, 7, 7),
                                      head_pool_kernel_size=(8, 2, 2)))
    torch.manual_seed(1)
    x = torch.randn(1, 3, 8, 64, 64)
    _compare(source, "slowonly_r50", x, x, tmp_path)
