"""Data-parallel reductions a stage step needs under DDP (call them only when a process group is initialized)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Number of data-parallel ranks (1 without an initialized process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(flat: Tensor) -> Tensor:
    """Average a tensor over ranks in one fused call (gloo has no AVG op): per-loss gradients, loss values."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return flat.div_(world_size())


def all_reduce_feature_gram(gram: Tensor) -> Tensor:
    """Feature-space Gram of the global batch: ranks hold disjoint samples, so local Grams add up; the losses
    are per-rank means, hence the 1/world² of the global mean."""
    dist.all_reduce(gram, op=dist.ReduceOp.SUM)
    return gram.div_(world_size() ** 2)
