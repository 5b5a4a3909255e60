"""The benchmark's PyTorch peer (``benchmarks/torch_ensemble.py``) computes the blog's
training: its stacks are the package's reference nets, trained as the reference loop
trains them, and its compiled hand-written backward and Adam follow eager autograd and
``torch.optim.Adam`` epoch by epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_ensemble

from jax_iris.data import load_split
from jax_iris.pytorch import reference

pytestmark = [
    pytest.mark.torch,
    # inductor itself touches torch.jit.script_method, deprecated in this torch
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

# float64 losses of 3 nets over 100 epochs, stacked baddbmm against each net's nn.Linear
# loop: the same operations up to summation order (measured: 4e-16).
REFERENCE_LOSS_TOLERANCE = 1e-12
# float32 losses of 4 nets over 30 epochs; the compiled and eager forms differ only in
# the order of floating-point operations (measured: about 1e-6).
LOSS_TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_the_stacks_are_the_reference_nets_trained_by_the_reference_loop(arch, one_torch_thread):
    seed, nets, epochs = 5, 3, 100
    split = reference.load_torch_split(torch.float64)
    params = torch_ensemble.init_params(arch, nets, seed=seed, dtype=torch.float64)
    stacked = torch_ensemble.train_eager(arch, params, *split.train, epochs).numpy()
    for i in range(nets):
        net = reference.build(arch, seed=seed + i, dtype=torch.float64)
        loop = reference.train(net, split.train, epochs).loss
        np.testing.assert_allclose(stacked[i], loop, rtol=0, atol=REFERENCE_LOSS_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["atten", "linear"])
def test_compiled_ensemble_follows_eager_autograd(arch, one_torch_thread):
    train = load_split().train
    gap = torch_ensemble.max_loss_gap(
        np.asarray(train.x, np.float32), np.asarray(train.y), arch=arch, nets=4, epochs=30
    )
    assert 0 <= gap < LOSS_TOLERANCE
