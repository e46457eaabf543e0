"""What harmonization costs: median seconds per training step, side by side in one process.

CDAN+E + LeNet on the offline digits (batch 64 per domain, the default recipe). Variants:

* ``none``          plain step: one backward of align + cls
* ``gh_2pass``      GH with the 2-pass engine (autograd.grad per loss, .grad written directly)
* ``gh_3pass``      GH with the official 3-pass procedure (backward L1, backward L2, backward weighted sum)
* ``gh_batched``    GH with one vmapped backward for both losses (``is_grads_batched``)
* ``gh_features``   GH in feature space (Gram of the feature gradients, one ordinary backward)
* ``plain_loop``    the whole CDAN + GH training iteration in plain PyTorch (data, forward, engine, step)
* ``lightning``     the same iteration through the Lightning Trainer and ``UDAModule``

The five step variants run round-robin on the same pre-fetched batches, each on its own copy of the
model, so drift of the machine affects them alike. ``plain_loop`` runs before and after ``lightning``.
Peak memory is measured per variant in a fresh subprocess (CPU: peak RSS growth; CUDA: peak allocated).

    python benchmarks/harmonizer_overhead.py            # writes benchmarks/results/harmonizer_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from uda.baselines import CDAN, UDABatch
from uda.data import OfflineDigits
from uda.harmonizers import GH, feature_space_backward, harmonized_backward, three_pass_backward
from uda.models import LeNet
from uda.module import UDAModule
from uda.optim import inv_lr
from uda.training import EngineOptions

RESULTS = Path(__file__).with_name("results")
STEP_VARIANTS = ("none", "gh_2pass", "gh_3pass", "gh_batched", "gh_features")
TARGETS = [  # (numerator, denominator, max ratio)
    ("gh_2pass", "gh_3pass", 0.80),
    ("gh_2pass", "none", 1.6),
    ("gh_features", "none", 1.10),
    ("lightning", "plain_loop", 1.15),
]
BATCH = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_model(device: torch.device) -> CDAN:
    torch.manual_seed(0)
    return CDAN(LeNet(), num_classes=10, discriminator_hidden=500).to(device)


def make_optimizer(model: CDAN) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)


def step(variant: str, model: CDAN, opt: torch.optim.Optimizer, batch: UDABatch, iteration: int) -> None:
    """One training step of ``variant`` (forward, gradients, optimizer step)."""
    out = model.compute_losses("main", batch, iteration)
    losses = [out.losses["align"], out.losses["cls"]]
    params = list(model.parameters())
    scope = model.scope_parameters("official")
    opt.zero_grad(set_to_none=True)
    if variant == "none":
        (losses[0] + losses[1]).backward()
    elif variant == "gh_2pass":
        harmonized_backward(losses, params, GH(), gram_params=scope, tau_applies_to="gram_params")
    elif variant == "gh_batched":
        harmonized_backward(losses, params, GH(), gram_params=scope, tau_applies_to="gram_params", batched=True)
    elif variant == "gh_3pass":
        three_pass_backward(losses, params, GH(), gram_params=scope)
    elif variant == "gh_features":
        feature_space_backward(losses, out.features, GH(), tau_applies_to="gram_params")
    else:
        raise ValueError(variant)
    opt.step()


def batches(device: torch.device, n: int) -> list[UDABatch]:
    dm = OfflineDigits("mnist", "uci", batch_size=BATCH, iters_per_epoch=n)
    dm.setup()
    out = []
    for item in dm.train_dataloader():
        b = item[0] if isinstance(item, tuple) else item
        (x_s, y_s), x_t = b["source"], b["target"]
        out.append(UDABatch(x_s.to(device), y_s.to(device), x_t.to(device)))
    return out


def time_step_variants(device: torch.device, rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    data = batches(device, steps)
    base = make_model(device)
    models = {v: copy.deepcopy(base) for v in STEP_VARIANTS}
    opts = {v: make_optimizer(m) for v, m in models.items()}
    times: dict[str, list[float]] = {v: [] for v in STEP_VARIANTS}
    iteration = 500  # GRL coefficient well above zero, as in most of training
    for v in STEP_VARIANTS:
        for k in range(warmup):
            step(v, models[v], opts[v], data[k % len(data)], iteration)
    for _ in range(rounds):
        for v in STEP_VARIANTS:
            for k in range(steps):
                sync(device)
                t0 = time.perf_counter()
                step(v, models[v], opts[v], data[k], iteration + k)
                sync(device)
                times[v].append(time.perf_counter() - t0)
    return times


def plain_loop(device: torch.device, iterations: int) -> list[float]:
    """The full CDAN + GH iteration in plain PyTorch, data loading included."""
    torch.manual_seed(0)
    dm = OfflineDigits("mnist", "uci", batch_size=BATCH, iters_per_epoch=iterations)
    dm.setup()
    model = make_model(device)
    opt = make_optimizer(model)
    sched = inv_lr(opt)
    scope = model.scope_parameters("official")
    times, t_prev = [], None
    for i, item in enumerate(dm.train_dataloader()):
        b = item[0] if isinstance(item, tuple) else item
        (x_s, y_s), x_t = b["source"], b["target"]
        batch = UDABatch(x_s.to(device), y_s.to(device), x_t.to(device))
        out = model.compute_losses("main", batch, i)
        if not torch.isfinite(torch.stack([out.losses["align"], out.losses["cls"]])).all():
            raise RuntimeError("diverged")
        opt.zero_grad(set_to_none=True)
        harmonized_backward(
            [out.losses["align"], out.losses["cls"]],
            model.parameters(),
            GH(),
            gram_params=scope,
            tau_applies_to="gram_params",
        )
        opt.step()
        sched.step()
        sync(device)
        now = time.perf_counter()
        if t_prev is not None:
            times.append(now - t_prev)
        t_prev = now
    return times


class StepTimer(L.Callback):
    """Time between consecutive batch starts: data fetch + hooks + step, as for the plain loop."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prev: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(pl_module.device)
        now = time.perf_counter()
        if self._prev is not None:
            self.times.append(now - self._prev)
        self._prev = now


