"""Helpers shared by the model tests (imported as a module beside them)."""
import torch
import torch.nn as nn


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def randomise_bn(model, g: torch.Generator):
    """Non-trivial BN statistics and affine parameters, so no BN is an identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model
