"""A TAdaConv2d with its routing exports to ONNX with dynamic batch and frame axes.

The release's grouped operator bakes B*T into the convolution's group count, so its graphs only run
at the export-time batch size and frame count; the fast path has no such constant.
"""
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from tada.nn import TAdaConv2d, TemporalAggregation



class TwoTAdaLayers(nn.Module):
    """V1 dense conv -> T-Pool -> V2 depthwise conv with bias calibration."""

    def __init__(self, c=8):
        super().__init__()
        self.dense = TAdaConv2d(c, c, 3, padding=1, routing="v1")
        self.agg = TemporalAggregation(c)
        self.dw = TAdaConv2d(
            c, c, 3, padding=1, groups=c, bias=True, cal_dim="cout", bias_calibration=True,
            routing="v2", routing_kwargs=dict(head_dim=2),
        )

    def forward(self, x):
        return self.dw(self.agg(self.dense(x)))


def test_onnx_dynamic_batch_and_frames(tmp_path):
    torch.manual_seed(0)
    model = TwoTAdaLayers().eval()
    with torch.no_grad():  # non-trivial calibrations and running stats, not the identity at init
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "tada.onnx"
    dims = {
        0: torch.export.Dim("batch", min=1, max=64),
        2: torch.export.Dim("frames", min=1, max=128),
        3: torch.export.Dim("height", min=3, max=512),
        4: torch.export.Dim("width", min=3, max=512),
    }
    torch.onnx.export(
        model, (torch.randn(2, 8, 4, 10, 10),), str(path), dynamo=True,
        dynamic_shapes={"x": dims}, input_names=["x"], output_names=["y"],
    )
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(3, 8, 7, 10, 10), (1, 8, 2, 12, 9), (5, 8, 16, 6, 6)]:
        x = torch.randn(shape)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 1e-4, shape
