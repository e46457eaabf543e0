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

The bf16 variants run where the CPU has oneDNN's bf16 kernels (AVX-512 BF16 / AMX; ``--bf16 auto``). Without
them PyTorch computes bf16 convolutions in ``aten::_slow_conv2d`` (im2col + a generic GEMM), many times
slower than float32, so their step ratios would time that fallback rather than harmonization; ``--bf16 on``
times them anyway. Either way the run measures the fallback's cost on one ResNet-50 convolution
(``bf16_conv``: float32 vs bf16-autocast forward + backward of layer1's 3x3 conv at 2x64x56x56).

Every variant steps the same model and optimizer (one ResNet-50 in memory). One untimed step creates the
optimizer state; then each variant's first step (its warm-up: oneDNN primitives, autocast, vmap set-up)
measures its peak memory, and ``--rounds`` timed rounds run every variant once, in an order rotated each
round so that neither position nor drift of the shared machine favours one; medians over rounds are
reported, with the ratios to ``none``.

Peak memory: the growth of the resident set during one step of the variant, above the model, its optimizer
state and nothing else (``.grad`` freed, then ``malloc_trim`` returns the free heap pages to the system, so
memory kept from the previous variant cannot hide this one's peak), sampled every 0.5 ms by a thread.

    nice -n 5 python benchmarks/resnet50_step.py   # writes benchmarks/results/resnet50_step.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

# Before torch loads OpenMP: idle workers sleep instead of spinning. On a shared, oversubscribed machine a
# spinning worker burns the time slice its partner needs to reach the barrier (measured here: a ResNet-50
# step 8x slower with 2 spinning threads than with 1); on an idle machine the setting costs little.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from uda.baselines import CDAN, UDABatch  # noqa: E402
from uda.harmonizers import GH, feature_space_backward, harmonized_backward, three_pass_backward  # noqa: E402
from uda.models import TimmBackbone  # noqa: E402

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
            losses,
            model.parameters(),
            GH(),
            gram_params=model.scope_parameters("official"),
            tau_applies_to="gram_params",
        )
    elif method == "gh_batched":
        harmonized_backward(
            losses,
            model.parameters(),
            GH(),
            gram_params=model.scope_parameters("official"),
            tau_applies_to="gram_params",
            batched=True,
        )
    elif method == "gh_3pass":
        three_pass_backward(losses, model.parameters(), GH(), gram_params=model.scope_parameters("official"))
    elif method == "gh_features":
        feature_space_backward(losses, out.features, GH(), tau_applies_to="gram_params")
    else:
        raise ValueError(variant)
    opt.step()
    return torch.stack([loss.detach().float() for loss in losses])


def time_variants(
    variants: tuple[str, ...], model: CDAN, opt: torch.optim.Optimizer, data: list[UDABatch], rounds: int
) -> tuple[dict[str, list[float]], bool]:
    times: dict[str, list[float]] = {v: [] for v in variants}
    finite = True
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for k, v in enumerate(order):
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            losses = step(v, model, opt, data[(r + k) % len(data)], ITERATION + r)
            times[v].append(time.perf_counter() - t0)
            finite = finite and bool(torch.isfinite(losses).all())
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    return times, finite


def native_bf16() -> bool:
    """Whether this CPU has oneDNN's bf16 kernels (else bf16 convolutions take PyTorch's slow fallback)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_conv_cost(repeats: int = 3) -> dict[str, float]:
    """Median seconds of forward + backward of ResNet-50's layer1 3x3 conv (2x64x56x56), float32 vs bf16 autocast."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(2, 64, 56, 56, requires_grad=True)
    out: dict[str, float] = {}
    for name, enabled in (("float32_s", False), ("bf16_autocast_s", True)):
        times = []
        for _ in range(repeats + 1):  # the first call builds kernels: not counted
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                y = conv(x)
            y.float().sum().backward()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[1:])
    out["slowdown"] = out["bf16_autocast_s"] / out["float32_s"]
    return out


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def release_free_heap() -> bool:
    """Return glibc's free heap pages to the system (``malloc_trim(0)``); False where that is unavailable."""
    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).malloc_trim(0) in (0, 1)
    except (OSError, AttributeError):
        return False


def peak_step_memory_mb(variant: str, model: CDAN, opt: torch.optim.Optimizer, batch: UDABatch) -> float:
    """MB the resident set grows above model + optimizer state (.grad freed) during one step of ``variant``."""
    opt.zero_grad(set_to_none=True)
    gc.collect()
    release_free_heap()
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
    conv = result["bf16_conv"]
    lines += [
        "",
        f"bf16 autocast: oneDNN bf16 kernels on this CPU: {result['native_bf16']}; "
        + (
            "bf16 variants timed above. "
            if "none_bf16" in rows
            else "bf16 variants not timed (`--bf16 on` forces them). "
        )
        + f"One ResNet-50 conv (layer1 3x3, 2x64x56x56) forward + backward: {1e3 * conv['float32_s']:.0f} ms float32, "
        f"{1e3 * conv['bf16_autocast_s']:.0f} ms under bf16 autocast ({conv['slowdown']:.1f}x).",
    ]
    lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        lines.append(
            f"| {t['numerator']} / {t['denominator']} | {t['ratio']:.3f} | ≤ {t['limit']} | "
            f"{'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto", help="time the bf16 variants")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load_before = os.getloadavg()
    model = make_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3, nesterov=True)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16())
    chosen = tuple(v for v in VARIANTS if bf16 or not v.endswith("_bf16"))
    conv = bf16_conv_cost()
    data = make_batches(2)
    step("none", model, opt, data[1], ITERATION)  # creates the optimizer state (momentum buffers)
    memory = {v: peak_step_memory_mb(v, model, opt, data[0]) for v in chosen}  # and each variant's warm-up
    times, finite = time_variants(chosen, model, opt, data, args.rounds)
    variants = {
        v: {
            "median_s": statistics.median(times[v]),
            "min_s": min(times[v]),
            "max_s": max(times[v]),
            "times_s": times[v],
            "peak_memory_mb": memory[v],
        }
        for v in chosen
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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "bf16_conv": conv,
        "setup": {
            "model": "CDAN+E, timm resnet50 (random init), linear bottleneck 256, randomized map 1024, disc. 1024",
            "batch_per_domain": BATCH,
            "image_size": SIZE,
            "num_classes": NUM_CLASSES,
            "rounds": args.rounds,
            "memory_malloc_trim": release_free_heap(),
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
