"""The record's conflict counters and model selections, on hand-built gradient geometry and histories.

Expected flags come from the gradient vectors themselves (d = Σ w_i g_i and ĝ_i = Σ_j A_ij g_j formed
explicitly, then their dot products), never from the Gram-matrix formulas under test.
"""

from __future__ import annotations

import pytest
import torch

from uda.harmonizers.engine import GradStats
from uda.record import ConflictCounter, select

F64 = torch.float64


def stats_of(g: list[list[float]], tau=None, pair=None, coefs=None, groups=((0, 1),)) -> GradStats:
    """GradStats of the gradient rows ``g`` (Gram matrix G Gᵀ), as the engine would report them."""
    vectors = torch.tensor(g, dtype=F64)
    m = vectors.shape[0]
    pair_coefs = torch.eye(m, dtype=F64) if pair is None else torch.tensor(pair, dtype=F64)
    return GradStats(
        gram=vectors @ vectors.T,
        tau=pair_coefs.sum(0) if tau is None else torch.tensor(tau, dtype=F64),
        trade_offs=torch.ones(m, dtype=F64) if coefs is None else torch.tensor(coefs, dtype=F64),
        groups=groups,
        pair_coefs=pair_coefs,
    )


def flags_from_vectors(g: list[list[float]], pair=None, coefs=None) -> list[float]:
    """[1, g1·g2 < 0, d·g_i < 0 for some i, ĝ1·ĝ2 < 0] computed on the vectors (cases far from ties)."""
    vectors = torch.tensor(g, dtype=F64)
    m = vectors.shape[0]
    a = torch.eye(m, dtype=F64) if pair is None else torch.tensor(pair, dtype=F64)
    w = (torch.ones(m, dtype=F64) if coefs is None else torch.tensor(coefs, dtype=F64)) * a.sum(0)
    update = sum(w_i * g_i for w_i, g_i in zip(w, vectors, strict=True))
    harmonized = a @ vectors
    return [
        1.0,
        float(vectors[0] @ vectors[1] < 0),
        float(any(update @ g_i < 0 for g_i in vectors)),
        float(harmonized[0] @ harmonized[1] < 0),
    ]


def gh_pair(g: list[list[float]]) -> list[list[float]]:
    """GH's harmonized-gradient coefficients for two conflicting vectors: ĝ1 = g1 − (c/‖g2‖²) g2, ĝ2 mirrored."""
    g1, g2 = (torch.tensor(v, dtype=F64) for v in g)
    c = float(g1 @ g2)
    return [[1.0, -c / float(g2 @ g2)], [-c / float(g1 @ g1), 1.0]]


AGREE = [[1.0, 0.0], [1.0, 1.0]]  # acute: nothing conflicts
OBTUSE_PAIR_ONLY = [[1.0, 0.0], [-0.1, 1.0]]  # g1·g2 = -0.1, yet d = (0.9, 1) has d·g1 = 0.9, d·g2 = 0.91
OPPOSED = [[1.0, 0.0], [-2.0, 0.1]]  # g1·g2 = -2 and d = (-1, 0.1) has d·g1 = -1


@pytest.mark.parametrize(
    ("g", "pair", "expected"),
    [
        (AGREE, None, [1, 0, 0, 0]),
        (OBTUSE_PAIR_ONLY, None, [1, 1, 0, 1]),  # the pair is obtuse, the update is not
        (OPPOSED, None, [1, 1, 1, 1]),
        # GH on OPPOSED: ĝ1 = (0.0025, 0.0499), ĝ2 = (0, 0.1): ĝ1·ĝ2 = 0.005 > 0 and d = (0.0025, 0.15) opposes neither
        (OPPOSED, gh_pair(OPPOSED), [1, 1, 0, 0]),
    ],
    ids=["agree", "obtuse-pair-only", "opposed", "opposed-then-gh"],
)
def test_one_step_flags_match_the_vectors(g, pair, expected) -> None:
    assert flags_from_vectors(g, pair) == expected  # the hand-derived flags, checked on the vectors
    counter = ConflictCounter()
    counter.add(stats_of(g, pair=pair))
    assert counter.counts.tolist() == expected


