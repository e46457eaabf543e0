"""Find host reads of tensor values (what forces a host synchronisation on a GPU) without a GPU.

A harmonizer must return its two-loss weights without reading device values on the host, so a training
step never waits for the GPU. On a machine without CUDA, :func:`host_reads_recorded` finds the Python-
level causes by patching, while a block runs: ``Tensor.item/tolist/numpy/cpu/__bool__/__float__/
__int__/__index__``, ``Tensor.to('cpu')`` or to another device, ``Tensor.__getitem__`` with a boolean or 0-d integer
tensor index (both read the index on the host on CUDA) and ``torch.nonzero/masked_select/unique``
(data-dependent shapes). Checks on shapes or on Python numbers are not host reads and are not recorded;
synchronisations inside C++ kernels are not visible this way (``torch.cuda.set_sync_debug_mode`` sees
them on a GPU: ``benchmarks/harmonizer_calls.py`` uses it when CUDA exists).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


@contextlib.contextmanager
def host_reads_recorded() -> Iterator[list[str]]:
    """Record every host read of tensor values (see the module docstring) made inside the block.

    The patches are global while the block runs (not thread-safe): a diagnostic for tests and benchmarks.
    """
    records: list[str] = []
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, record: Callable[..., str | None]) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            note = record(*args, **kwargs)
            if note:
                records.append(note)
            return original(*args, **kwargs)

        patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        wrap(torch.Tensor, name, lambda *a, _n=name, **k: f"Tensor.{_n}")

    def to_other_device(self: torch.Tensor, *args: Any, **kwargs: Any) -> str | None:
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.Tensor):  # x.to(other) follows other: a host read only across devices
            return f"Tensor.to({target.device.type})" if target.device.type != self.device.type else None
        # a literal "cpu" is a host copy (a read back when the tensor lives on a GPU); a torch.device (usually
        # another tensor's, e.g. the Gram matrix's) is a host read only when it is another device here
        if isinstance(target, str) and torch.device(target).type == "cpu":
            return "Tensor.to('cpu')"
        if isinstance(target, (str, torch.device)) and torch.device(target).type != self.device.type:
            return f"Tensor.to({torch.device(target).type})"
        return None

    def syncing_index(self: torch.Tensor, index: Any) -> str | None:
        for i in index if isinstance(index, tuple) else (index,):
            if isinstance(i, torch.Tensor) and (i.dtype == torch.bool or (i.dim() == 0 and not i.is_floating_point())):
                return "Tensor.__getitem__(boolean or 0-d tensor index)"
        return None

    wrap(torch.Tensor, "to", to_other_device)
    wrap(torch.Tensor, "__getitem__", syncing_index)
    for name in ("nonzero", "masked_select", "unique"):
        wrap(torch, name, lambda *a, _n=name, **k: f"torch.{_n}")
    try:
        yield records
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
