"""Checkpoint writing that never leaves a half-written file, and the RNG state that exact resume needs."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<path>`` via a temporary file in the same directory, fsync, then ``os.replace``.

    A job killed while saving leaves the previous ``last.ckpt`` intact (rename is atomic on POSIX when
    source and target share a file system, which a sibling temporary file guarantees).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states (what dropout, sampling and augmentation draw from)."""
    # plain tuples and tensors only: Lightning loads checkpoints with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state: dict[str, Any] = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (missing entries are left alone)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``None`` → train from scratch; ``last`` → ``<output_dir>/checkpoints/last.ckpt`` when it exists
    (from scratch otherwise, so re-launching an interrupted sweep just works); anything else is a path
    that must exist."""
    from uda.errors import ConfigError

    if not ckpt_path:
        return None
    if str(ckpt_path) == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path!r} does not exist: give a checkpoint file, or ckpt_path=last with the "
            "interrupted run's directory (hydra.run.dir=<run dir>)"
        )
    return str(path)


def keep_previous_csv(output_dir: str | Path) -> Path | None:
    """Before a resumed run: rename ``csv/metrics.csv`` to ``csv/metrics.before_resume_<n>.csv``.

    Lightning's CSV logger deletes an existing metrics file when it starts; the interrupted attempt's rows
    (up to the crash, including those after the checkpoint that the resumed run recomputes) stay readable.
    """
    metrics = Path(output_dir) / "csv" / "metrics.csv"
    if not metrics.is_file():
        return None
    n = 0
    while (kept := metrics.with_name(f"metrics.before_resume_{n}.csv")).exists():
        n += 1
    metrics.rename(kept)
    return kept
