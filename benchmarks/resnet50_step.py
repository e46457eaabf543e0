"""What harmonization costs on the papers' backbone: one CDAN+E step on ResNet-50 at 224 px, side by side.

CDAN+E as in the Office-Home recipe (``experiment=officehome_cdan``: timm ``resnet50`` features, Linear
bottleneck 256, randomized multilinear map 1024-d, discriminator 1024 hidden, 65 classes), randomly
initialized (``pretrained=false``: step time does not depend on the weights' values), batch 4 source + 4
target images of 3x224x224, SGD Nesterov. Variants of the same training step:

* ``none``             one backward of align + cls (no harmonization)
* ``gh_2pass``         GH, the 2-pass engine (``harmonized_backward``: a gradient per loss, .grad written directly)
* ``gh_3pass``         GH, the official 3-pass procedure (``three_pass_backward``)
* ``gh_features``      GH in feature space (``feature_space_backward``: Gram of dL_i/dz, one ordinary backward)
* ``gh_batched``       GH, both per-loss gradients in one vmapped backward (``harmonized_backward(batched=True)``)
* ``none_bf16``        ``none`` with the forward under CPU bf16 autocast
* ``gh_2pass_bf16``    ``gh_2pass`` with the forward under CPU bf16 autocast (Gram and tau in float32 outside)

Timing: every variant steps the same model and optimizer (one ResNet-50 in memory); after one warm-up step
each, ``--rounds`` rounds run every variant once, in an order rotated each round so that neither position
nor drift of the shared machine favours one; medians over rounds are reported, with the ratios to ``none``.

Peak memory (after the timing): for each variant, the growth of the resident set above the model and
optimizer state (``.grad`` freed first) during one step, sampled every 0.5 ms by a thread. Before this phase
glibc is told to serve every block of 64 KiB or more with mmap (``mallopt``), so a freed tensor leaves the
resident set at once and one variant's peak does not hide in memory kept from the previous one.

    nice -n 5 python benchmarks/resnet50_step.py   # writes benchmarks/results/resnet50_step.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from uda.baselines import CDAN, UDABatch
from uda.harmonizers import GH, feature_space_backward, harmonized_backward, three_pass_backward
from uda.models import TimmBackbone

RESULTS = Path(__file__).with_name("results")
VARIANTS = (
    "none",
    "gh_2pass",
    "gh_3pass",
    "gh_features",
    "gh_batched",
    "none_bf16",
    "gh_2pass_bf16",
)
TARGETS = [  # (numerator, denominator, max ratio) from issue 11
    ("gh_2pass", "none", 1.6),
    ("gh_2pass", "gh_3pass", 0.80),
    ("gh_features", "none", 1.15),
]
BATCH = 4  # per domain
SIZE = 224
NUM_CLASSES = 65  # Office-Home
ITERATION = 500  # GRL coefficient well above zero, as in most of training


def make_model() -> CDAN:
    torch.manual_seed(0)
    backbone = TimmBackbone("resnet50", pretrained=False)
    return CDAN(
        backbone,
        num_classes=NUM_CLASSES,
        randomized=True,
        randomized_dim=1024,
        bottleneck_dim=256,
        bottleneck_kind="linear",
        discriminator_hidden=1024,
    )


def make_batches(n: int) -> list[UDABatch]:
    gen = torch.Generator().manual_seed(0)
    return [
        UDABatch(
            torch.randn(BATCH, 3, SIZE, SIZE, generator=gen),
            torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen),
            torch.randn(BATCH, 3, SIZE, SIZE, generator=gen),
        )
        for _ in range(n)
    ]


def step(variant: str, model: CDAN, opt: torch.optim.Optimizer, batch: UDABatch, iteration: int) -> Tensor:
    """One training step of ``variant``: forward, gradients, optimizer step. Returns the detached losses."""
    method = variant.removesuffix("_bf16")
    bf16 = variant.endswith("_bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        out = model.compute_losses("main", batch, iteration)
    losses = [out.losses["align"], out.losses["cls"]]
    if method == "none":
        (losses[0] + losses[1]).backward()
    elif method == "gh_2pass":
        harmonized_backward(
            losses, model.parameters(), GH(), gram_params=model.scope_parameters("official"), tau_scope="gram"
        )
    elif method == "gh_batched":
        harmonized_backward(
            losses,
            model.parameters(),
            GH(),
            gram_params=model.scope_parameters("official"),
            tau_scope="gram",
            batched=True,
        )
    elif method == "gh_3pass":
        three_pass_backward(losses, model.parameters(), GH(), gram_params=model.scope_parameters("official"))
    elif method == "gh_features":
        feature_space_backward(losses, out.features, GH(), tau_scope="gram")
    else:
        raise ValueError(variant)
    opt.step()
    return torch.stack([loss.detach().float() for loss in losses])


def time_variants(model: CDAN, opt: torch.optim.Optimizer, rounds: int) -> tuple[dict[str, list[float]], bool]:
    data = make_batches(2)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    finite = True
    for k, v in enumerate(VARIANTS):  # warm-up: first-call allocations, autocast caches, vmap set-up
        opt.zero_grad(set_to_none=True)
        step(v, model, opt, data[k % 2], ITERATION)
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for k, v in enumerate(order):
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            losses = step(v, model, opt, data[(r + k) % 2], ITERATION + r)
            times[v].append(time.perf_counter() - t0)
            finite = finite and bool(torch.isfinite(losses).all())
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS), flush=True)
    return times, finite


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def release_freed_memory_at_once() -> bool:
    """glibc: serve blocks >= 64 KiB with mmap from now on, so freeing them shrinks the resident set."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 64 * 1024) == 1 and libc.mallopt(m_trim_threshold, 64 * 1024) == 1
    libc.malloc_trim(0)
    return ok


