"""Exact resume: a run interrupted after an evaluation and resumed with ckpt_path=last ends exactly where an
uninterrupted run ends (weights, optimizer state, schedules, iteration counter, harmonizer state, RNG).

The harmonizer is GradVac with a fast EMA: its similarity target changes at every step, so a resumed run
that restarted the harmonizer's statistics would end with other targets (and other weights)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import compose_train
from uda.checkpoint import AtomicCheckpointIO
from uda.errors import ConfigError
from uda.train import run


class CrashAt(L.Callback):
    """Simulates a killed job: raises once the module reaches ``iteration``."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if pl_module.iteration == self.iteration:
            raise RuntimeError("simulated crash")


RUN = (
    "iterations=6",
    "eval_every=2",
    "baseline=cdan",  # dropout in the discriminator: the resumed run must draw the same masks
    "harmonizer=gradvac",  # its state (the EMA similarity target) changes at every step
    "harmonizer.beta=0.5",
    "logger=csv",
    "~callbacks.gradient_diagnostics",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "dataset.eval_batch_size=1000",
)


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def harmonizer_tensors(checkpoint: dict) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the harmonizer state(s) in the module's checkpoint, with its path (whatever the layout:
    one state, or one per stage and harmonized group)."""
    found = []

    def walk(path: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            found.append((path, value))
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{path}/{key}", value[key])
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{path}/{index}", item)

    for key in sorted(checkpoint["uda"]):
        if key.startswith("harmonizer"):
            walk(key, checkpoint["uda"][key])
    return found


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    straight = run(compose_train([*RUN], tmp_path / "straight")).to_dict()

    crash = "+callbacks.crash._target_=tests.integration.test_resume.CrashAt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose_train([*RUN, crash, "+callbacks.crash.iteration=3"], tmp_path / "resumed"))
    interrupted = final_state(tmp_path / "resumed")
    assert interrupted["uda"]["iteration"] == 2  # the last evaluation before the crash

    resumed = run(compose_train([*RUN, "ckpt_path=last"], tmp_path / "resumed")).to_dict()

    for key in ("target_acc_last", "target_acc_best", "source_acc_last", "conflict_rate", "conflict_rate_after"):
        assert resumed[key] == straight[key], key
    assert resumed["iterations"] == straight["iterations"] == 6
    assert (tmp_path / "resumed" / "csv" / "metrics.before_resume_0.csv").is_file()  # the first attempt's log
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name in a["state_dict"]:
        assert torch.equal(a["state_dict"][name], b["state_dict"][name]), name
    history = [state["callbacks"]["RunRecord"]["history"] for state in (a, b)]  # the RunRecord callback's state
    assert history[0] == history[1] and len(history[0]) == 3
    state_a, state_b = harmonizer_tensors(a), harmonizer_tensors(b)
    assert [path for path, _ in state_a] == [path for path, _ in state_b]
    for (path, x), (_, y) in zip(state_a, state_b, strict=True):
        assert torch.equal(x, y), path
    targets = [x for path, x in state_a if path.endswith("/target")]
    assert targets and all(t.abs().sum() > 0 for t in targets)  # the EMA target moved: the comparison is not vacuous
    momentum = [s["momentum_buffer"] for s in a["optimizer_states"][0]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum, momentum_b, strict=True))
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_ckpt_path_last_without_checkpoint_starts_from_scratch_and_a_bad_path_is_one_sentence(tmp_path) -> None:
    summary = run(
        compose_train(["iterations=2", "eval_every=2", *RUN[2:], "ckpt_path=last"], tmp_path / "fresh")
    ).to_dict()
    assert summary["iterations"] == 2
    with pytest.raises(ConfigError, match="does not exist"):
        run(compose_train([*RUN, "ckpt_path=/nowhere/last.ckpt"], tmp_path / "bad"))


def test_atomic_checkpoint_keeps_the_previous_file_when_saving_fails(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):  # noqa: ANN204
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
