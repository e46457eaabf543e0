"""PGA's closure procedure against the official step, its first-order expansion and its limits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uda.errors import ConfigError
from uda.procedures import pga_backward, running_stats_frozen

N_CLS, M1, M2, WIDTH = 3, 2, 2, 4


class ToyPrompts(nn.Module):
    """PGA's shapes in small: a class-specific shared context and one context per domain (official ``LA/model.py``),
    read by a fixed nonlinear 'text tower' and classified against fixed image features."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dt = torch.float64
        self.ctx_cls = nn.Parameter(torch.randn(N_CLS, M1, WIDTH, generator=gen, dtype=dt) * 0.5)
        self.ctx_source = nn.Parameter(torch.randn(1, M2, WIDTH, generator=gen, dtype=dt) * 0.5)
        self.ctx_target = nn.Parameter(torch.randn(1, M2, WIDTH, generator=gen, dtype=dt) * 0.5)
        self.register_buffer("tower", torch.randn((M1 + M2) * WIDTH, 5, generator=gen, dtype=dt))
        self.register_buffer("x_source", torch.randn(6, 5, generator=gen, dtype=dt))
        self.register_buffer("x_target", torch.randn(6, 5, generator=gen, dtype=dt))
        self.register_buffer("y_source", torch.randint(0, N_CLS, (6,), generator=gen))
        self.register_buffer("y_target", torch.randint(0, N_CLS, (6,), generator=gen))

    def text(self, domain: torch.Tensor) -> torch.Tensor:
        prompts = torch.cat([self.ctx_cls, domain.repeat(N_CLS, 1, 1)], dim=1)
        return torch.tanh(prompts.reshape(N_CLS, -1) @ self.tower)  # couples the class and domain contexts

    def loss(self, name: str) -> torch.Tensor:
        if name == "target":
            return F.cross_entropy(self.x_target @ self.text(self.ctx_target).T, self.y_target)
        return F.cross_entropy(self.x_source @ self.text(self.ctx_source).T, self.y_source)

    # the official get/set helpers (``LA/model.py``): flattened clones; reading a gradient zeroes it
    def get_grad(self, p: nn.Parameter) -> torch.Tensor:
        grad = p.grad.data.clone().flatten()
        p.grad.zero_()
        return grad

    @staticmethod
    def set_param(p: nn.Parameter, flat: torch.Tensor) -> None:
        p.data = flat.data.clone().reshape(p.shape)


def official_step(model: ToyPrompts, radius: float, align: float, tradeoff: float) -> None:
    """A line-by-line transcription of the official step (``LA/main.py`` lines 222-326), writing ``.grad``."""
    shared_param = model.ctx_cls.data.clone().flatten()
    source_param = model.ctx_source.data.clone().flatten()
    target_param = model.ctx_target.data.clone().flatten()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.loss("target").backward()
    target_grad = model.get_grad(model.ctx_target)
    shared_grad_tgt = model.get_grad(model.ctx_cls)
    for p in model.parameters():
        p.grad.zero_()
    model.loss("source").backward()
    source_grad = model.get_grad(model.ctx_source)
    shared_grad_src = model.get_grad(model.ctx_cls)

    model.set_param(model.ctx_target, target_param + radius * target_grad / (torch.norm(target_grad) + 1e-12))
    model.set_param(
        model.ctx_cls,
        shared_param
        + radius * shared_grad_tgt / (torch.norm(shared_grad_tgt) + 1e-12)
        - align * shared_grad_src / (torch.norm(shared_grad_src) * torch.norm(shared_grad_tgt) + 1e-12),
    )
    model.loss("target").backward()
    target_grad = model.get_grad(model.ctx_target)
    shared_grad_tgt_new = model.get_grad(model.ctx_cls)

    model.set_param(model.ctx_source, source_param + radius * source_grad / (torch.norm(source_grad) + 1e-12))
    model.set_param(
        model.ctx_cls,
        shared_param
        + radius * shared_grad_src / (torch.norm(shared_grad_src) + 1e-12)
        - align * shared_grad_tgt / (torch.norm(shared_grad_tgt) * torch.norm(shared_grad_src) + 1e-12),
    )
    for p in model.parameters():
        p.grad.zero_()
    model.loss("source").backward()
    source_grad = model.get_grad(model.ctx_source)
    shared_grad_src_new = model.get_grad(model.ctx_cls)

    model.set_param(model.ctx_target, target_param)
    model.set_param(model.ctx_source, source_param)
    model.set_param(model.ctx_cls, shared_param)
    model.ctx_cls.grad = (shared_grad_tgt_new + shared_grad_src_new * tradeoff).reshape(model.ctx_cls.shape)
    model.ctx_target.grad = target_grad.reshape(model.ctx_target.shape)
    model.ctx_source.grad = source_grad.reshape(model.ctx_source.shape)