def test_rates_over_several_steps_keep_after_and_pair_apart() -> None:
    counter = ConflictCounter()
    for g, pair in [(AGREE, None), (OBTUSE_PAIR_ONLY, None), (OBTUSE_PAIR_ONLY, None), (OPPOSED, gh_pair(OPPOSED))]:
        counter.add(stats_of(g, pair=pair))
    # 4 steps: conflicting before in 3, update opposing a loss in 0, pair still obtuse in 2
    assert counter.rates() == {
        "monitored_steps": 4,
        "conflict_rate": 0.75,
        "conflict_rate_after": 0.0,
        "pair_conflict_rate_after": 0.5,
    }
    counter.add(stats_of(OPPOSED))
    assert counter.rates() == {
        "monitored_steps": 5,
        "conflict_rate": 0.8,
        "conflict_rate_after": 0.2,
        "pair_conflict_rate_after": 0.6,
    }


def test_random_steps_agree_with_the_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    counter, expected = ConflictCounter(), torch.zeros(4, dtype=F64)
    for _ in range(40):
        g = torch.randn(2, 5, generator=gen, dtype=F64).tolist()
        coefs = (torch.rand(2, generator=gen, dtype=F64) + 0.1).tolist()
        pair = gh_pair(g) if torch.rand((), generator=gen) < 0.5 else None
        if pair is not None and torch.tensor(g[0], dtype=F64) @ torch.tensor(g[1], dtype=F64) >= 0:
            pair = None  # GH leaves an acute pair alone
        counter.add(stats_of(g, pair=pair, coefs=coefs))
        expected += torch.tensor(flags_from_vectors(g, pair, coefs), dtype=F64)
    assert counter.counts.tolist() == expected.tolist()
    assert 0 < expected[2] < expected[1]  # both kinds of step occurred: the comparison is not vacuous


@pytest.mark.parametrize(("excess", "counted"), [(1e-3, 1.0), (1e-4, 1.0), (1e-6, 0.0), (1e-11, 0.0)])
def test_update_conflict_tolerates_rounding_only(excess, counted) -> None:
    """K = [[1, c], [c, 2]] with c = -(1 + excess): d·g1 = 1 + c = -excess against terms of size ~2.

    A deficit of 1e-4 of the terms or more is a real conflict; 1e-6 and less is rounding (GH makes
    d·g_i = ‖g_i‖² sin²θ, a hair from zero for θ ≈ π). The tolerance is 1e-5 of the terms."""
    c = -(1.0 + excess)
    stats = GradStats(
        gram=torch.tensor([[1.0, c], [c, 2.0]], dtype=F64),
        tau=torch.ones(2, dtype=F64),
        trade_offs=torch.ones(2, dtype=F64),
        groups=((0, 1),),
        pair_coefs=torch.eye(2, dtype=F64),
    )
    counter = ConflictCounter()
    counter.add(stats)
    assert counter.counts.tolist() == [1.0, 1.0, counted, 1.0]


@pytest.mark.parametrize(("deficit", "counted"), [(1e-3, 1.0), (1e-4, 1.0), (1e-6, 0.0), (1e-11, 0.0)])
def test_pair_conflict_tolerates_rounding_only(deficit, counted) -> None:
    """g1 = (1, 0), g2 = (-1, 1), ĝ1 = g1 + a·g2, ĝ2 = g2: ĝ1·ĝ2 = -1 + 2a = -2·deficit for a = 1/2 - deficit,
    against terms |g1·g2| + a‖g2‖² ≈ 2: counted from a deficit of 1e-4 of them, tolerated at 1e-6."""
    g = [[1.0, 0.0], [-1.0, 1.0]]
    a = 0.5 - deficit
    counter = ConflictCounter()
    counter.add(stats_of(g, pair=[[1.0, a], [0.0, 1.0]]))
    assert counter.counts[3].item() == counted