def peak_step_memory_mb(variant: str, model: CDAN, opt: torch.optim.Optimizer, batch: UDABatch) -> float:
    """MB the resident set grows above model + optimizer state (.grad freed) during one step of ``variant``."""
    opt.zero_grad(set_to_none=True)
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
    step(variant, model, opt, batch, ITERATION)
    running.clear()
    sampler.join()
    return (peak[0] - start) / 2**20


def markdown(result: dict) -> str:
    rows = result["variants"]
    none = rows["none"]["median_s"]
    lines = [
        f"ResNet-50 CDAN+E step — {result['device']} · torch {result['torch']} · {result['threads']} threads · "
        f"{result['date']}",
        "",
        f"Command: `{result['command']}` ({result['setup']['rounds']} interleaved rounds, medians; "
        f"total {result['wall_s']:.0f} s; losses finite: {result['losses_finite']}; 1-min load average "
        f"{result['load_average_1min']['before']:.1f} before, {result['load_average_1min']['after']:.1f} after)",
        "",
        "| variant | median s/step | min–max s | × none | peak step memory MB |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} | {r['median_s'] / none:.2f} | "
            f"{r['peak_memory_mb']:.0f} |"
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load_before = os.getloadavg()
    model = make_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3, nesterov=True)
    times, finite = time_variants(model, opt, args.rounds)
    mallopt = release_freed_memory_at_once()
    batch = make_batches(1)[0]
    memory = {v: peak_step_memory_mb(v, model, opt, batch) for v in VARIANTS}
    variants = {
        v: {
            "median_s": statistics.median(times[v]),
            "min_s": min(times[v]),
            "max_s": max(times[v]),
            "times_s": times[v],
            "peak_memory_mb": memory[v],
        }
        for v in VARIANTS
    }
    targets = []
    for num, den, limit in TARGETS:
        ratio = variants[num]["median_s"] / variants[den]["median_s"]
        targets.append({"numerator": num, "denominator": den, "ratio": ratio, "limit": limit, "met": ratio <= limit})
    result = {
        "benchmark": "resnet50_step",
        "command": "python benchmarks/resnet50_step.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setup": {
            "model": "CDAN+E, timm resnet50 (random init), linear bottleneck 256, randomized map 1024, disc. 1024",
            "batch_per_domain": BATCH,
            "image_size": SIZE,
            "num_classes": NUM_CLASSES,
            "rounds": args.rounds,
            "memory_mallopt": mallopt,
        },
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "losses_finite": finite,
        "wall_s": time.perf_counter() - began,
        "variants": variants,
        "targets": targets,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resnet50_step.json").write_text(json.dumps(result, indent=2))
    (out / "resnet50_step.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
