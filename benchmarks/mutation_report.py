"""Mutation score of the pure core, from the results of ``mutmut run`` -> benchmarks/results/mutation.md.

``make mutate`` runs mutmut (configured in pyproject.toml, ``[tool.mutmut]``: the mutated files and the fast
unit tests that judge them) within a time budget, then this script. It reads mutmut's per-file results under
``mutants/`` and writes, per area (harmonizers + engine, report, record) and per file, how many mutants were
killed, survived, timed out, had no covering test or are not checked yet, the score killed / (checked), and
every surviving mutant with its diff (through ``mutmut show``). Survivors judged equivalent (no test can tell
them from the original) are explained in ``benchmarks/mutation_equivalent.md`` (``name: reason`` lines), which
this script copies beside each one; a survivor without an explanation is listed as "unexplained".

    python benchmarks/mutation_report.py [--command "make mutate"]   # after mutmut run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
OUT = ROOT / "benchmarks" / "results" / "mutation.md"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.md"
#: the report's areas, by path prefix; the goal (>= 90 % killed) is stated for the first
AREAS = {
    "harmonizers + engine": "uda/harmonizers/",
    "report": "uda/report/",
    "record": "uda/record.py",
}
GOAL_AREA, GOAL = "harmonizers + engine", 0.90
#: mutmut's exit codes as it classifies them (mutmut.stats.status_by_exit_code, 3.x)
FALLBACK_STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    2: "interrupted",
    None: "not checked",
}
COLUMNS = ("killed", "survived", "timeout", "no tests", "not checked", "other")


def status_of(exit_code: int | None) -> str:
    try:
        from mutmut.stats import status_by_exit_code  # the installed mutmut's own classification
    except ImportError:
        status_by_exit_code = FALLBACK_STATUS
    status = status_by_exit_code.get(exit_code, "suspicious")
    return status if status in COLUMNS else ("not checked" if exit_code is None else "other")


def read_results(mutants: Path) -> dict[str, tuple[str, str]]:
    """mutant name -> (source path relative to the repository, status), from mutmut's ``*.py.meta`` files."""
    results = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        source = meta.relative_to(mutants).as_posix()[: -len(".meta")]
        for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = (source, status_of(exit_code))
    return results


def area_of(path: str) -> str:
    return next((area for area, prefix in AREAS.items() if path.startswith(prefix)), "other")


def score(counts: Counter) -> str:
    """killed / checked, where timeouts count as killed (the mutant made the tests hang: they noticed)."""
    checked = sum(counts[c] for c in ("killed", "survived", "timeout"))
    return "–" if not checked else f"{100 * (counts['killed'] + counts['timeout']) / checked:.1f} %"


def table(rows: dict[str, Counter]) -> list[str]:
    lines = ["| | mutants | " + " | ".join(COLUMNS) + " | score |", "|---|" + "---:|" * (len(COLUMNS) + 2)]
    for name, counts in rows.items():
        cells = [str(sum(counts.values())), *(str(counts[c]) for c in COLUMNS), score(counts)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def diff_of(name: str) -> str:
    """The mutated lines of one mutant (``-`` original, ``+`` mutant), from ``mutmut show``."""
    proc = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True, text=True, check=False
    )
    lines = [
        ln.rstrip()
        for ln in proc.stdout.splitlines()
        if ln[:1] in "+-" and not ln.startswith(("+++", "---")) and ln[1:].strip()
    ]
    return "\n".join(lines) if lines else f"(mutmut show failed: {proc.stderr.strip()[-200:]})"


def equivalent_notes(path: Path) -> dict[str, str]:
    """``mutant name: reason`` lines of the equivalence file (other lines are prose)."""
    if not path.is_file():
        return {}
    notes = {}
    for line in path.read_text().splitlines():
        name, sep, reason = line.strip().lstrip("-* ").strip("`").partition(": ")
        if sep and "__mutmut_" in name:
            notes[name.strip("`")] = reason.strip()
    return notes


def report(results: dict[str, tuple[str, str]], command: str, notes: dict[str, str]) -> str:
    by_area: dict[str, Counter] = {area: Counter() for area in AREAS}
    by_file: dict[str, Counter] = {}
    for source, status in results.values():
        by_area.setdefault(area_of(source), Counter())[status] += 1
        by_file.setdefault(source, Counter())[status] += 1
    total = Counter()
    for counts in by_area.values():
        total.update(counts)
    goal_counts = by_area[GOAL_AREA]
    checked = sum(goal_counts[c] for c in ("killed", "survived", "timeout"))
    goal_score = (goal_counts["killed"] + goal_counts["timeout"]) / checked if checked else 0.0
    survivors = sorted(name for name, (_, status) in results.items() if status == "survived")
    unexplained = [n for n in survivors if n not in notes]

    lines = [
        "# Mutation score of the pure core",
        "",
        f"Made by `{command}` on {dt.date.today().isoformat()} ({platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs): mutmut mutates each function of the files in "
        "`[tool.mutmut] only_mutate` of pyproject.toml and runs the unit tests that reach it "
        "(`pytest_add_cli_args_test_selection`). killed: some test failed; survived: every test passed; "
        "timeout: the tests ran past mutmut's CPU-time limit (counted as killed in the score); no tests: no "
        "selected test reaches the function; not checked: the time budget ran out first (`make mutate` "
        "resumes there). score = (killed + timeout) / (killed + survived + timeout).",
        "",
        "## By area",
        "",
        *table({**by_area, "**all**": total}),
        "",
        f"Goal: at least {100 * GOAL:.0f} % killed in the {GOAL_AREA}: "
        f"**{100 * goal_score:.1f} %** ({'met' if goal_score >= GOAL else 'not met'}).",
        "",
        "## By file",
        "",
        *table(dict(sorted(by_file.items()))),
        "",
        f"## Surviving mutants ({len(survivors)}; {len(unexplained)} without an equivalence note)",
        "",
        "Each is either equivalent to the original (no input tells them apart; the reason is given, from "
        "`benchmarks/mutation_equivalent.md`) or a gap in the tests (unexplained).",
        "",
    ]
    for name in survivors:
        lines += [f"### `{name}`", "", f"{notes.get(name, 'unexplained')}", "", "```diff", diff_of(name), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", default="make mutate", help="the command that produced the results")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not MUTANTS.is_dir():
        raise SystemExit(f"error: {MUTANTS} does not exist: run `make mutate` (mutmut run) first")
    results = read_results(MUTANTS)
    if not results:
        raise SystemExit(f"error: no mutmut results under {MUTANTS}: run `make mutate` (mutmut run) first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(results, args.command, equivalent_notes(EQUIVALENT)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