def ours(model: ToyPrompts, radius: float, align: float, tradeoff: float, **kw):
    losses = {"target": model.loss("target"), "source": model.loss("source")}
    return pga_backward(
        model.loss,
        losses,
        [model.ctx_cls],
        {"target": [model.ctx_target], "source": [model.ctx_source]},
        {"target": 1.0, "source": tradeoff},
        radius,
        align,
        **kw,
    )


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("radius", "align", "tradeoff"), [(3e-4, 1.0, 0.3), (0.5, 10.0, 0.5), (1e-3, 0.0, 2.0)])
def test_equals_the_official_two_loss_step(radius: float, align: float, tradeoff: float) -> None:
    reference, model = ToyPrompts(), ToyPrompts()
    official_step(reference, radius, align, tradeoff)
    ours(model, radius, align, tradeoff)
    expected = grads(reference)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=1e-9, msg=name)
    # and the official step changes the gradients at all (the comparison is not of two plain backwards)
    plain = ToyPrompts()
    ours(plain, 0.0, 0.0, tradeoff)
    assert not torch.allclose(plain.ctx_cls.grad, expected["ctx_cls"], rtol=1e-3)


def hvp(loss_fn, at: list[nn.Parameter], vectors: list[torch.Tensor], wrt: nn.Parameter) -> torch.Tensor:
    """∂/∂wrt ⟨∇_at L, v⟩ by double backward: the Hessian blocks (wrt, at) times v."""
    first = torch.autograd.grad(loss_fn(), at, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(first, vectors, strict=True))
    (second,) = torch.autograd.grad(dot, [wrt])
    return second


@pytest.mark.parametrize(("radius", "align"), [(1e-5, 0.0), (0.0, 1e-5), (2e-5, 1e-5)])
def test_small_steps_match_the_first_order_expansion(radius: float, align: float) -> None:
    lam = 0.3
    model = ToyPrompts(seed=1)
    sh, pt, ps = model.ctx_cls, model.ctx_target, model.ctx_source
    h_t, g_t = torch.autograd.grad(model.loss("target"), [sh, pt])
    h_s, g_s = torch.autograd.grad(model.loss("source"), [sh, ps])

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.norm()

    norms = h_s.norm() * h_t.norm()
    target = lambda: model.loss("target")  # noqa: E731
    source = lambda: model.loss("source")  # noqa: E731
    # shared ≈ h_T + λh_S + ρ[H_T^ss ĥ_T + H_T^sT ĝ_T + λ(H_S^ss ĥ_S + H_S^sS ĝ_S)]
    #          − a(H_T^ss h_S + λ H_S^ss h_T)/(‖h_S‖‖h_T‖)
    rho_part = hvp(target, [sh, pt], [unit(h_t), unit(g_t)], sh) + lam * hvp(
        source, [sh, ps], [unit(h_s), unit(g_s)], sh
    )
    align_part = (hvp(target, [sh], [h_s], sh) + lam * hvp(source, [sh], [h_t], sh)) / norms
    first_order = radius * rho_part - align * align_part
    # the private gradients: g_T' ≈ g_T + ρ(H_T^TT ĝ_T + H_T^Ts ĥ_T) − a H_T^Ts h_S/(‖h_S‖‖h_T‖)
    private_t = (
        radius * hvp(target, [sh, pt], [unit(h_t), unit(g_t)], pt) - align * hvp(target, [sh], [h_s], pt) / norms
    )

    ours(model, radius, align, lam)
    shared_change = model.ctx_cls.grad - (h_t + lam * h_s)
    private_change = model.ctx_target.grad - g_t
    torch.testing.assert_close(shared_change, first_order, rtol=0, atol=2e-3 * first_order.abs().max().item())
    torch.testing.assert_close(private_change, private_t, rtol=0, atol=2e-3 * private_t.abs().max().item())
    assert first_order.abs().max() > 1e-3 * (radius + align)  # the expansion's term is not negligible


