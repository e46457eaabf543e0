"""What the plain backward pass saves by differentiating only the stepped parameters (MCD on digits).

A stage step that measures nothing (``harmonizer=none`` between monitored steps, or a stage with one loss) takes
one ordinary backward pass. ``StepHooks.only_stepped`` (the default outside DDP) passes the stepped parameters as
``inputs=``: MCD's step B (only the classifiers step) no longer back-propagates into the generator, and its
step C (only the generator steps, ``num_k`` times) no longer forms the classifiers' weight gradients. The
gradients it does fill are bitwise those of the full pass (``tests/unit/test_baseline_mcd.py``).

Timed side by side in one process: rounds alternate between the two settings on the same model and batch
(LeNet + two 1024-wide heads, 64 source + 64 target digits, one thread), and the ratio of the median times per
iteration is reported. The model keeps training across rounds; only time is compared.

    python benchmarks/plain_pass.py   # writes benchmarks/results/plain_pass.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from uda.baselines import MCD, UDABatch
from uda.harmonizers import NoHarmonizer
from uda.models import LeNet
from uda.module import UDAModule
from uda.training import EngineOptions, StepHooks, run_iteration

RESULTS = Path(__file__).with_name("results")


def time_iterations(module: UDAModule, optimizers: dict, batch: UDABatch, hooks: StepHooks, n: int) -> float:
    """Seconds per iteration over ``n`` iterations that measure nothing (iterations 1..n of a 10-cycle)."""
    harmonizers = module.group_harmonizers
    start = time.perf_counter()
    for k in range(n):
        iteration = 1 + k % 9  # never a multiple of monitor_every = 10: every step is a plain pass
        run_iteration(module.baseline, module.plans, optimizers, harmonizers, batch, iteration, hooks)
    return (time.perf_counter() - start) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10, help="iterations per timing round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per setting (the median is reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the study runs (OMP_NUM_THREADS=1, two runs on two cores)
    torch.manual_seed(0)
    module = UDAModule(
        MCD(LeNet(), num_classes=10),
        NoHarmonizer(),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        engine=EngineOptions(),
    )
    optimizers = dict(zip(["g", "f"], module.configure_optimizers()[0], strict=True))
    gen = torch.Generator().manual_seed(1)
    batch = UDABatch(
        torch.rand(64, 1, 28, 28, generator=gen),
        torch.randint(0, 10, (64,), generator=gen),
        torch.rand(64, 1, 28, 28, generator=gen),
    )
    settings = {"full pass": StepHooks(only_stepped=False), "only stepped (default)": StepHooks()}
    times: dict[str, list[float]] = {name: [] for name in settings}
    load_before = os.getloadavg()[0]
    for hooks in settings.values():  # warm-up
        time_iterations(module, optimizers, batch, hooks, 2)
    for _ in range(args.rounds):
        for name, hooks in settings.items():
            times[name].append(time_iterations(module, optimizers, batch, hooks, args.iterations))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "iterations_per_round": args.iterations,
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "command": "python benchmarks/plain_pass.py",
    }
    ratio = medians["full pass"] / medians["only stepped (default)"]
    result = {"meta": meta, "seconds_per_iteration": medians, "speedup": ratio}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plain_pass.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {name} | {1e3 * t:.1f} |" for name, t in medians.items())
    (args.out / "plain_pass.md").write_text(
        "# Plain backward pass: only the stepped parameters (MCD iteration, digits)\n\n"
        f"{meta['date']}, torch {meta['torch']}, {meta['threads']} thread; median of {args.rounds} alternating "
        f"rounds of {args.iterations} iterations (`{meta['command']}`). 1-minute load average before/after: "
        f"{meta['load_average_before_after']} (a loaded machine inflates both times alike).\n\n"
        "| backward pass | ms per MCD iteration |\n|---|---|\n"
        f"{rows}\n\n**Speed-up: {ratio:.2f}x** (full / only stepped), same gradients bitwise.\n"
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
