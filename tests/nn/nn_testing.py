"""Helpers shared by the operator tests."""
import torch


def randomise(module, std=0.5, seed=0):
    """Give every weight (the zero-initialised last routing layers included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module