def test_no_radius_and_no_align_is_the_plain_weighted_backward() -> None:
    lam = 0.3
    model, plain = ToyPrompts(), ToyPrompts()
    ours(model, 0.0, 0.0, lam)
    (plain.loss("target") + lam * plain.loss("source")).backward()
    torch.testing.assert_close(model.ctx_cls.grad, plain.ctx_cls.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(model.ctx_target.grad, plain.ctx_target.grad, rtol=1e-12, atol=1e-14)
    # the official private gradient of the source prompt is not multiplied by the trade-off
    torch.testing.assert_close(model.ctx_source.grad, plain.ctx_source.grad / lam, rtol=1e-12, atol=1e-14)


def test_without_private_parameters_it_is_the_weighted_backward_of_a_classic_stage() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))

    def loss(name: str) -> torch.Tensor:
        out = net(x)
        return F.cross_entropy(out, y) if name == "cls" else out.pow(2).mean()

    reference = copy.deepcopy(net)
    stats = pga_backward(
        loss, {"align": loss("align"), "cls": loss("cls")}, net.parameters(), {}, {"align": 0.5, "cls": 1.0}, 0.0, 0.0
    )
    out = reference(x)
    (0.5 * out.pow(2).mean() + F.cross_entropy(out, y)).backward()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    assert stats.gram.shape == (2, 2)


def test_parameters_are_restored_exactly_also_when_the_closure_fails() -> None:
    model = ToyPrompts()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ours(model, 0.7, 20.0, 0.5)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n

    def failing(name: str) -> torch.Tensor:
        raise RuntimeError("out of memory")

    losses = {"target": model.loss("target"), "source": model.loss("source")}
    with pytest.raises(RuntimeError, match="out of memory"):
        pga_backward(
            failing, losses, [model.ctx_cls], {"target": [model.ctx_target]}, {"target": 1, "source": 1}, 0.7, 20.0
        )
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_the_statistics_are_the_geometry_of_the_shared_gradients_at_theta() -> None:
    model = ToyPrompts()
    h_t = torch.autograd.grad(model.loss("target"), [model.ctx_cls])[0].flatten()
    h_s = torch.autograd.grad(model.loss("source"), [model.ctx_cls])[0].flatten()
    stats = ours(model, 1e-2, 1.0, 0.3)
    torch.testing.assert_close(stats.gram, torch.stack([h_t, h_s]) @ torch.stack([h_t, h_s]).T)
    cos = float(h_t @ h_s / (h_t.norm() * h_s.norm()))
    assert math.isclose(float(stats.cos(0, 1)), cos, rel_tol=1e-9)
    assert float(stats.conflict(0, 1)) == float(cos < 0)


def test_a_loss_without_gradient_drops_the_align_term_instead_of_dividing_by_epsilon() -> None:
    model, reference = ToyPrompts(), ToyPrompts()
    losses = {"target": model.loss("target") * 0.0, "source": model.loss("source")}
    pga_backward(
        lambda n: model.loss(n) * (0.0 if n == "target" else 1.0),
        losses,
        [model.ctx_cls],
        {"target": [model.ctx_target], "source": [model.ctx_source]},
        {"target": 1.0, "source": 0.5},
        1e-2,
        10.0,
    )
    # the source pass is then a SAM step of the source loss alone: θ_sh + ρ ĥ_S, θ_S + ρ ĝ_S
    h_s, g_s = torch.autograd.grad(reference.loss("source"), [reference.ctx_cls, reference.ctx_source])
    with torch.no_grad():
        reference.ctx_cls += 1e-2 * h_s / h_s.norm()
        reference.ctx_source += 1e-2 * g_s / g_s.norm()
    h_s2, g_s2 = torch.autograd.grad(reference.loss("source"), [reference.ctx_cls, reference.ctx_source])
    torch.testing.assert_close(model.ctx_cls.grad, 0.5 * h_s2)
    torch.testing.assert_close(model.ctx_source.grad, g_s2)
    assert torch.all(model.ctx_target.grad == 0)


@pytest.mark.parametrize(
    ("radius", "align", "message"),
    [
        (-1e-3, 1.0, r"radius rho=-0.001 is invalid: .* must be >= 0"),
        (1e-3, -1.0, r"align a=-1.0 is invalid"),
        (float("nan"), 1.0, r"radius rho=nan is invalid"),
    ],
)
def test_negative_radius_or_align_fails_in_one_sentence(radius: float, align: float, message: str) -> None:
    model = ToyPrompts()
    with pytest.raises(ConfigError, match=message) as err:
        ours(model, radius, align, 0.3)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)


def test_overlapping_groups_are_refused() -> None:
    model = ToyPrompts()
    losses = {"target": model.loss("target"), "source": model.loss("source")}
    with pytest.raises(ValueError, match="also in group 'shared'"):
        pga_backward(
            model.loss, losses, [model.ctx_cls], {"target": [model.ctx_cls]}, {"target": 1, "source": 1}, 0.1, 0.1
        )


def test_batch_norm_keeps_its_running_statistics_in_the_perturbed_passes() -> None:
    bn = nn.BatchNorm1d(3)
    with running_stats_frozen(bn):
        bn(torch.randn(8, 3) + 5.0)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and bn.momentum == 0.1
