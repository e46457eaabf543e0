"""The harmonizer table, generated from the classes' own attributes: ``python -m uda.harmonizers.table``.

Each exported :class:`~uda.harmonizers.Harmonizer` subclass is one row: the ``harmonizer=`` options that
instantiate it (``conf/harmonizer/*.yaml``, by ``_target_``), the first line of its docstring, and the
attributes it declares (``num_losses``/``max_losses``, ``needs_losses``, ``stateful``, ``conflict_free``,
``symmetric``, ``cost``). ``--readme README.md`` rewrites the README's copy between its two markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

import uda.harmonizers as harmonizers
from uda.harmonizers.base import Harmonizer

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "harmonizer"
BEGIN = "<!-- harmonizer-table:begin (generated: python -m uda.harmonizers.table --readme README.md) -->"
END = "<!-- harmonizer-table:end -->"
COLUMNS = ("`harmonizer=`", "method", "losses", "needs", "stateful", "never conflicts", "loss order", "cost")


def harmonizer_classes() -> list[type[Harmonizer]]:
    """Every Harmonizer subclass exported by :mod:`uda.harmonizers`, in the order of ``__all__``."""
    found = (getattr(harmonizers, name) for name in harmonizers.__all__)
    return [obj for obj in found if isinstance(obj, type) and issubclass(obj, Harmonizer) and obj is not Harmonizer]


def conf_targets(conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """``harmonizer=`` option -> the ``_target_`` of its yaml."""
    return {path.stem: yaml.safe_load(path.read_text())["_target_"] for path in sorted(conf_dir.glob("*.yaml"))}


def summary_line(cls: type[Harmonizer]) -> str:
    """The docstring's first sentence-line, in markdown (RST double backticks become single ones)."""
    first = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    return first.replace("``", "`").rstrip()


def losses_supported(cls: type[Harmonizer]) -> str:
    if cls.num_losses is not None:
        return str(cls.num_losses)
    return "any" if cls.max_losses is None else f"≤ {cls.max_losses}"


def rows(conf_dir: Path = CONF_DIR) -> list[dict[str, str]]:
    """One dict per harmonizer class, keyed by :data:`COLUMNS`."""
    options: dict[str, list[str]] = {}
    for option, target in conf_targets(conf_dir).items():
        options.setdefault(target.rsplit(".", 1)[-1], []).append(option)
    table = []
    for cls in sorted(harmonizer_classes(), key=lambda c: sorted(options.get(c.__name__, [c.name]))[0]):
        table.append(
            {
                COLUMNS[0]: ", ".join(f"`{o}`" for o in options.get(cls.__name__, [])) or "(no config)",
                COLUMNS[1]: summary_line(cls),
                COLUMNS[2]: losses_supported(cls),
                COLUMNS[3]: "Gram + losses" if cls.needs_losses else "Gram",
                COLUMNS[4]: "yes" if cls.stateful else "no",
                COLUMNS[5]: cls.conflict_free,
                COLUMNS[6]: "symmetric" if cls.symmetric else "ordered",
                COLUMNS[7]: cls.cost or "(not stated)",
            }
        )
    return table


def markdown(conf_dir: Path = CONF_DIR) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows(conf_dir)]
    return "\n".join(lines) + "\n"


def replace_in_readme(text: str, table: str) -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``table``."""
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"the README has no harmonizer table markers; add the two lines\n{BEGIN}\n{END}")
    return pattern.sub(lambda _: f"{BEGIN}\n{table}{END}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="rewrite the table between the markers of this file")
    args = parser.parse_args(argv)
    table = markdown()
    if args.readme is None:
        sys.stdout.write(table)
    else:
        args.readme.write_text(replace_in_readme(args.readme.read_text(), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
