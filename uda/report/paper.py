"""The GH paper's numbers (``uda/resources/paper_results.csv``) looked up under our names.

"Gradient Harmonization in Unsupervised Domain Adaptation" (TPAMI), Tables 1-5, report target accuracy (%)
per task and an average, for CDAN+E, MCD, GVB-GD, DWL and SSRT without harmonization, with GH and with GH++
(λ = 0.5 throughout, paper_notes.md). Our names differ in three ways, mapped here:

- dataset keys: ``officehome`` is the paper file's ``office_home``;
- tasks: ours join the resolved domain names with "→" (``amazon→webcam``, see
  :attr:`uda.data.datamodule.UDADataModule.task`), the paper's join short names with "->" (``A->W``);
- harmonizers: ``none`` / ``gh`` / ``ghpp`` with λ = 0.5 are the paper's rows; GH++ at any other λ, and
  every other harmonizer, has no paper number.

Baselines share their names (``cdan`` is CDAN+E); ``dann``, ``source_only`` and ``offline_digits`` (MNIST-5k
-> UCI) have no paper number.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

#: our dataset key -> the paper file's dataset key
PAPER_DATASET = {
    "office31": "office31",
    "officehome": "office_home",
    "visda2017": "visda2017",
    "domainnet": "domainnet",
    "digits": "digits",
}

#: our domain names (as uda.data resolves them) -> the paper's short names, per dataset
PAPER_DOMAIN = {
    "office31": {"amazon": "A", "dslr": "D", "webcam": "W"},
    "officehome": {"Art": "Ar", "Clipart": "Cl", "Product": "Pr", "Real_World": "Rw"},
    "visda2017": {"Synthetic": "Syn", "Real": "Real"},
    "digits": {"mnist": "M", "usps": "U", "svhn": "S"},
    # the paper prints only DomainNet's mean over its 30 tasks (row "avg30")
    "domainnet": {d: d[0] for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")},
}

#: GH++'s trade-off in every table of the paper
PAPER_GHPP_LAM = 0.5


def paper_harmonizer(name: str, lam: float | None) -> str | None:
    """The paper's harmonizer row for our harmonizer ``name`` (and GH++ ``lam``), or None."""
    if name in ("none", "gh"):
        return name
    if name == "ghpp" and (lam is None or math.isclose(lam, PAPER_GHPP_LAM)):
        return "ghpp"  # λ absent = the harmonizer's default, 0.5
    return None


def paper_task(dataset: str, task: str) -> str | None:
    """The paper's name of our ``task`` on ``dataset`` (``amazon→webcam`` -> ``A->W``), or None."""
    domains = PAPER_DOMAIN.get(dataset)
    if domains is None:
        return None
    parts = re.split(r"→|->", task)
    if len(parts) != 2:
        return None
    short = []
    for part in parts:
        part = part.strip()
        # accept the paper's own short names too (a task written as "A→W")
        name = domains.get(part, part if part in domains.values() else None)
        if name is None:
            return None
        short.append(name)
    return "->".join(short)


@dataclass
class PaperResults:
    """Accuracies keyed by (paper dataset, paper task, baseline, harmonizer); averages by the first, third and
    fourth, with how many tasks they cover."""

    per_task: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    averages: dict[tuple[str, str, str], tuple[float, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> PaperResults:
        """Read the CSV format of ``uda/resources/paper_results.csv`` (``#`` lines are comments)."""
        rows = csv.DictReader(io.StringIO("".join(ln for ln in text.splitlines(True) if not ln.startswith("#"))))
        out = cls()
        avg_rows = []
        for row in rows:
            key = (row["dataset"], row["task"], row["baseline"], row["harmonizer"])
            if re.fullmatch(r"avg\d*", row["task"]):
                avg_rows.append((key, float(row["accuracy"])))
            else:
                out.per_task[key] = float(row["accuracy"])
        for (dataset, task, baseline, harmonizer), value in avg_rows:
            # "avg" covers the tasks listed in the file, "avg30" states its count
            listed = sum(k[0] == dataset and k[2:] == (baseline, harmonizer) for k in out.per_task)
            out.averages[(dataset, baseline, harmonizer)] = (value, int(task[3:]) if task[3:] else listed)
        return out

    @classmethod
    def load(cls, path: str | Path | None = None) -> PaperResults:
        """The packaged copy of the paper's numbers, or the CSV at ``path``."""
        if path is not None:
            return cls.parse(Path(path).read_text())
        return cls.parse((resources.files("uda.resources") / "paper_results.csv").read_text())

    def accuracy(self, dataset: str, task: str, baseline: str, harmonizer: str, lam: float | None) -> float | None:
        """The paper's accuracy (%) for one of our rows, or None when the paper has none."""
        key = self._key(dataset, baseline, harmonizer, lam)
        ptask = paper_task(dataset, task)
        if key is None or ptask is None:
            return None
        return self.per_task.get((key[0], ptask, *key[1:]))

    def average(
        self, dataset: str, tasks: Iterable[str], baseline: str, harmonizer: str, lam: float | None
    ) -> float | None:
        """The paper's average over the same ``tasks`` as our avg row.

        All the paper's tasks -> its printed average (rounded as printed); a subset -> the mean of its
        per-task numbers on that subset, so the two averages compare like for like; a task without a paper
        number -> None, except that all 30 DomainNet tasks match the paper's printed 30-task mean.
        """
        key = self._key(dataset, baseline, harmonizer, lam)
        if key is None:
            return None
        ptasks = {paper_task(dataset, t) for t in tasks}
        printed, count = self.averages.get(key, (None, 0))
        values = [self.per_task.get((key[0], t, *key[1:])) for t in ptasks]
        if None in ptasks or None in values:
            return printed if None not in ptasks and len(ptasks) == count and count else None
        return printed if len(ptasks) == count and printed is not None else sum(values) / len(values)

    @staticmethod
    def _key(dataset: str, baseline: str, harmonizer: str, lam: float | None) -> tuple[str, str, str] | None:
        pdataset, pharmonizer = PAPER_DATASET.get(dataset), paper_harmonizer(harmonizer, lam)
        if pdataset is None or pharmonizer is None:
            return None
        return pdataset, baseline, pharmonizer
