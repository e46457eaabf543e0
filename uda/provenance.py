"""Where a result came from: the code's git commit and the versions of the libraries that produced it."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

#: libraries whose versions change results
PACKAGES = ("uda", "torch", "torchvision", "lightning", "hydra-core", "timm", "torchmetrics", "wandb", "numpy")


@cache
def git_commit(path: str | Path | None = None) -> str | None:
    """The commit SHA of the checkout holding this package, with ``-dirty`` when files differ; None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict[str, object]:
    """``{"git_commit": ..., "versions": {...}}`` for summaries and W&B configs."""
    return {"git_commit": git_commit(), "versions": package_versions()}
