"""The benchmarks' tensor-memory measure (``benchmarks/_common.peak_tensor_bytes``) counts what is live."""
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import iter_tensors, peak_tensor_bytes  # noqa: E402

MIB = 2**20


def test_peak_counts_live_storages_once_and_frees():
    def fn():
        a = torch.empty(MIB // 4)  # 1 MiB
        b = torch.empty(2 * MIB // 4)  # 2 MiB -> 3 live
        views = [a[:10], a.view(2, -1), a[1:]]  # the same storage: no more memory
        del a, views
        c = torch.empty(3 * MIB // 4)  # 2 + 3 = 5 live: the peak
        del c
        d = torch.empty(MIB // 4)  # 2 + 1
        return b, d

    assert peak_tensor_bytes(fn) == 5 * MIB


def test_peak_includes_what_autograd_keeps_and_excludes_parameter_views():
    torch.manual_seed(0)
    lin = nn.Linear(256, 256, bias=False)  # 256 KiB of weight, viewed (t()) by the forward
    x = torch.randn(1024, 256)  # 1 MiB input

    def step():
        h = torch.relu(lin(x))  # h (1 MiB) is kept for backward by the next matmul and relu
        (lin(h) ** 2).sum().backward()

    peak = peak_tensor_bytes(step, list(iter_tensors(lin, x)))
    # at least the two 1 MiB activations kept for backward, and no 256 KiB weight view counted twice over
    assert 2 * MIB <= peak < 6 * MIB
    def infer():
        with torch.no_grad():
            lin(torch.relu(lin(x)))

    inference = peak_tensor_bytes(infer, list(iter_tensors(lin, x)))
    assert MIB <= inference < peak
