"""The benchmark's PyTorch peer computes the blog's training: its compiled hand-written
backward and Adam follow eager autograd and torch.optim.Adam epoch by epoch."""

from __future__ import annotations

import numpy as np
import pytest

from jax_iris import torch_ensemble
from jax_iris.data import load_split

pytestmark = [
    pytest.mark.torch,
    pytest.mark.slow,
    # inductor itself touches torch.jit.script_method, deprecated in this torch
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

# float32 losses of 4 nets over 30 epochs; the compiled and eager forms differ only in
# the order of floating-point operations (measured: about 1e-6).
LOSS_TOLERANCE = 1e-4


@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_compiled_ensemble_follows_eager_autograd(arch, one_torch_thread):
    train = load_split().train
    gap = torch_ensemble.max_loss_gap(
        np.asarray(train.x, np.float32), np.asarray(train.y), arch=arch, nets=4, epochs=30
    )
    assert 0 <= gap < LOSS_TOLERANCE
