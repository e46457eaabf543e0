"""The harmonizer core in a plain PyTorch loop: no Lightning, no Hydra (the README's example)."""

from __future__ import annotations

import torch
from torch import nn


def test_readme_example_trains_two_conflicting_losses() -> None:
    from uda.harmonizers import GH, harmonized_backward

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, 4)
    conflicts = 0
    for _ in range(50):
        out = model(x).squeeze(1)
        loss_a = (out - x[:, 0]).pow(2).mean()  # two objectives that pull the weights apart
        loss_b = (out + x[:, 0] - x[:, 1]).pow(2).mean()
        optimizer.zero_grad()
        stats = harmonized_backward([loss_a, loss_b], model.parameters(), GH())
        conflicts += int(stats.conflict())
        assert stats.conflict_after() == 0  # GH's update never opposes either loss
        optimizer.step()
    assert conflicts > 0
    assert "lightning" not in harmonized_backward.__module__ and "hydra" not in harmonized_backward.__module__


def test_core_imports_without_lightning_or_hydra() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import uda.harmonizers; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'hydra', 'omegaconf')]; "
        "print(bad); assert not bad"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
