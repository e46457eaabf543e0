"""The gradient engine: per-loss gradients, their Gram matrix, and the harmonized update in ``.grad``.

One call of :func:`harmonized_backward` replaces ``loss.backward()`` in a training step:

1. g_i = dL_i/dθ for every loss by ``torch.autograd.grad`` over the parameters being optimized,
   zero-filled where a loss does not reach a parameter (``materialize_grads``), copied into one
   flat ``(m, P)`` buffer (one buffer, so a distributed all-reduce is a single fused call);
2. the Gram matrix K = G Gᵀ over the harmonized parameter scope (a contiguous block of columns);
3. tau = harmonizer.weights(K) for each harmonized group of losses;
4. ``p.grad = Σ_i coef_i · tau_i · g_i`` written directly (GH paper Eq. 41 with the baseline's
   trade-off coefficients ``coef_i``): no third backward pass over the graph.

The official GH code instead runs backward(L1), backward(L2), then backward(Σ coef_i tau_i L_i): three
passes with an identical result. :func:`three_pass_backward` keeps that procedure as the reference for
tests and benchmarks. :func:`feature_space_backward` is the cheap approximation (MGDA-UB style): the
Gram matrix of the gradients with respect to the shared batch features, then one ordinary backward of
the weighted loss.

Plain PyTorch only: a researcher can call this from any training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from uda.harmonizers.base import Harmonizer

#: relative tolerance when deciding that the update conflicts with a loss after harmonization
#: (GH makes d·g_i = ‖g_i‖² sin²θ, which rounding can push a hair below zero when θ ≈ π)
CONFLICT_RTOL = 1e-5
#: which gradients tau multiplies: every parameter's (``all``, official) or only the Gram scope's
TAU_APPLIES_TO = ("all", "gram_params")


@dataclass(frozen=True)
class GradStats:
    """Gradient geometry of one harmonized step; every field is a detached tensor on the device.

    Attributes:
        gram: ``(m, m)`` Gram matrix of the raw per-loss gradients over the Gram scope (before the
            trade-off coefficients and before harmonization).
        tau: ``(m,)`` harmonizer weights (1 for losses outside every harmonized group).
        trade_offs: ``(m,)`` trade-off coefficients of the losses.
        groups: index tuples of the losses harmonized together (the first index is loss "1").
        pair_coefs: ``(m, m)`` harmonized-gradient coefficients A (ĝ_i = Σ_j A_ij g'_j, with g' = g, or
            coef·g when ``trade_off_before``); identity outside the groups.
        trade_off_before: whether the harmonizer saw the trade-off-weighted gradients (trade-offs applied
            before harmonization).
        space: ``"params"`` or ``"features"`` (where the gradients were taken).
    """

    gram: Tensor
    tau: Tensor
    trade_offs: Tensor
    groups: tuple[tuple[int, ...], ...]
    pair_coefs: Tensor
    trade_off_before: bool = False
    space: str = "params"

    @property
    def norms(self) -> Tensor:
        """‖g_i‖ over the Gram scope."""
        return torch.sqrt(torch.clamp(torch.diagonal(self.gram), min=0.0))

    def cos(self, i: int = 0, j: int = 1) -> Tensor:
        """cos(g_i, g_j); 0 when either gradient is zero."""
        den = self.norms[i] * self.norms[j]
        return torch.where(den > 0, self.gram[i, j] / torch.clamp(den, min=1e-30), torch.zeros_like(den))

    def conflict(self, i: int = 0, j: int = 1) -> Tensor:
        """1.0 when g_i·g_j < 0 (an obtuse angle), else 0.0."""
        return (self.gram[i, j] < 0).to(self.gram.dtype)

    @property
    def update_weights(self) -> Tensor:
        """w_i = coef_i · tau_i: the update is d = Σ_i w_i g_i over the Gram scope."""
        return self.trade_offs * self.tau

    @property
    def update_dots(self) -> Tensor:
        """d · g_i for each loss, from the Gram matrix alone: (K w)_i."""
        return self.gram @ self.update_weights

    @property
    def update_norm(self) -> Tensor:
        """‖d‖ = sqrt(wᵀ K w)."""
        w = self.update_weights
        return torch.sqrt(torch.clamp(w @ self.gram @ w, min=0.0))

    def update_cos(self) -> Tensor:
        """cos(d, g_i) for each loss (0 where a norm is zero)."""
        den = self.update_norm * self.norms
        return torch.where(den > 0, self.update_dots / torch.clamp(den, min=1e-30), torch.zeros_like(den))

    def conflict_after(self) -> Tensor:
        """1.0 when the update d opposes some harmonized loss's gradient (d·g_i < 0), else 0.0.

        d·g_i = Σ_j w_j K_ij is a sum of terms that cancel when g1, g2 are nearly antiparallel (GH then
        makes d·g_i = ‖g_i‖² sin²θ ≈ 0), so rounding is tolerated relative to the terms' magnitude.
        """
        members = sorted({i for group in self.groups for i in group}) or list(range(self.gram.shape[0]))
        idx = torch.tensor(members, device=self.gram.device)
        tol = CONFLICT_RTOL * (self.gram.abs() @ self.update_weights.abs())
        return (self.update_dots[idx] < -tol[idx]).any().to(self.gram.dtype)

    @property
    def pair_gram(self) -> Tensor:
        """Inner products of the harmonized gradients, A K' Aᵀ (the paper's Fig. 12 "after")."""
        k = self.gram * torch.outer(self.trade_offs, self.trade_offs) if self.trade_off_before else self.gram
        return self.pair_coefs @ k @ self.pair_coefs.T

    def pair_conflict_after(self, i: int = 0, j: int = 1) -> Tensor:
        """1.0 when the harmonized pair ĝ_i, ĝ_j still meets at an obtuse angle (rounding tolerated)."""
        k = self.gram * torch.outer(self.trade_offs, self.trade_offs) if self.trade_off_before else self.gram
        a = self.pair_coefs
        tol = CONFLICT_RTOL * (a.abs() @ k.abs() @ a.abs().T)[i, j]
        return (self.pair_gram[i, j] < -tol).to(self.gram.dtype)


def trainable_params(params: Iterable[Tensor]) -> list[Tensor]:
    """The parameters that require a gradient, each once, in first-seen order."""
    out, seen = [], set()
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def default_groups(num_losses: int, harmonizer: Harmonizer) -> tuple[tuple[int, ...], ...]:
    """All losses form one group when the harmonizer accepts that many; otherwise nothing is harmonized."""
    if num_losses < 2:
        return ()
    if harmonizer.num_losses is None or harmonizer.num_losses == num_losses:
        return (tuple(range(num_losses)),)
    raise ValueError(
        f"{harmonizer.name} harmonizes {harmonizer.num_losses} losses but {num_losses} were given; "
        "pass `groups` to say which losses are harmonized together"
    )


def _coef_tensor(trade_offs: Sequence[float] | Tensor | None, m: int, like: Tensor) -> Tensor:
    coef_t = torch.as_tensor(1.0 if trade_offs is None else trade_offs, dtype=like.dtype, device=like.device)
    coef_t = coef_t.expand(m).clone() if coef_t.dim() == 0 else coef_t
    if coef_t.shape != (m,):
        raise ValueError(f"expected {m} coefficients, got {tuple(coef_t.shape)}")
    return coef_t


def _per_group(harmonizer: Harmonizer | Sequence[Harmonizer], n_groups: int) -> list[Harmonizer]:
    """One harmonizer per group: a single instance serves every group (fine for stateless methods);
    stateful ones (GradVac's EMA, ...) are given one instance per group by the caller."""
    if isinstance(harmonizer, Harmonizer):
        return [harmonizer] * n_groups
    harmonizers = list(harmonizer)
    if len(harmonizers) != n_groups:
        raise ValueError(f"expected one harmonizer per harmonized group ({n_groups}), got {len(harmonizers)}")
    return harmonizers


def gram_matrix(flat: Tensor) -> Tensor:
    """K = G Gᵀ of the ``(m, P)`` gradient rows, in float32 or wider and outside autocast.

    Under ``torch.autocast`` a matmul runs in bf16/fp16, which puts ~0.5 % of error into tau (the
    precision rule of DESIGN.md): the Gram matrix is always formed at full precision.
    """
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return work @ work.T


def harmonize_groups(
    gram: Tensor,
    harmonizer: Harmonizer | Sequence[Harmonizer],
    trade_offs: Tensor,
    groups: Sequence[Sequence[int]] | None,
    trade_off_before: bool,
    losses: Tensor | None = None,
) -> tuple[Tensor, Tensor, tuple[tuple[int, ...], ...]]:
    """tau (m,) and the block coefficient matrix A (m, m) for the given harmonized groups.

    ``harmonizer`` is one instance for every group, or a sequence with one instance per group (so a
    stateful method keeps one state per harmonized pair, e.g. GVB's two pairs). ``losses``: the (m,)
    detached loss values, given to the harmonizers that weight by them (``needs_losses``: FAMO, DB-MTL);
    with ``trade_off_before`` they see coef_i·L_i, as they see the Gram matrix of coef_i·g_i.
    """
    m = gram.shape[0]
    first = harmonizer if isinstance(harmonizer, Harmonizer) else next(iter(harmonizer))
    group_idx = default_groups(m, first) if groups is None else tuple(tuple(g) for g in groups)
    per_group = _per_group(harmonizer, len(group_idx))
    pair = torch.eye(m, dtype=gram.dtype, device=gram.device)
    seen: set[int] = set()
    for group, group_harmonizer in zip(group_idx, per_group, strict=True):
        if seen & set(group):
            raise ValueError(f"a loss appears in more than one harmonized group: {group_idx}")
        seen |= set(group)
        idx = torch.tensor(group, device=gram.device)
        sub = gram.index_select(0, idx).index_select(1, idx)
        c = trade_offs.index_select(0, idx) if trade_off_before else None
        if c is not None:
            sub = sub * torch.outer(c, c)
        if group_harmonizer.needs_losses:
            if losses is None:
                raise ValueError(f"{group_harmonizer.name} weights the losses by their values: pass `losses`")
            values = losses.index_select(0, idx)
            block = group_harmonizer.coefficients(sub, values if c is None else values * c)
        else:
            block = group_harmonizer.coefficients(sub)
        pair[idx.unsqueeze(1), idx.unsqueeze(0)] = block
    return pair.sum(dim=0), pair, group_idx


def loss_values(losses: Sequence[Tensor], harmonizer: Harmonizer | Sequence[Harmonizer]) -> Tensor | None:
    """The detached values of ``losses`` as one (m,) tensor, float32 or wider, when some harmonizer weights by
    them (``needs_losses``); None otherwise, so the Gram-only methods pay nothing. No host synchronisation."""
    members = [harmonizer] if isinstance(harmonizer, Harmonizer) else list(harmonizer)
    if not any(h.needs_losses for h in members):
        return None
    values = torch.stack([loss.detach().reshape(()) for loss in losses])
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def loss_gradients(
    losses: Sequence[Tensor], params: Sequence[Tensor], *, retain_graph: bool = False, batched: bool = False
) -> Tensor:
    """Per-loss gradients as one flat ``(m, P)`` buffer (rows follow ``losses``, columns ``params``).

    Uses ``torch.autograd.grad`` (which never triggers DDP's reducer and never touches ``.grad``);
    parameters a loss does not reach get zeros, so every row has the same layout. ``batched=True``
    takes all m gradients in one vmapped backward pass (``is_grads_batched``) instead of m passes.
    """
    numel = sum(p.numel() for p in params)
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise TypeError(f"all optimized parameters must share one dtype, got {sorted(map(str, dtypes))}")
    m = len(losses)
    flat = torch.empty(m, numel, dtype=params[0].dtype, device=params[0].device)
    if batched and all(loss.requires_grad for loss in losses):
        stacked = torch.stack(list(losses))
        eye = torch.eye(m, dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked, params, grad_outputs=eye, retain_graph=retain_graph, allow_unused=True, is_grads_batched=True
        )
        # a parameter no loss reaches has no gradient (materialized, it would lack the batch dimension):
        # its columns are zeros, as on the per-loss path
        rows = [
            torch.zeros(m, p.numel(), dtype=flat.dtype, device=flat.device) if g is None else g.reshape(m, -1)
            for g, p in zip(grads, params, strict=True)
        ]
        torch.cat(rows, dim=1, out=flat)
        return flat
    for i, loss in enumerate(losses):
        if not loss.requires_grad:  # e.g. a loss that is identically constant for this batch
            flat[i].zero_()
            continue
        keep = retain_graph or i < m - 1
        grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True, materialize_grads=True)
        torch.cat([g.reshape(-1) for g in grads], out=flat[i])
        del grads
    return flat


