"""What caching the frozen image features saves a prompt-learning step: median seconds per CoOp step.

One CoOp training step = image features (tower forward, or the cache) -> prompts through the text tower ->
source cross-entropy -> backward into the prompt -> SGD step. Measured on two CLIPs, both randomly
initialized (timing only: no weights are needed and no number here is an accuracy):

* ``clip_tiny``: the test CLIP of ``backbone=clip_tiny`` on 1x28x28 inputs (the offline digits' format);
* ``rn50``: open_clip's RN50 architecture (the CoOp/ProGrad/PGA Office-Home backbone) on 3x224x224 inputs.

Batch 4 images per step, drawn in turn from a fixed pool of ``--pool`` distinct images (no augmentation), so
after one pass every image is a cache hit: the cached numbers are the steady state of a run without
augmentation. ``uncached`` and ``cached`` run round-robin in rounds, each on its own copy of the prompt and
optimizer, so drift of the machine hits both alike; the cache is warmed before timing. The class count sets
the text side's cost (C prompts of 77 tokens per step): 10 (digits) and 65 (Office-Home) are measured.

    python benchmarks/prompt_cache.py      # writes benchmarks/results/prompt_cache.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from uda.baselines.base import UDABatch
from uda.baselines.coop import CoOp
from uda.models.clip import ClipBackbone

RESULTS = Path(__file__).with_name("results")
MODELS = {"clip_tiny": ("tiny", (1, 28, 28)), "rn50": ("RN50", (3, 224, 224))}
VARIANTS = ("uncached", "cached")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setups(model: str, classes: int, device: torch.device) -> dict[str, tuple[CoOp, torch.optim.Optimizer]]:
    """One CoOp per variant on the same frozen CLIP (random init), identical initial prompts."""
    torch.manual_seed(0)
    clip = ClipBackbone(MODELS[model][0], pretrained=None).to(device)
    names = [f"class {k}" for k in range(classes)]
    base = CoOp(clip, classes, n_ctx=16, dataset_class_names=names).to(device)
    out = {}
    for variant in VARIANTS:
        coop = CoOp(clip, classes, n_ctx=16, dataset_class_names=names, cache_image_features=variant == "cached")
        coop.prompt.load_state_dict(copy.deepcopy(base.prompt.state_dict()))
        coop.to(device)
        params = coop.optimizer_groups()["main"]["heads"]
        out[variant] = (coop, torch.optim.SGD(params, lr=0.002, momentum=0.9))
    return out


def step(coop: CoOp, opt: torch.optim.Optimizer, batch: UDABatch) -> None:
    opt.zero_grad(set_to_none=True)
    coop.compute_losses("main", batch, 0).losses["cls"].backward()
    opt.step()


def measure(model: str, classes: int, device: torch.device, batch: int, pool: int, rounds: int, steps: int) -> dict:
    shape = MODELS[model][1]
    g = torch.Generator().manual_seed(1)
    images = torch.randn(pool, *shape, generator=g).to(device)
    labels = torch.randint(0, classes, (pool,), generator=g).to(device)
    batches = [
        UDABatch(images[i : i + batch], labels[i : i + batch], images[i : i + batch]) for i in range(0, pool, batch)
    ]
    runs = setups(model, classes, device)
    for coop, opt in runs.values():  # warm-up: one pass over the pool fills the cache
        for b in batches:
            step(coop, opt, b)
    cache = runs["cached"][0].image_encoder.cache
    warm_hits, warm_misses = cache.hits, cache.misses
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    k = 0
    for _ in range(rounds):
        for variant in VARIANTS:
            coop, opt = runs[variant]
            for _ in range(steps):
                b = batches[k % len(batches)]
                k += 1
                sync(device)
                t0 = time.perf_counter()
                step(coop, opt, b)
                sync(device)
                times[variant].append(time.perf_counter() - t0)
    timed_hits, timed_misses = cache.hits - warm_hits, cache.misses - warm_misses
    median = {v: statistics.median(t) for v, t in times.items()}
    return {
        "model": model,
        "classes": classes,
        "batch": batch,
        "median_s": median,
        "speedup_uncached_over_cached": median["uncached"] / median["cached"],
        "cache_hit_rate": timed_hits / max(timed_hits + timed_misses, 1),  # over the timed steps
        "cached_images": len(cache),
        "steps_per_variant": len(times["uncached"]),
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Image-feature cache: CoOp step time ({result['device']}, batch {result['batch']}, random-init CLIPs)",
        "",
        f"Measured {result['date']} with `{result['command']}`; torch {result['torch']}, "
        f"{result['threads']} intra-op threads. Median seconds per step over "
        f"{result['rows'][0]['steps_per_variant']} steps per variant (round-robin). Timing only: random weights.",
        "",
        "| CLIP | classes | uncached s/step | cached s/step | uncached / cached | cache hit rate |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m = r["median_s"]
        lines.append(
            f"| {r['model']} | {r['classes']} | {m['uncached']:.4f} | {m['cached']:.4f} | "
            f"{r['speedup_uncached_over_cached']:.2f}x | {r['cache_hit_rate']:.2f} |"
        )
    lines += ["", result["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--classes", nargs="+", type=int, default=[10, 65])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pool", type=int, default=16, help="distinct images cycled through (a multiple of batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--note", default="", help="a remark on the machine's load, copied into the report")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for model in args.models:
        for classes in args.classes:
            row = measure(model, classes, device, args.batch, args.pool, args.rounds, args.steps)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/prompt_cache.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "note": args.note,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prompt_cache.json").write_text(json.dumps(result, indent=2))
    (out / "prompt_cache.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