def lightning_loop(device: torch.device, iterations: int) -> list[float]:
    torch.manual_seed(0)
    dm = OfflineDigits("mnist", "uci", batch_size=BATCH, iters_per_epoch=iterations)
    module = UDAModule(
        make_model(device),
        GH(),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True),
        scheduler=inv_lr,
        engine=EngineOptions(),
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=dm)
    return timer.times


def peak_memory(variant: str, device: torch.device, steps: int = 20) -> float:
    """MB of peak memory growth over ``steps`` steps of ``variant`` (run in this fresh process).

    Random batches of the real shapes keep the set-up small, so the steps set the high-water mark.
    """
    gen = torch.Generator().manual_seed(0)
    data = [
        UDABatch(
            torch.randn(BATCH, 1, 28, 28, generator=gen).to(device),
            torch.randint(0, 10, (BATCH,), generator=gen).to(device),
            torch.randn(BATCH, 1, 28, 28, generator=gen).to(device),
        )
        for _ in range(steps)
    ]
    model = make_model(device)
    opt = make_optimizer(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        for k in range(steps):
            step(variant, model, opt, data[k], 500 + k)
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    # CPU: the process's lifetime high-water mark (ru_maxrss) is set by the imports, so sample the current
    # resident set in a thread while the steps run (torch releases the GIL inside its kernels)
    # (gradients and optimizer state, allocated at the first step, are part of every variant's growth)
    start = current_rss_bytes()
    peak = [start]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], current_rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for k in range(steps):
        step(variant, model, opt, data[k], 500 + k)
    running.clear()
    sampler.join()
    return (peak[0] - start) / 2**20


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def memory_in_subprocess(variant: str, device: str) -> float:
    cmd = [sys.executable, __file__, "--memory", variant, "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    return float(out.stdout.strip().splitlines()[-1])


def summarize(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {"median_s": statistics.median(values), "q1_s": q[0], "q3_s": q[2], "n": len(values)}
    return out


def markdown(result: dict) -> str:
    rows = result["variants"]
    lines = [
        f"Harmonizer overhead — {result['device']} · torch {result['torch']} · {result['threads']} threads · "
        f"{result['date']}",
        "",
        f"Command: `{result['command']}`",
        "",
        "| variant | median ms/step | IQR ms | × none | peak memory MB |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ratio = r["median_s"] / rows["none"]["median_s"] if name in STEP_VARIANTS else float("nan")
        mem = r.get("peak_memory_mb")
        lines.append(
            f"| {name} | {1e3 * r['median_s']:.2f} | {1e3 * r['q1_s']:.2f}–{1e3 * r['q3_s']:.2f} | "
            + (f"{ratio:.2f}" if name in STEP_VARIANTS else "–")
            + f" | {'–' if mem is None else f'{mem:.1f}'} |"
        )
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['numerator']} / {t['denominator']} | {t['ratio']:.3f} | ≤ {t['limit']} | "
            f"{'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15, help="steps per variant per round")
    parser.add_argument("--loop-iterations", type=int, default=150)
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # internal: one variant's peak memory
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory:
        print(peak_memory(args.memory, device))
        return

    times = time_step_variants(device, args.rounds, args.steps, warmup=5)
    loop_a = plain_loop(device, args.loop_iterations)
    lightning = lightning_loop(device, args.loop_iterations)
    loop_b = plain_loop(device, args.loop_iterations)
    times["plain_loop"] = loop_a + loop_b
    times["lightning"] = lightning
    variants = summarize(times)
    for v in STEP_VARIANTS:
        variants[v]["peak_memory_mb"] = memory_in_subprocess(v, args.device)
    targets = []
    for num, den, limit in TARGETS:
        ratio = variants[num]["median_s"] / variants[den]["median_s"]
        targets.append({"numerator": num, "denominator": den, "ratio": ratio, "limit": limit, "met": ratio <= limit})
    result = {
        "benchmark": "harmonizer_overhead",
        "command": "python benchmarks/harmonizer_overhead.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": f"{device.type} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setup": {
            "model": "CDAN+E + LeNet (disc. hidden 500)",
            "batch_per_domain": BATCH,
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "loop_iterations": args.loop_iterations,
        },
        "variants": variants,
        "targets": targets,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "harmonizer_overhead" if device.type == "cpu" else "harmonizer_overhead_cuda"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
