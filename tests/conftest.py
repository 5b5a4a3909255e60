import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's threads only contend on a 2-core machine (5-30x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
