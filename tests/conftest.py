"""Fixtures shared by every test folder."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded CPU, OpenMP threads waiting for each other cost far more
    than they gain on tiny models (the numbers tested do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
