"""A cache of frozen image-tower features, keyed by the exact content of each input image.

With a frozen image tower (CLIP in CoOp/DAPL/ProGrad/PGA) the features of an image never change, so an
image seen before needs no forward pass. The batch carries no sample index, so each image is keyed by a
fingerprint of its bits: with ``v`` the image's raw bits as integers and ``w_1, w_2`` fixed random integer
vectors, ``key_l = Σ_j (v_j mod P)(w_lj) mod P`` for the prime P = 2³¹ − 1. Integer arithmetic makes the key
exact and independent of the batch it arrives in (a float projection would differ in the last bits between
batch layouts), every product stays below 2⁶² (no overflow), and two different images share both keys with
probability about P⁻² per pair. It runs on the images' device with one host transfer of the keys per batch.

The cache is correct whatever the data pipeline does; it only *helps* without augmentation (a randomly
cropped view is a new image every time, so nothing hits and the cache only grows: bound it with
``max_entries`` and watch :attr:`ImageFeatureCache.hit_rate`, which the prompt baselines log).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

#: the modulus of the fingerprint (a Mersenne prime)
PRIME = 2**31 - 1
#: independent fingerprint components per image
KEY_WIDTH = 2
_SEED = 20240611
_INT_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def fingerprints(x: Tensor, weights: Tensor) -> Tensor:
    """Exact integer keys ``(batch, KEY_WIDTH)`` of the images in ``x`` (see the module docstring).

    ``weights`` is ``(KEY_WIDTH, numel per image)`` int64 in ``[0, PRIME)``.
    """
    flat = x.detach().contiguous().reshape(x.shape[0], -1)
    bits = flat.view(_INT_VIEWS[flat.element_size()]).to(torch.int64).remainder(PRIME)
    keys = [(bits * w).remainder_(PRIME).sum(dim=1).remainder_(PRIME) for w in weights]
    return torch.stack(keys, dim=1)


class ImageFeatureCache:
    """``cache(encode, x)`` returns ``encode(x)``, computing only the rows whose images were not seen before.

    Stored features are detached float32 rows on the device they were computed on. ``max_entries`` bounds
    the number of stored images (further misses are computed and not stored). ``hits``/``misses`` count
    images since construction.
    """

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and int(max_entries) < 1:
            raise ValueError(f"max_entries must be positive or None, got {max_entries}")
        self.max_entries = None if max_entries is None else int(max_entries)
        self._store: dict[tuple[int, ...], Tensor] = {}
        self._weights: dict[tuple[int, str], Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @property
    def hit_rate(self) -> float:
        """Fraction of images served from the cache so far (0 before any call)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def _weights_for(self, numel: int, device: torch.device) -> Tensor:
        key = (numel, str(device))
        if key not in self._weights:
            generator = torch.Generator().manual_seed(_SEED)
            w = torch.randint(1, PRIME, (KEY_WIDTH, numel), generator=generator, dtype=torch.int64)
            self._weights[key] = w.to(device)
        return self._weights[key]

    def keys(self, x: Tensor) -> list[tuple[int, ...]]:
        """The fingerprint of each image of ``x`` as a hashable tuple."""
        w = self._weights_for(x[0].numel(), x.device)
        return [tuple(row) for row in fingerprints(x, w).tolist()]

    def __call__(self, encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        keys = self.keys(x)
        fresh: dict[tuple[int, ...], Tensor] = {}
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        if missing:
            features = encode(x[missing]).detach().float()
            for i, row in zip(missing, features, strict=True):
                fresh[keys[i]] = row
                if self.max_entries is None or len(self._store) < self.max_entries:
                    self._store[keys[i]] = row
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        rows = [fresh[k] if k in fresh else self._store[k] for k in keys]
        return torch.stack(rows).to(x.device)


class FrozenImageFeatures(nn.Module):
    """``forward(encoder, x)``: the features of a frozen image encoder for a batch, from ``cache`` when given.

    A module of its own (without parameters; the encoder is passed in, not owned) so that the per-image
    features of a prompt baseline are one module's output per batch, whether they were computed or cached:
    forward hooks (the analysis callback's) see them either way.
    """

    def __init__(self, cache: ImageFeatureCache | None = None) -> None:
        super().__init__()
        self.cache = cache

    def forward(self, encoder: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return encoder(x) if self.cache is None else self.cache(encoder, x)
