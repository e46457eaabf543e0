"""The UDA datamodule: paired source/target training batches, target (and source) evaluation sets."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from numbers import Integral
from typing import ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from uda.data.samplers import RandomStreamSampler, ShardSampler
from uda.errors import ConfigError

#: evaluation sets in the order of ``val_dataloader``; metric names are "<name>/acc"
EVAL_SETS = ("target", "source")


@dataclass
class DomainSplit:
    """A domain's labelled train and test sets (each item is ``(image, label)``)."""

    train: Dataset
    test: Dataset


class Unlabeled(Dataset):
    """View of a labelled dataset that yields images only, so target labels cannot leak into training."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index][0]


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


class UDADataModule(L.LightningDataModule):
    """Source (labelled) + target (unlabelled) training; evaluation on the target and source test splits.

    Training batches are ``{"source": (x, y), "target": x}``. Each domain is drawn by its own sampler
    that walks through fresh random permutations of the domain (reshuffled at every pass), so source and
    target of different sizes pair up without either being truncated; one "epoch" is
    ``iters_per_epoch`` iterations (the evaluation period). Under DDP every rank draws its own
    ``batch_size`` per domain and iteration, disjoint from the other ranks, and evaluates a disjoint
    shard of the test sets (set ``trainer.use_distributed_sampler=false``, as the default trainer does).
    Subclasses set ``domains``, ``num_classes`` and implement :meth:`load_domain`.
    """

    name: ClassVar[str] = "uda"
    domains: ClassVar[tuple[str, ...]] = ()
    #: short names accepted for ``source``/``target`` (e.g. ``"A": "amazon"``); resolved to ``domains``
    aliases: ClassVar[dict[str, str]] = {}
    num_classes: ClassVar[int] = 0
    class_names: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        source: str,
        target: str,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        iters_per_epoch: int | None = None,
        pin_memory: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        resolved = []
        for role, domain in (("source", source), ("target", target)):
            name = self.resolve_domain(domain)
            if name is None:
                raise ConfigError(
                    f"dataset.{role}={domain!r} is not a domain of {self.name}; choose one of: {self.domain_choices()}"
                )
            resolved.append(name)
        if resolved[0] == resolved[1]:
            raise ConfigError(
                f"dataset.source and dataset.target are both {resolved[0]!r}: domain adaptation needs two different "
                f"domains; choose another dataset.target (domains: {self.domain_choices()})"
            )
        self.source, self.target = resolved
        for key, value, hint in (
            ("batch_size", batch_size, "samples per domain in each training batch, e.g. 64"),
            ("eval_batch_size", eval_batch_size, "samples per evaluation batch"),
        ):
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"dataset.{key}={value!r} is invalid: it must be a positive integer ({hint})")
        if not _is_int(num_workers) or num_workers < 0:
            raise ConfigError(f"dataset.num_workers={num_workers!r} is invalid: it must be 0 or a positive integer")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.iters_per_epoch = iters_per_epoch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.seed = int(seed)
        self.source_data: DomainSplit | None = None
        self.target_data: DomainSplit | None = None

    @classmethod
    def resolve_domain(cls, name: object) -> str | None:
        """The domain called ``name`` (a domain or one of its aliases), or ``None`` if there is none."""
        if not isinstance(name, str):
            return None
        if name in cls.domains:
            return name
        return cls.aliases.get(name)

    @classmethod
    def domain_choices(cls) -> str:
        """The valid domain names for messages, aliases in parentheses: ``"amazon (A), dslr (D), ..."``."""
        short = {domain: [a for a, d in cls.aliases.items() if d == domain] for domain in cls.domains}
        return ", ".join(f"{d} ({'/'.join(short[d])})" if short[d] else d for d in cls.domains)

    @property
    def task(self) -> str:
        return f"{self.source}→{self.target}"

    @property
    def source_eval_split(self) -> str:
        """What ``source/acc`` is measured on (and so what ``source_val`` model selection relies on)."""
        return "source test split (held out from training)"

    @abstractmethod
    def load_domain(self, domain: str) -> DomainSplit:
        """Load one domain's train and test splits."""

    def setup(self, stage: str | None = None) -> None:
        if self.source_data is None:
            self.source_data = self.load_domain(self.source)
            self.target_data = self.load_domain(self.target)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, *, train: bool, stream: int = 0) -> DataLoader:
        rank, world = self._rank_world()
        kwargs = dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if not train:
            sampler = ShardSampler(len(dataset), rank, world)
            return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **kwargs)
        iters = self.iters_per_epoch or -(
            -max(len(self.source_data.train), len(self.target_data.train)) // self.batch_size
        )
        sampler = RandomStreamSampler(len(dataset), iters * self.batch_size, rank, world, seed=self.seed * 2 + stream)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True, **kwargs)

    def train_dataloader(self) -> CombinedLoader:
        self.setup()
        return CombinedLoader(
            {
                "source": self._loader(self.source_data.train, train=True),
                "target": self._loader(Unlabeled(self.target_data.train), train=True, stream=1),
            },
            mode="min_size",
        )

    def val_dataloader(self) -> list[DataLoader]:
        self.setup()
        return [self._loader(self.target_data.test, train=False), self._loader(self.source_data.test, train=False)]
