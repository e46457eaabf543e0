"""PGA's closure procedure: gradients re-evaluated at perturbed parameters, then one combined update.

Prompt Gradient Alignment (Phan et al., NeurIPS 2024; the official code calls it LAPA). One step of the official
``LA/main.py`` (lines 222-326; ``DAPrompt/trainers/lapa.py`` is the same arithmetic) for the target loss L_T and the
source loss L_S, with the shared parameters θ_sh and each loss's private parameters θ_T, θ_S (ρ = ``radius``,
a = ``align``, λ = the source trade-off, ε = 1e-12)::

    h_i = ∇_sh L_i(θ),  g_i = ∇_i L_i(θ)                                       (two backward passes at θ)
    target pass at  θ_T + ρ g_T/(‖g_T‖+ε),  θ_sh + ρ h_T/(‖h_T‖+ε) − a h_S/(‖h_S‖‖h_T‖+ε)  ->  g_T', h_T'
    source pass at  θ_S + ρ g_S/(‖g_S‖+ε),  θ_sh + ρ h_S/(‖h_S‖+ε) − a h_T/(‖h_T‖‖h_S‖+ε)  ->  g_S', h_S'
    restore θ;  grad θ_sh = h_T' + λ h_S',  grad θ_T = g_T',  grad θ_S = g_S'

Every norm is of ONE flattened parameter group (the shared group alone, or one loss's private group alone). Both
perturbed passes start from the ORIGINAL θ_sh; the private gradients are the perturbed-point ones and are not
multiplied by the trade-off.

Generalised here to m losses with trade-offs c_i (what a training stage declares): the pass of loss i moves θ_sh by
ρ ĥ_i − a Σ_{j≠i} h_j/(‖h_j‖‖h_i‖+ε) (MPGA's ``main_multi.py`` sums the align terms the same way) and its own private
group by ρ ĝ_i; the shared gradient is Σ_i c_i h_i'. For [target, source] with trade-offs (1, λ) this is the official
rule; a stage without private parameters (CDAN+E's [align, cls], every parameter shared) is the same step with the
private groups empty. First order (``reference/prompt_methods.md``): the ρ part is the gradient of a gradient-norm
penalty (flat minima), the a part pushes ⟨h_S, h_T⟩ up (alignment).

One deliberate difference: where ‖h_i‖‖h_j‖ is exactly zero (a batch with no confident pseudo-label gives the target
loss a zero gradient), the align term is dropped; the official arithmetic would divide by ε and move θ_sh by
a·‖h_j‖·1e12 (the official losses are NaN on such a batch instead).

Plain PyTorch: ``torch.autograd.grad`` only (no ``.backward()``, so a DDP reducer is never triggered); ``reduce``
all-reduces each flat gradient for data parallelism.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from uda.errors import ConfigError
from uda.harmonizers.engine import GradStats, gram_matrix, trainable_params

#: the official ε in every normalization (``LA/main.py``: ``torch.norm(g) + 1e-12``)
EPS = 1e-12


def check_pga_settings(radius: float, align: float) -> None:
    """Validate ρ and a once, where they are owned (the baseline's config and the procedure)."""
    if not radius >= 0:  # also refuses NaN
        raise ConfigError(
            f"PGA's radius rho={radius} is invalid: it is the length of a perturbation and must be >= 0 (official "
            "Office-Home: 3e-4; 0 turns the gradient-norm term off)"
        )
    if not align >= 0:
        raise ConfigError(
            f"PGA's align a={align} is invalid: it must be >= 0 (official Office-Home: 1, ImageCLEF: 10; 0 turns the "
            "alignment term off)"
        )


def _flat_grad(loss: Tensor, params: Sequence[Tensor], retain_graph: bool) -> Tensor:
    """∇loss over ``params`` as one flat vector (zeros where the loss does not reach a parameter)."""
    if not params:
        return loss.new_zeros(0)
    if not loss.requires_grad:
        return torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


def _assign(params: Sequence[Tensor], flat: Tensor) -> None:
    """Copy the flat vector into ``params`` in place (no autograd record)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def _flatten(params: Sequence[Tensor]) -> Tensor:
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.zeros(0)


def _split(flat: Tensor, sizes: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(shared part, private part) of one loss's flat gradient."""
    return flat[: sizes[0]], flat[sizes[0] : sizes[0] + sizes[1]]


def pga_backward(
    closure: Callable[[str], Tensor],
    losses: Mapping[str, Tensor],
    shared: Iterable[Tensor],
    private: Mapping[str, Iterable[Tensor]],
    trade_offs: Mapping[str, float],
    radius: float,
    align: float,
    *,
    eps: float = EPS,
    reduce: Callable[[Tensor], Tensor] | None = None,
    loss_scale: Tensor | float | None = None,
) -> GradStats:
    """Write PGA's update into ``.grad`` (accumulating like ``backward``) and restore every parameter exactly.

    Args:
        closure: ``closure(name)`` re-evaluates the loss ``name`` at the parameters' current values (called once
            per loss, at that loss's perturbed point; it must not step anything). Frozen inputs such as cached
            image features may be reused inside it.
        losses: the losses at θ, with their graphs, in the stage's order (for PGA: ``target`` then ``source``).
        shared: θ_sh, the parameters every loss reaches (one flattened group for every norm).
        private: each loss's own parameters (one flattened group per loss; missing or empty = none). They must
            not overlap the shared group or each other; a loss's gradient on another loss's private group is not used.
        trade_offs: c_i per loss; the shared gradient is Σ_i c_i h_i' (official: target 1, source λ).
        radius: ρ >= 0; align: a >= 0 (see the module docstring).
        eps: ε of every normalization (official 1e-12).
        reduce: applied to every flat gradient before it is used (e.g. a DDP all-reduce mean).
        loss_scale: a GradScaler's scale S: gradients are computed from the unscaled losses (so ρ and a mean the
            same with and without AMP) and ``.grad`` receives S times the update, for the scaler to unscale.

    Returns:
        The geometry of the shared gradients h_i at θ (``gram``, ``cos()``, ``conflict()``), as the engine's
        :class:`~uda.harmonizers.engine.GradStats` with tau = 1 and the trade-offs as coefficients; the step itself
        is Σ c_i h_i' at the perturbed points, so ``update_*`` describe its ρ = a = 0 limit.
    """
    check_pga_settings(radius, align)
    names = list(losses)
    if not names:
        raise ValueError("pga_backward needs at least one loss")
    unknown = sorted(set(private) - set(names)) + sorted(set(trade_offs) ^ set(names))
    if unknown:
        raise ValueError(f"private parameters and trade-offs must name exactly the losses {names}; got {unknown}")
    shared_params = trainable_params(shared)
    private_params = {n: trainable_params(private.get(n, ())) for n in names}
    owner: dict[int, str] = {id(p): "shared" for p in shared_params}
    for n in names:
        for p in private_params[n]:
            if id(p) in owner:
                raise ValueError(f"a private parameter of loss {n!r} is also in group {owner[id(p)]!r}")
            owner[id(p)] = n
    if not shared_params:
        raise ValueError("pga_backward needs shared parameters (the group every loss reaches)")

    reduce_fn = reduce if reduce is not None else (lambda t: t)
    sizes = {n: (sum(p.numel() for p in shared_params), sum(p.numel() for p in private_params[n])) for n in names}

    # step 2: h_i and g_i at θ (one backward pass per loss; the graphs may share a trunk)
    h: dict[str, Tensor] = {}
    g: dict[str, Tensor] = {}
    for k, n in enumerate(names):
        flat = _flat_grad(losses[n], shared_params + private_params[n], retain_graph=k < len(names) - 1)
        h[n], g[n] = _split(reduce_fn(flat), sizes[n])

    # step 1 (saved before anything moves): θ_sh and every private group, flattened
    theta_sh = _flatten(shared_params).to(h[names[0]])
    theta_priv = {n: _flatten(private_params[n]).to(h[names[0]]) for n in names}

    # steps 3-4: each loss's pass from the ORIGINAL θ, restoring after it
    h_norm = {n: torch.linalg.vector_norm(h[n]) for n in names}
    h_new: dict[str, Tensor] = {}
    g_new: dict[str, Tensor] = {}
    for n in names:
        with torch.no_grad():
            step = radius * h[n] / (h_norm[n] + eps)
            for j in names:
                if j == n:
                    continue
                den = h_norm[j] * h_norm[n]
                # official: a h_j / (‖h_j‖‖h_i‖ + ε); dropped where a norm is exactly zero (module docstring)
                coef = torch.where(den > 0, align / (den + eps), torch.zeros_like(den))
                step = step - coef * h[j]
            _assign(shared_params, theta_sh + step)
            if private_params[n]:
                _assign(private_params[n], theta_priv[n] + radius * g[n] / (torch.linalg.vector_norm(g[n]) + eps))
        try:
            perturbed = closure(n)
            flat = _flat_grad(perturbed, shared_params + private_params[n], retain_graph=False)
        finally:  # step 5: restore (bitwise: the saved values are copied back)
            _assign(shared_params, theta_sh)
            _assign(private_params[n], theta_priv[n])
        h_new[n], g_new[n] = _split(reduce_fn(flat), sizes[n])

    # step 5: grad θ_sh = Σ c_i h_i', grad θ_i = g_i' (not multiplied by c_i)
    scale = 1.0 if loss_scale is None else loss_scale
    with torch.no_grad():
        shared_grad = sum(float(trade_offs[n]) * h_new[n] for n in names) * scale
        _accumulate(shared_params, shared_grad)
        for n in names:
            _accumulate(private_params[n], g_new[n] * scale)

    with torch.autocast(device_type=theta_sh.device.type, enabled=False):
        gram = gram_matrix(torch.stack([h[n] for n in names])).detach()
    m = len(names)
    coefs = torch.tensor([float(trade_offs[n]) for n in names], dtype=gram.dtype, device=gram.device)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    # positional: the field names of GradStats are being renamed (coefs -> trade_offs), their order is not
    return GradStats(gram, torch.ones(m, dtype=gram.dtype, device=gram.device), coefs, (tuple(range(m)),), eye)


def _accumulate(params: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
        if p.grad is None:
            p.grad = grad
        else:
            p.grad.add_(grad)


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Batch-norm layers keep their running statistics during the perturbed passes (official
    ``disable_running_stats``: momentum 0), so a closure re-run does not count a batch twice."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum
