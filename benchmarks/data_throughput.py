"""Data-loading throughput: images/s delivered by the real datamodules (no model, no GPU).

Cases:

* ``office_train``  Office-31 datamodule on generated JPEGs (300x300, like Office-31's amazon images):
  decode + square resize 256 + RandomResizedCrop 224 + flip + normalize, paired source/target batches of
  32 per domain (images/s counts both domains), ``num_workers`` 0 and 2.
* ``office_eval``   the target test loader (square resize 256 + CenterCrop 224), batch 32.
* ``digits_tv``     the ``digits`` datamodule (torchvision MNIST/USPS readers, PIL resize to 28x28,
  normalize) on generated MNIST/USPS files, batch 64 per domain, ``num_workers`` 0 and 2.
* ``offline_digits`` the embedded offline pair (pre-built tensors), batch 64 per domain.

Each case is timed over ``--batches`` batches after the DataLoader's prefetch buffer (2 batches per worker)
plus one batch have been consumed, so worker start-up and prefetched batches do not inflate the rate. The
machine may be shared: the load average at the start is recorded with the results.

    python benchmarks/data_throughput.py     # writes benchmarks/results/data_throughput.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image

from uda.data import Digits, Office31, OfflineDigits

RESULTS = Path(__file__).with_name("results")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.unit.dataset_fakes writes digits files


def make_office_tree(root: Path, classes: int, per_class: int, size: int = 300) -> int:
    """JPEGs with smooth content plus noise (closer to photos than pure noise) in amazon/ and webcam/."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    count = 0
    for domain in ("amazon", "webcam"):
        for label in range(classes):
            folder = root / domain / "images" / Office31.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a, b, c = rng.uniform(0, 1, 3)
                base = np.stack([np.sin(6 * a * xx + 3 * b * yy), np.cos(5 * b * yy), np.sin(4 * c * (xx + yy))], -1)
                pixels = (127 + 90 * base + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
                count += 1
    return count


def timed(batches: Iterator, count: Callable[[object], int], warmup: int, n: int) -> dict:
    """Images/s over ``n`` batches after ``warmup`` batches; ``count(batch)`` = images in a batch."""
    first = time.perf_counter()
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    images = sum(count(next(batches)) for _ in range(n))
    seconds = time.perf_counter() - start
    return {
        "images_per_s": round(images / seconds, 1),
        "ms_per_batch": round(1000 * seconds / n, 2),
        "batches": n,
        "warmup_s": round(start - first, 2),
    }


def paired(batch: object) -> int:
    data = batch[0]
    return len(data["source"][1]) + len(data["target"])


def warmup_for(workers: int) -> int:
    """Batches to consume before timing: the DataLoader's prefetch buffer (2 per worker) plus one, so the timed
    window starts in the steady state where every batch is waited for."""
    return 2 * workers + 1


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="uda-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        made = make_office_tree(root / "office31", classes=args.classes, per_class=args.per_class)
        print(f"generated {made} JPEGs in {time.perf_counter() - started:.1f} s", flush=True)
        for workers in args.workers:
            warm = warmup_for(workers)
            dm = Office31(
                "A", "W", root=root / "office31", strict=False, batch_size=32, eval_batch_size=32,
                num_workers=workers, iters_per_epoch=warm + args.batches, pin_memory=False,
            )  # fmt: skip
            dm.setup()
            result = timed(iter(dm.train_dataloader()), paired, warm, args.batches)
            rows.append({"case": "office_train", "num_workers": workers, "batch": "32+32", **result})
            print(rows[-1], flush=True)
            eval_batches = len(dm.target_data.test) // 32 - warm
            result = timed(iter(dm.val_dataloader()[0]), lambda b: len(b[1]), warm, eval_batches)
            rows.append({"case": "office_eval", "num_workers": workers, "batch": "32", **result})
            print(rows[-1], flush=True)
            del dm

        from tests.unit.dataset_fakes import write_mnist, write_usps

        digits_root = root / "digits"
        digits_root.mkdir()
        write_mnist(digits_root, n_train=6000, n_test=1000)
        write_usps(digits_root, n_train=2000, n_test=500)
        for workers in args.workers:
            warm = warmup_for(workers)
            dm = Digits(
                "M", "U", root=digits_root, strict=False, batch_size=64, num_workers=workers,
                iters_per_epoch=warm + 5 * args.batches, pin_memory=False,
            )  # fmt: skip
            dm.setup()
            result = timed(iter(dm.train_dataloader()), paired, warm, 5 * args.batches)
            rows.append({"case": "digits_tv", "num_workers": workers, "batch": "64+64", **result})
            print(rows[-1], flush=True)
        dm = OfflineDigits("mnist", "uci", batch_size=64, iters_per_epoch=1 + 20 * args.batches)
        dm.setup()
        result = timed(iter(dm.train_dataloader()), paired, 1, 20 * args.batches)
        rows.append({"case": "offline_digits", "num_workers": 0, "batch": "64+64", **result})
        print(rows[-1], flush=True)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(result: dict) -> str:
    lines = [
        "# Data-loading throughput",
        "",
        f"`{result['command']}` — {result['date']}",
        "",
        f"Machine: {result['machine']}; load average at start {result['load_average']}; torch {result['torch']}, "
        f"torchvision {result['torchvision']}, Pillow {result['pillow']}, Python {result['python']}.",
        "",
        "| case | num_workers | batch | images/s | ms/batch | timed batches | warm-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['num_workers']} | {r['batch']} | {r['images_per_s']} | {r['ms_per_batch']} | "
            f"{r['batches']} | {r['warmup_s']} |"
        )
    lines += ["", result["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=8, help="timed batches per Office case (digits: 5x, 20x)")
    parser.add_argument("--classes", type=int, default=10, help="generated classes per domain")
    parser.add_argument("--per-class", type=int, default=40, help="generated JPEGs per class and domain")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    # One intra-op thread in the main process, as in DataLoader workers: on a busy machine two threads per tiny
    # tensor op (ToTensor/Normalize) cost 3-10x more, which would make num_workers=0 look far worse than it is.
    torch.set_num_threads(args.threads)
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    rows = run(args)
    result = {
        "command": " ".join(["python", "benchmarks/data_throughput.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "load_average": load,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "notes": (
            "images/s counts every image delivered (both domains for paired training batches); each DataLoader "
            "(source, target) has num_workers processes, so num_workers=2 means 4 worker processes. The main "
            f"process ran with torch.set_num_threads({args.threads}) (see --threads). Office JPEGs are 300x300 like "
            "Office-31's amazon domain; DSLR, VisDA and DomainNet images are larger and decode slower. On a shared "
            "2-core machine workers cannot add throughput; on a GPU machine each worker can add up to the "
            "num_workers=0 rate, so set num_workers near the number of free cores. Digits: per-item work is tiny "
            "and inter-process transfer dominates, so num_workers=0 is fastest."
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "data_throughput.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
