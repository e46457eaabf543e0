"""SSRT's safe training (Sun et al., "Safe Self-Refinement for Transformer-based Domain Adaptation",
CVPR 2022, Sec. 3.3; official code tsun/SSRT ``model/SSRT.py``, see reference/baselines.md §2.5).

Self-refinement can collapse the target predictions onto a few classes. Safe training watches the
*diversity* of the predictions (the number of distinct classes predicted in each target batch), keeps
a snapshot of the model every ``T`` iterations, and when the diversity drops sharply inside a period it
reloads the snapshot and restarts the ramp r(i) that scales the perturbation magnitude and the
self-refinement weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from uda.errors import ConfigError

#: a drop of the mean diversity by more than this many classes between neighbouring chunks is a collapse
DROP_THRESHOLD = 1.0
#: no restore while the ramp is still this low (the perturbation is then too weak to be blamed)
MIN_RAMP_FOR_RESTORE = 0.1


def chunk_means(values: Sequence[float], chunks: int) -> list[float]:
    """Means of ``values`` split into ``chunks`` consecutive parts of near-equal length (the first
    ``len % chunks`` parts one longer, as ``numpy.array_split``)."""
    return [float(part.mean()) for part in torch.tensor(values, dtype=torch.float64).tensor_split(chunks)]


def diversity_dropped(
    log: Sequence[float],
    previous_log: Sequence[float] | None,
    levels: int,
    threshold: float = DROP_THRESHOLD,
) -> bool:
    """The official multi-scale drop test (``check_div_drop``).

    For every level l = 0..``levels`` the period's diversity log is split into 2^l chunks; when the
    previous period's log is given, the mean of *its* last 2^l-th is put in front (so a drop right at
    the period boundary is seen too). A drop is a chunk mean lower than the one before it by more
    than ``threshold``.
    """
    for level in range(levels + 1):
        means = chunk_means(log, 2**level)
        if previous_log:
            means.insert(0, chunk_means(previous_log, 2**level)[-1])
        if any(later < earlier - threshold for earlier, later in zip(means, means[1:], strict=False)):
            return True
    return False


def _model_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name (not ``state_dict()``: that would include the snapshot itself
    through the module's extra state)."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class SafeTraining:
    """Ramp, snapshot, diversity log and restore decision of SSRT's safe training.

    Per iteration i, in the official order:

    * :meth:`begin` (before the forward pass): if a restore was decided, reload the snapshot; then, every
      ``period`` iterations, take a new snapshot and start a new diversity log.
    * :meth:`ramp` gives r(i) = sin((i − r_phase)/r_period · π/2), 1 once i ≥ r_phase + r_period; SSRT
      multiplies the perturbation magnitude and the self-refinement weight by it.
    * :meth:`record` (after the forward pass) appends the batch's diversity; at the last iteration of a
      period :meth:`check` runs the drop test. A drop with r > 0.1 schedules a restore for the next
      iteration, restarts the ramp (r_phase = i) and doubles r_period when the previous restore is less
      than r_period iterations ago. Without a drop the log becomes the "previous period" of the next test.

    The optimizer state is not restored (official default ``adap_adjust_restore_optimizor=False``).
    The snapshot is a real copy kept on the CPU: the official code stores ``net.state_dict()``, whose
    tensors share storage with the live parameters, so its restore leaves the weights as they are (only
    the ramp restarts); reloading a copy is what the paper describes.

    Everything lives in :meth:`state_dict` so that a resumed run continues exactly.
    """

    def __init__(self, period: int = 1000, levels: int = 4, append_last_subintervals: bool = True) -> None:
        if int(period) < 2 ** int(levels):
            raise ConfigError(
                f"safe training needs safe_period >= 2**safe_levels to split a period into chunks "
                f"(got safe_period={period}, safe_levels={levels}); raise safe_period or lower safe_levels"
            )
        self.period = int(period)
        self.levels = int(levels)
        self.append_last_subintervals = bool(append_last_subintervals)
        self.r_period = self.period
        self.r_phase = 0
        self.last_restore = 0
        self.restore_pending = False
        self.diversity: list[Tensor] = []
        self.previous_diversity: list[float] | None = None
        self.snapshot: dict[str, Tensor] | None = None

    # ------------------------------------------------------------------ ramp
    def ramp(self, iteration: int) -> float:
        """r(i) ∈ [0, 1]: a quarter sine from the last restart (``r_phase``) over ``r_period`` iterations."""
        if iteration >= self.r_phase + self.r_period:
            return 1.0
        return math.sin((iteration - self.r_phase) / self.r_period * math.pi / 2)

    # -------------------------------------------------------------- snapshot
    def take_snapshot(self, module: nn.Module) -> None:
        self.snapshot = {name: t.detach().to("cpu", copy=True) for name, t in _model_tensors(module).items()}

    def restore(self, module: nn.Module) -> None:
        """Copy the snapshot into the live tensors (in place: the optimizer keeps its parameters)."""
        if self.snapshot is None:
            raise RuntimeError("safe training has no snapshot to restore")
        with torch.no_grad():
            for name, tensor in _model_tensors(module).items():
                tensor.copy_(self.snapshot[name])

    def begin(self, iteration: int, module: nn.Module) -> bool:
        """Start of iteration ``iteration``: restore if scheduled, snapshot at period starts; returns
        whether the model was restored."""
        restored = False
        if self.restore_pending and iteration > 0:
            self.restore(module)
            self.last_restore = iteration
            self.restore_pending = False
            restored = True
        if iteration % self.period == 0:
            self.take_snapshot(module)
            self.diversity = []
        return restored

    # ------------------------------------------------------------- diversity
    def record(self, diversity: Tensor | float) -> None:
        """Append one batch's number of distinct predicted classes (a tensor: no host sync here)."""
        self.diversity.append(torch.as_tensor(diversity).detach().float().reshape(()))

    def is_check_iteration(self, iteration: int) -> bool:
        return iteration > 0 and (iteration + 1) % self.period == 0

    def check(self, iteration: int, reduce: Callable[[Tensor], Tensor] | None = None) -> bool:
        """Drop test at the end of a period; returns whether a restore was scheduled.

        ``reduce`` maps the period's log (a 1-d tensor) to the one the decision uses, e.g. its mean over
        DDP ranks so that every rank takes the same decision.
        """
        values = torch.stack(self.diversity) if self.diversity else torch.zeros(0)
        log = (reduce(values) if reduce is not None else values).cpu().tolist()
        previous = self.previous_diversity if self.append_last_subintervals else None
        dropped = bool(log) and diversity_dropped(log, previous, self.levels)
        if dropped and self.ramp(iteration) > MIN_RAMP_FOR_RESTORE:
            self.restore_pending = True
            if iteration - self.last_restore <= self.r_period:
                self.r_period *= 2  # collapsing again soon after a restore: ramp up more slowly
            self.r_phase = iteration
            return True
        self.previous_diversity = log
        return False

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "r_period": self.r_period,
            "r_phase": self.r_phase,
            "last_restore": self.last_restore,
            "restore_pending": self.restore_pending,
            "diversity": [float(v) for v in self.diversity],
            "previous_diversity": self.previous_diversity,
            "snapshot": self.snapshot,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.r_period = int(state["r_period"])
        self.r_phase = int(state["r_phase"])
        self.last_restore = int(state["last_restore"])
        self.restore_pending = bool(state["restore_pending"])
        self.diversity = [torch.tensor(float(v)) for v in state["diversity"]]
        previous = state["previous_diversity"]
        self.previous_diversity = None if previous is None else [float(v) for v in previous]
        snapshot = state["snapshot"]
        self.snapshot = None if snapshot is None else {k: v.detach().cpu() for k, v in snapshot.items()}
