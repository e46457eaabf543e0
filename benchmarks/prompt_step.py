"""Seconds per training step of the prompt baselines: CoOp, DAPL, ProGrad and PGA, with and without cached features.

One step = the stage's losses (image features from the tower or the cache, prompts through the text tower) -> the
baseline's update into ``.grad`` -> SGD step:

* ``coop``: one backward of the source cross-entropy;
* ``dapl``: one backward of target + source (the official update, ``harmonizer=none``);
* ``prograd``: the gradient engine with the ``prograd`` harmonizer (two per-loss gradients, paper Eq. 4);
* ``pga``: :func:`uda.procedures.pga_backward` (two gradients at θ, two perturbed re-evaluations through the
  baseline's per-loss closure, which reuses the batch's frozen image features).

Two CLIPs, both randomly initialized (timing only; no number here is an accuracy): ``clip_tiny`` (1x28x28) and
open_clip's ``RN50`` (3x224x224). Batch 4 per domain from a fixed pool of distinct images (no augmentation), 10
classes; ``cached`` warms the feature cache first (steady state of a run without augmentation). The methods run
round-robin, each on its own prompts and optimizer, so machine drift hits all alike; the median step is reported with
ratios to CoOp. Targets (issue 15): pga <= 2.3x dapl; cached >= 3x faster than uncached for coop on RN50.

    python benchmarks/prompt_step.py      # writes benchmarks/results/prompt_step.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from uda.baselines.base import UDABatch
from uda.baselines.coop import CoOp
from uda.baselines.dapl import DAPL
from uda.baselines.pga import PGA
from uda.baselines.prograd import ProGradCoOp
from uda.harmonizers import ProGrad, harmonized_backward
from uda.models.clip import ClipBackbone
from uda.procedures import pga_backward

RESULTS = Path(__file__).with_name("results")
MODELS = {"clip_tiny": ("tiny", (1, 28, 28)), "rn50": ("RN50", (3, 224, 224))}
METHODS = ("coop", "dapl", "prograd", "pga")
VARIANTS = ("uncached", "cached")
CLASSES = 10
DOMAINS = ("source", "target")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(method: str, clip: ClipBackbone, cached: bool) -> torch.nn.Module:
    common = {"dataset_class_names": [f"class {k}" for k in range(CLASSES)], "cache_image_features": cached}
    if method == "coop":
        return CoOp(clip, CLASSES, n_ctx=16, **common)
    if method == "prograd":
        return ProGradCoOp(clip, CLASSES, **common)
    # threshold 0: a random CLIP is never confident, and a zero target loss would skip its work
    if method == "dapl":
        return DAPL(clip, CLASSES, threshold=0.0, dataset_domains=DOMAINS, **common)
    return PGA(clip, CLASSES, threshold=0.0, dataset_domains=DOMAINS, radius=3e-4, align=1.0, **common)


def step_fn(method: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[UDABatch], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch: UDABatch) -> None:
        opt.zero_grad(set_to_none=True)
        out = model.compute_losses("main", batch, 0)
        if method == "coop":
            out.losses["cls"].backward()
        elif method == "dapl":
            (out.losses["target"] + out.losses["source"]).backward()
        elif method == "prograd":
            harmonized_backward([out.losses["cls"], out.losses["kl"]], params, ProGrad(lam=1.0, keep_anchor=False))
        else:
            losses = {n: out.losses[n] for n in ("target", "source")}
            closure = model.loss_closure(batch)
            pga_backward(
                closure,
                losses,
                model.scope_parameters("official"),
                model.private_parameters("main"),
                {"target": 1.0, "source": model.trade_off},
                model.radius,
                model.align,
            )
        opt.step()

    return step


def measure(model_name: str, device: torch.device, steps: int, pool: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    clip = ClipBackbone(MODELS[model_name][0], pretrained=None).to(device)
    shape = MODELS[model_name][1]
    images = torch.randn(pool, *shape, device=device)
    labels = torch.arange(pool, device=device) % CLASSES

    def batch(k: int) -> UDABatch:
        idx = [(4 * k + j) % pool for j in range(4)]
        tgt = [(4 * k + j + pool // 2) % pool for j in range(4)]
        return UDABatch(images[idx], labels[idx], images[tgt])

    runs = {}
    for variant in VARIANTS:
        for method in METHODS:
            model = build(method, clip, variant == "cached").to(device)
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
            runs[(variant, method)] = step_fn(method, model, opt)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    warm = pool // 4 + 1  # one pass over the pool fills the cache
    for k in range(warm + steps):
        for key, step in runs.items():
            sync(device)
            t0 = time.perf_counter()
            step(batch(k))
            sync(device)
            if k >= warm:
                times[key].append(time.perf_counter() - t0)
    out: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        med = {m: statistics.median(times[(variant, m)]) for m in METHODS}
        out[variant] = {
            **{f"{m}_s": med[m] for m in METHODS},
            **{f"{m}_vs_coop": med[m] / med["coop"] for m in METHODS},
        }
        out[variant]["pga_vs_dapl"] = med["pga"] / med["dapl"]
    for m in METHODS:
        out.setdefault("cache_speedup", {})[m] = out["uncached"][f"{m}_s"] / out["cached"][f"{m}_s"]
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Prompt baselines: seconds per training step (random-init CLIPs, batch 4 per domain, 10 classes)",
        "",
        f"`python benchmarks/prompt_step.py` on {result['device']} ({result['platform']}, torch {result['torch']}, "
        f"{result['threads']} threads), {result['steps']} timed steps per cell (median), {result['date']}. "
        "Timing only: randomly initialized weights, not a result.",
        "",
        "| CLIP | features | coop s | dapl s | prograd s | pga s | dapl/coop | prograd/coop | pga/coop | pga/dapl |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, res in result["models"].items():
        for variant in VARIANTS:
            r = res[variant]
            lines.append(
                f"| {model} | {variant} | {r['coop_s']:.4f} | {r['dapl_s']:.4f} | {r['prograd_s']:.4f} | "
                f"{r['pga_s']:.4f} | {r['dapl_vs_coop']:.2f} | {r['prograd_vs_coop']:.2f} | {r['pga_vs_coop']:.2f} | "
                f"{r['pga_vs_dapl']:.2f} |"
            )
    lines += ["", "Cache speed-up (uncached s / cached s):", ""]
    for model, res in result["models"].items():
        speed = ", ".join(f"{m} {v:.2f}x" for m, v in res["cache_speedup"].items())
        lines.append(f"- {model}: {speed}")
    rn50 = result["models"].get("rn50")
    if rn50:
        worst = max(rn50[v]["pga_vs_dapl"] for v in VARIANTS)
        lines += [
            "",
            f"Targets on RN50: pga <= 2.3x dapl: {'met' if worst <= 2.3 else 'NOT met'} (worst {worst:.2f}x); "
            f"cached >= 3x faster for coop: {'met' if rn50['cache_speedup']['coop'] >= 3 else 'NOT met'} "
            f"({rn50['cache_speedup']['coop']:.2f}x).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(RESULTS / "prompt_step"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "date": dt.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/prompt_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "models": {m: measure(m, device, args.steps, args.pool) for m in args.models},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
