"""The analysis callback on real short runs: training is unchanged by it, its files hold what the figures need,
and the figures CLI draws them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from tests.conftest import QUICK, compose_train
from uda.report.figures import main as figures_main
from uda.train import run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("convergence", "balance", "confusion", "tsne")
ANALYSIS = (
    "callbacks.analysis.balance_every=1",
    "callbacks.analysis.num_samples=60",
    "callbacks.analysis.save_every_eval=true",
    "callbacks.analysis.tsne_points=30",
)


class FinalState(L.Callback):
    """Saves the weights and the global torch RNG state after every other callback's ``on_train_end``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save({"weights": pl_module.state_dict(), "rng": torch.get_rng_state()}, self.path)


class ImageSink(Logger):
    """A logger that takes images, as W&B does; remembers the keys it was given."""

    keys: list[str] = []

    @property
    def name(self) -> str:
        return "sink"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_image(self, key: str, images: list[Any], **kwargs: Any) -> None:
        assert all(Path(image).is_file() for image in images)
        ImageSink.keys.append(key)


def train(tmp_path: Path, name: str, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path / name
    capture = [f"+callbacks.final._target_={__name__}.FinalState", f"+callbacks.final.path={out / 'final.pt'}"]
    summary = run(compose_train([*QUICK, "baseline=cdan", *capture, *extra], out)).to_dict()
    return summary, torch.load(out / "final.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("analysis")
    ImageSink.keys = []
    sink = [f"+logger.sink._target_={__name__}.ImageSink"]
    with_analysis = train(root, "with", *ANALYSIS, *sink)
    without = train(root, "without", "~callbacks.analysis")
    return {"root": root, "with": with_analysis, "without": without, "images": list(ImageSink.keys)}


def test_training_ends_identically_with_and_without_the_callback(runs) -> None:
    (summary_a, state_a), (summary_b, state_b) = runs["with"], runs["without"]
    assert state_a["weights"].keys() == state_b["weights"].keys()
    for name, value in state_a["weights"].items():
        assert torch.equal(value, state_b["weights"][name]), name
    # dropout in CDAN's discriminator draws from this generator: a draw by the callback would show here
    assert torch.equal(state_a["rng"], state_b["rng"])
    for key in ("target_acc_last", "source_acc_last", "conflict_rate", "conflict_rate_after"):
        assert summary_a[key] == summary_b[key], key
    assert not (runs["root"] / "without" / "analysis").exists()


def test_analysis_files_hold_what_the_figures_need(runs) -> None:
    summary, _ = runs["with"]
    analysis = runs["root"] / "with" / "analysis"
    curves = json.loads((analysis / "curves.json").read_text())
    assert curves["iteration"] == [0, 1, 2, 3, 4]  # balance_every=1: start, after each iteration (the end)
    assert all(len(curves[k]) == 5 and all(np.isfinite(curves[k])) for k in ("mmd", "j_source", "j_target"))
    assert all(v >= 0 for v in curves["mmd"])

    confusion = json.loads((analysis / "confusion.json").read_text())
    counts = np.array(confusion["counts"])
    assert counts.shape == (10, 10) and confusion["class_names"] == [str(d) for d in range(10)]
    # the whole UCI test split (20 % of 1,797), and the accuracy of the final evaluation
    assert counts.sum() == 360
    assert np.trace(counts) / counts.sum() == pytest.approx(summary["target_acc_last"], abs=1e-6)

    with np.load(analysis / "features.npz") as data:
        for domain in ("source", "target"):
            features, labels = data[f"{domain}_features"], data[f"{domain}_labels"]
            assert features.shape == (60, 500) and labels.shape == data[f"{domain}_predictions"].shape == (60,)
            assert len(set(data[f"{domain}_indices"].tolist())) == 60
            assert set(np.bincount(labels, minlength=10).tolist()) <= {5, 6, 7}  # about 6 of each digit
        assert int(data["iteration"]) == 4
    # save_every_eval: a snapshot at each evaluation as well
    assert (analysis / "features_iter000002.npz").is_file() and (analysis / "confusion_iter000004.json").is_file()


def test_figures_of_the_run_are_logged_as_images_and_drawn_by_the_cli(runs, tmp_path: Path) -> None:
    logged = sorted(key for key in runs["images"] if key.startswith("analysis/"))  # beside harmonizer/diagnostics
    assert logged == sorted(f"analysis/{name}" for name in FIGURES)
    assert all((runs["root"] / "with" / "analysis" / f"{name}.png").is_file() for name in FIGURES)

    out = tmp_path / "figures"
    figures_main([str(runs["root"] / "with"), str(runs["root"] / "without"), "--out", str(out), "--tsne-points", "30"])
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