def harmonized_backward(
    losses: Sequence[Tensor],
    params: Iterable[Tensor],
    harmonizer: Harmonizer | Sequence[Harmonizer],
    *,
    trade_offs: Sequence[float] | Tensor | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    gram_params: Iterable[Tensor] | None = None,
    trade_off_before: bool = False,
    tau_applies_to: str = "all",
    reduce: Callable[[Tensor], Tensor] | None = None,
    retain_graph: bool = False,
    batched: bool = False,
    loss_scale: Tensor | float | None = None,
) -> GradStats:
    """Write the harmonized gradient of ``losses`` into ``p.grad`` (accumulating like ``backward``).

    Args:
        losses: scalar losses L_1..L_m, each reachable from (some of) ``params``.
        params: the parameters the optimizer will step; their ``.grad`` receives the update.
        harmonizer: maps the Gram matrix to weights tau; one instance, or one per group in ``groups``.
        trade_offs: trade-off coefficients (default 1). The update is Σ_i coef_i tau_i g_i.
        groups: which losses are harmonized together, as index tuples whose first index is loss "1"
            (GH++ favours it). Losses outside every group keep tau = 1. Default: all losses, one group.
        gram_params: the Gram scope (default: all ``params``). It may contain parameters outside
            ``params``: their gradients enter the Gram matrix but no ``.grad`` is written for them.
        trade_off_before: if True the harmonizer sees the Gram matrix of the *weighted* gradients coef_i g_i
            (the trade-off is applied before harmonization, which keeps GH's non-conflict guarantee);
            if False (official CDAN/GVB/DWL) it sees the raw gradients and coef_i multiplies afterwards.
        tau_applies_to: ``"all"`` (official: tau multiplies every parameter's gradient) or ``"gram_params"``
            (tau only on the Gram scope; parameters outside it, e.g. a discriminator, get Σ coef_i g_i).
        reduce: optional reduction of the flat ``(m, P)`` gradient buffer before the Gram matrix is
            formed (an all-reduce mean under DDP, so every rank computes the same tau); also applied to the
            loss values when a harmonizer weights by them (FAMO, DB-MTL).
        retain_graph: keep the graph after the last gradient (default False).
        batched: take the m gradients in one vmapped backward pass (``is_grads_batched``).
        loss_scale: a float16 GradScaler's scale S. The per-loss gradients are taken of S·L_i (so they
            do not underflow, as ``scaler.scale(loss).backward()`` would), the Gram matrix and tau are
            computed from the unscaled gradients, and ``.grad`` receives S·d for the scaler to unscale
            (and to skip when it overflowed).

    Returns:
        :class:`GradStats` with the Gram matrix, tau and coefficients (all detached, no host sync).
    """
    params = trainable_params(params)
    if not params:
        raise ValueError("harmonized_backward needs at least one parameter that requires grad")
    m = len(losses)
    if m == 0:
        raise ValueError("harmonized_backward needs at least one loss")
    if tau_applies_to not in TAU_APPLIES_TO:
        raise ValueError(f"tau_applies_to must be 'all' or 'gram_params', got {tau_applies_to!r}")
    device, dtype = params[0].device, params[0].dtype
    values = loss_values(losses, harmonizer)  # taken before anything rescales the losses

    # Column layout of the flat gradient buffer, chosen so every piece is one contiguous block:
    #   [Gram scope ∩ params | Gram scope only (probed, not updated) | params outside the scope]
    # The Gram scope may include parameters that this step does not update (MCD step B takes the Gram
    # over the generator while only the classifiers step).
    scope = params if gram_params is None else trainable_params(gram_params)
    scope_ids, param_ids = {id(p) for p in scope}, {id(p) for p in params}
    updated_scope = [p for p in scope if id(p) in param_ids]
    probe_only = [p for p in scope if id(p) not in param_ids]
    outside = [p for p in params if id(p) not in scope_ids]
    n_updated_scope = sum(p.numel() for p in updated_scope)
    n_scope = n_updated_scope + sum(p.numel() for p in probe_only)

    if loss_scale is not None:
        losses = [loss * loss_scale for loss in losses]
    flat = loss_gradients(losses, updated_scope + probe_only + outside, retain_graph=retain_graph, batched=batched)
    # Everything from here on is bookkeeping of exact numbers: never under autocast (see gram_matrix).
    with torch.autocast(device_type=device.type, enabled=False):
        if reduce is not None:
            flat = reduce(flat)
            values = values if values is None else reduce(values)  # the global batch's losses on every rank
        gram = gram_matrix(flat[:, :n_scope])
        if loss_scale is not None:
            gram = gram / torch.as_tensor(loss_scale, dtype=gram.dtype, device=gram.device) ** 2

        coef_t = _coef_tensor(trade_offs, m, flat)
        tau, pair, group_idx = harmonize_groups(gram, harmonizer, coef_t, groups, trade_off_before, values)

        # d = Σ_i w_i g_i, one matrix-vector product per block; views of it become each p.grad.
        w_all = coef_t * tau
        n_outside = flat.shape[1] - n_scope
        update = torch.empty(n_updated_scope + n_outside, dtype=dtype, device=device)
        if n_updated_scope:
            torch.mv(flat[:, :n_updated_scope].T, w_all, out=update[:n_updated_scope])
        if n_outside:
            w_rest = w_all if tau_applies_to == "all" else coef_t
            torch.mv(flat[:, n_scope:].T, w_rest, out=update[n_updated_scope:])
        del flat

    offset = 0
    for p in updated_scope + outside:
        n = p.numel()
        g = update[offset : offset + n].view_as(p)
        offset += n
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)
    return GradStats(
        gram=gram.detach(),
        tau=tau.detach(),
        trade_offs=coef_t,
        groups=group_idx,
        pair_coefs=pair.detach(),
        trade_off_before=trade_off_before,
    )


