"""What one harmonizer call costs, and whether it forces a host synchronisation for two losses.

For every ``harmonizer=`` option (``conf/harmonizer/*.yaml``, default parameters): the median time per
call of ``weights(K)`` on a 2x2 and a 10x10 Gram matrix (10 losses only for methods that accept them),
on the CPU and, when CUDA exists, on the GPU. Loss-based methods (FAMO, DB-MTL) also get loss values.
Gram matrices come from random conflicting gradients; stateful methods keep updating their state.

Host synchronisation for two losses (the weights must stay on the device):

* CUDA: the calls run under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any
  synchronising CUDA call (``.item()``, ``bool(tensor)``, boolean-mask indexing, device-to-host copies).
* CPU (always, the only check on a machine without CUDA): an inspection of the tensor
  methods that read device values on the host (:func:`uda.harmonizers.host_sync.host_reads_recorded`
  lists them); any record means the method would synchronise on a GPU. The unit tests run the same
  inspection on every harmonizer.

    python benchmarks/harmonizer_calls.py   # writes benchmarks/results/harmonizer_calls.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate

from uda.harmonizers import Harmonizer
from uda.harmonizers.host_sync import host_reads_recorded
from uda.harmonizers.table import CONF_DIR

RESULTS = Path(__file__).with_name("results")
SIZES = (2, 10)
CPU_CHECK = "cpu inspection (TorchFunctionMode, uda.harmonizers.host_sync)"


def random_gram(m: int, seed: int, device: torch.device) -> torch.Tensor:
    """Gram matrix (float32, as the engine gives it) of m random gradients where g_2 opposes g_1."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, 64, generator=gen) * torch.rand(m, 1, generator=gen)
    g[1] = -0.8 * g[0] + 0.3 * g[1]
    return (g @ g.T).to(device)


def call(h: Harmonizer, gram: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    return h.weights(gram, losses) if h.needs_losses else h.weights(gram)


def supports(h: Harmonizer, m: int) -> bool:
    if h.num_losses is not None:
        return h.num_losses == m
    return h.max_losses is None or m <= h.max_losses


def time_per_call(h: Harmonizer, m: int, device: torch.device, calls: int, rounds: int) -> tuple[float, int]:
    """Median over ``rounds`` of (time of n consecutive calls) / n, in seconds, and n: ``calls`` at most,
    fewer for slow methods (about 0.3 s per round, at least 3 calls)."""
    losses = (0.5 + torch.rand(m, generator=torch.Generator().manual_seed(m))).to(device)
    warm = [random_gram(m, seed, device) for seed in range(3)]
    for gram in warm:  # warm-up (lazy imports, kernels, state allocation)
        call(h, gram, losses)
    start = time.perf_counter()
    call(h, warm[0], losses)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    calls = max(3, min(calls, int(0.3 / max(time.perf_counter() - start, 1e-9))))
    grams = [random_gram(m, seed, device) for seed in range(calls)]
    per_call = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for gram in grams:
            call(h, gram, losses)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_call.append((time.perf_counter() - start) / calls)
    return statistics.median(per_call), calls


def host_syncs(h: Harmonizer, device: torch.device) -> list[str]:
    """What forces a host synchronisation in two-loss calls (after a warm-up call): [] when nothing does."""
    grams = [random_gram(2, seed, device) for seed in range(4)]
    losses = torch.tensor([0.7, 2.3], device=device)
    call(h, grams[0], losses)  # first call: lazy state allocation, imports
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for gram in grams[1:]:
                call(h, gram, losses)
        except RuntimeError as error:
            return [f"cuda: {str(error).splitlines()[0]}"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return []
    with host_reads_recorded() as records:
        for gram in grams[1:]:
            call(h, gram, losses)
    return sorted(set(records))


def configs() -> dict[str, dict[str, Any]]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(CONF_DIR.glob("*.yaml"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per timing round, at most")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (the median is reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for option, node in configs().items():
        for device in devices:
            h: Harmonizer = instantiate(node)
            row: dict[str, Any] = {"harmonizer": option, "class": type(h).__name__, "device": device.type}
            row["host_syncs_2_losses"] = host_syncs(instantiate(node), device)
            for m in SIZES:
                if not supports(h, m):
                    row[f"us_per_call_{m}x{m}"] = row[f"calls_{m}x{m}"] = None
                    continue
                seconds, calls = time_per_call(instantiate(node), m, device, args.calls, args.rounds)
                row[f"us_per_call_{m}x{m}"], row[f"calls_{m}x{m}"] = round(seconds * 1e6, 1), calls
            rows.append(row)
            print(json.dumps(row), flush=True)

    meta = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "sync_check": "cuda sync debug mode" if torch.cuda.is_available() else CPU_CHECK,
        # a shared machine inflates every time alike: the 1-minute load average before and after
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harmonizer_calls.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "harmonizer_calls.md").write_text(markdown(meta, rows))
    forcing = [r for r in rows if r["host_syncs_2_losses"]]
    print(f"{len(rows)} rows; host syncs for two losses: {[(r['harmonizer'], r['device']) for r in forcing] or 'none'}")
    return 0


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:,.1f}"

    lines = [
        "# Harmonizer calls: time per `weights(K)` call and host synchronisation for two losses",
        "",
        f"{meta['date']}, torch {meta['torch']}, {meta['threads']} CPU threads"
        + (f", {meta['cuda']}" if meta["cuda"] else ", no CUDA")
        + f"; median over {meta['rounds']} rounds of up to {meta['calls_per_round']} calls (about 0.3 s a round); "
        f"sync check: {meta['sync_check']} (see benchmarks/harmonizer_calls.py). "
        f"1-minute load average before/after: {[round(x, 1) for x in meta['load_average'] if x is not None]} "
        "(times on a loaded machine are inflated).",
        "",
        "| `harmonizer=` | device | µs per call, 2x2 | µs per call, 10x10 | host syncs for 2 losses |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        syncs = ", ".join(r["host_syncs_2_losses"]) or "none"
        times = f"{fmt(r['us_per_call_2x2'])} | {fmt(r['us_per_call_10x10'])}"
        lines.append(f"| `{r['harmonizer']}` | {r['device']} | {times} | {syncs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