def test_the_pair_of_the_requested_group_is_counted() -> None:
    # losses 0, 1 agree; losses 2, 3 conflict (the second harmonized group, whose first loss is 3)
    g = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, -2.0]]
    stats = stats_of(g, groups=((0, 1), (3, 2)))
    first, second = ConflictCounter(), ConflictCounter()
    first.add(stats, 0)
    second.add(stats, 1)
    assert first.counts[1].item() == 0.0 and second.counts[1].item() == 1.0
    # A = I leaves the pair (3, 2) obtuse: ĝ3·ĝ2 = g3·g2 = -2
    assert second.counts[3].item() == 1.0


def test_counts_accumulate_in_place_without_a_host_read_and_start_empty() -> None:
    buffer = torch.zeros(4, dtype=F64)
    counter = ConflictCounter(buffer)
    assert counter.rates() == {
        "monitored_steps": 0,
        "conflict_rate": None,
        "conflict_rate_after": None,
        "pair_conflict_rate_after": None,
    }
    counter.add(stats_of(OPPOSED))
    assert buffer.tolist() == [1.0, 1.0, 1.0, 1.0]  # the caller's tensor (e.g. a module buffer) holds the counts
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ConflictCounter(torch.zeros(3, dtype=F64))


def record(iteration: int, target: float, source: float | None = None) -> dict:
    out = {"iteration": iteration, "target/acc": target}
    if source is not None:
        out["source/acc"] = source
    return out


def test_select_with_distinct_values() -> None:
    history = [record(2, 0.50, 0.70), record(4, 0.80, 0.60), record(6, 0.60, 0.90), record(8, 0.55, 0.65)]
    chosen = select(history)
    assert chosen["last"]["iteration"] == 8
    assert chosen["best_target"]["iteration"] == 4
    assert chosen["source_val"]["iteration"] == 6  # the best source accuracy, not the worst (iteration 4)


def test_select_on_ties_takes_the_first_best_target_and_the_latest_best_source() -> None:
    history = [record(2, 0.70, 0.90), record(4, 0.80, 0.50), record(6, 0.60, 0.90), record(8, 0.80, 0.85)]
    chosen = select(history)
    assert chosen["best_target"]["iteration"] == 4
    assert chosen["source_val"]["iteration"] == 6
    assert chosen["last"]["iteration"] == 8


def test_select_skips_records_without_source_accuracy() -> None:
    history = [record(2, 0.5, 0.9), record(4, 0.6), {**record(6, 0.7), "source/acc": None}]
    assert select(history)["source_val"]["iteration"] == 2
    assert select([record(2, 0.5), record(4, 0.6)])["source_val"] is None
    assert select([]) == {"last": None, "best_target": None, "source_val": None}


def test_the_pair_is_the_first_two_losses_of_a_larger_group() -> None:
    # losses 0, 1 agree, loss 2 conflicts with both: a three-loss group counts the pair (0, 1) only
    g = [[1.0, 0.0], [1.0, 1.0], [-1.0, -0.5]]
    counter = ConflictCounter()
    counter.add(stats_of(g, groups=((0, 1, 2),)))
    assert counter.counts[1].item() == 0.0
    reordered = ConflictCounter()
    reordered.add(stats_of(g, groups=((2, 0, 1),)))
    assert reordered.counts[1].item() == 1.0


def test_counts_are_float64_and_accept_stats_of_another_precision() -> None:
    assert ConflictCounter().counts.dtype == torch.float64  # exact counts however long the run
    single = torch.zeros(4, dtype=torch.float32)  # e.g. a buffer cast along with a module
    ConflictCounter(single).add(stats_of(OPPOSED))  # float64 statistics added into float32 counts
    assert single.tolist() == [1.0, 1.0, 1.0, 1.0]