def feature_space_backward(
    losses: Sequence[Tensor],
    features: Tensor,
    harmonizer: Harmonizer | Sequence[Harmonizer],
    *,
    trade_offs: Sequence[float] | Tensor | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    trade_off_before: bool = False,
    tau_applies_to: str = "all",
    reduce_gram: Callable[[Tensor], Tensor] | None = None,
    reduce_losses: Callable[[Tensor], Tensor] | None = None,  # DDP: mean of the loss values (FAMO, DB-MTL)
    backward: Callable[[Tensor], None] | None = None,
    loss_scale: Tensor | float | None = None,
) -> GradStats:
    """Harmonize with the Gram matrix of gradients w.r.t. the shared batch ``features`` (approximate).

    The per-loss gradients dL_i/dz only traverse the heads above the features z, so they are cheap;
    then a single ordinary backward fills every ``.grad`` (``backward`` defaults to
    ``Tensor.backward``; Lightning passes ``manual_backward``, which keeps DDP's reducer in charge).
    With ``tau_applies_to="all"`` that backward is of Σ_i coef_i tau_i L_i; with ``"gram_params"`` it is of the plain
    Σ_i coef_i L_i while a hook on z replaces the gradient entering the feature extractor by
    Σ_i coef_i tau_i dL_i/dz, so only the parameters below z are reweighted. The angle is the
    feature-space angle, not the parameter-space one of the paper. Under DDP, ``reduce_gram`` combines
    the per-rank Gram matrices (samples are disjoint coordinates). With a float16 GradScaler, pass its
    scale as ``loss_scale`` and a ``backward`` that scales (Lightning's ``manual_backward`` does): the
    per-loss gradients are taken of the scaled losses and unscaled for the Gram matrix.
    """
    m = len(losses)
    if m == 0:
        raise ValueError("feature_space_backward needs at least one loss")
    values = loss_values(losses, harmonizer)
    if not features.requires_grad:
        raise ValueError("the shared features must be part of the autograd graph")
    rows = []
    for loss in losses:
        if loss.requires_grad:
            probed = loss if loss_scale is None else loss * loss_scale
            (gz,) = torch.autograd.grad(probed, features, retain_graph=True, allow_unused=True, materialize_grads=True)
        else:
            gz = torch.zeros_like(features)
        rows.append(gz.reshape(-1))
    if tau_applies_to not in TAU_APPLIES_TO:
        raise ValueError(f"tau_applies_to must be 'all' or 'gram_params', got {tau_applies_to!r}")
    # features under autocast are bf16/fp16: the geometry is computed in float32 outside autocast
    flat = torch.stack(rows)
    with torch.autocast(device_type=flat.device.type, enabled=False):
        flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        scale = None if loss_scale is None else torch.as_tensor(loss_scale, dtype=flat.dtype, device=flat.device)
        gram = gram_matrix(flat) if scale is None else gram_matrix(flat) / scale**2
        if reduce_gram is not None:
            gram = reduce_gram(gram)
        if reduce_losses is not None and values is not None:
            values = reduce_losses(values)
        coef_t = _coef_tensor(trade_offs, m, flat)
        tau, pair, group_idx = harmonize_groups(gram, harmonizer, coef_t, groups, trade_off_before, values)
        weighted_gz = None if tau_applies_to == "all" else ((coef_t * tau) @ flat).view_as(features)
    if weighted_gz is None:
        total = sum(w * loss for w, loss in zip(coef_t * tau, losses, strict=True))
        (backward or Tensor.backward)(total)
    else:
        handle = features.register_hook(lambda grad: weighted_gz.to(grad.dtype))
        try:
            (backward or Tensor.backward)(sum(c * loss for c, loss in zip(coef_t, losses, strict=True)))
        finally:
            handle.remove()
    return GradStats(
        gram=gram.detach(),
        tau=tau.detach(),
        trade_offs=coef_t,
        groups=group_idx,
        pair_coefs=pair.detach(),
        trade_off_before=trade_off_before,
        space="features",
    )


def three_pass_backward(
    losses: Sequence[Tensor],
    params: Iterable[Tensor],
    harmonizer: Harmonizer,
    *,
    trade_offs: Sequence[float] | None = None,
    gram_params: Iterable[Tensor] | None = None,
) -> Tensor:
    """The official GH procedure, kept as a reference for tests and benchmarks.

    backward(L_i) for each loss and read ``.grad`` over the Gram scope (zero-filled), compute tau, then
    backward(Σ_i coef_i tau_i L_i) over the retained graph: m + 1 backward passes. Leaves the result in
    ``p.grad`` (which it overwrites) and returns tau.
    """
    params = trainable_params(params)
    scope = params if gram_params is None else trainable_params(gram_params)
    touched = trainable_params([*params, *scope])
    trade_offs = [1.0] * len(losses) if trade_offs is None else list(trade_offs)
    rows = []
    for loss in losses:
        for p in touched:
            p.grad = None
        loss.backward(retain_graph=True)
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in scope]))
    flat = torch.stack(rows)
    tau = harmonizer.weights(gram_matrix(flat))
    for p in touched:
        p.grad = None
    total = sum(c * t * loss for c, t, loss in zip(trade_offs, tau, losses, strict=True))
    total.backward()
    return tau
