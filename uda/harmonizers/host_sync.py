"""Find host reads of tensor values (what forces a host synchronisation on a GPU) without a GPU.

A harmonizer must return its two-loss weights without reading device values on the host, so a training
step never waits for the GPU. On a machine without CUDA, :func:`host_reads_recorded` finds the Python-level
causes while a block runs (a ``TorchFunctionMode``: nothing is patched): ``Tensor.item``, ``tolist``,
``numpy``, ``cpu``, ``__bool__``, ``__float__``, ``__int__``, ``__index__``; ``Tensor.to('cpu')`` or to
another device; ``Tensor.__getitem__`` with a boolean or 0-d integer tensor index (both read the index on
the host on CUDA); ``torch.nonzero/masked_select/unique/argwhere`` (data-dependent shapes). Checks on shapes
or on Python numbers are not host reads and are not recorded; synchronisations inside C++ kernels are not
visible this way (``torch.cuda.set_sync_debug_mode`` sees them on a GPU: ``benchmarks/harmonizer_calls.py``
uses it when CUDA exists).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: tensor methods that read values on the host
_HOST_READS = frozenset({"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"})
#: functions whose output shape depends on the values (the size is read on the host)
_DATA_DEPENDENT = frozenset({"nonzero", "masked_select", "unique", "argwhere"})


def _host_read(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if name in _HOST_READS:
        return f"Tensor.{name}"
    if name in _DATA_DEPENDENT:
        return f"torch.{name}"
    if name == "__getitem__" and len(args) > 1:
        index = args[1]
        for i in index if isinstance(index, tuple) else (index,):
            if isinstance(i, torch.Tensor) and (i.dtype == torch.bool or (i.dim() == 0 and not i.is_floating_point())):
                return "Tensor.__getitem__(boolean or 0-d tensor index)"
    if name == "to" and args and isinstance(args[0], torch.Tensor):
        source = args[0].device.type
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        if isinstance(target, torch.Tensor):  # x.to(other) follows other: a host read only across devices
            return f"Tensor.to({target.device.type})" if target.device.type != source else None
        # a literal "cpu" is a host copy (a read back when the tensor lives on a GPU); a torch.device (usually
        # another tensor's, e.g. the Gram matrix's) is a host read only when it is another device here
        if isinstance(target, str) and torch.device(target).type == "cpu":
            return "Tensor.to('cpu')"
        if isinstance(target, (str, torch.device)) and torch.device(target).type != source:
            return f"Tensor.to({torch.device(target).type})"
    return None


class _HostReadRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        note = _host_read(getattr(func, "__name__", ""), args, kwargs)
        if note:
            self.records.append(note)
        return func(*args, **kwargs)


@contextmanager
def host_reads_recorded() -> Iterator[list[str]]:
    """Record every host read of tensor values (see the module docstring) made inside the block.

    A ``torch.overrides.TorchFunctionMode`` sees each torch function and tensor method called in the
    block (nothing is patched); calls made inside PyTorch's own C++ code are not seen.
    """
    with _HostReadRecorder() as recorder:
        yield recorder.records
