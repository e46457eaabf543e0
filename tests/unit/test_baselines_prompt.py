"""The CLIP prompt baselines (zeroshot_clip, coop, dapl, prograd) on the tiny random CLIP: what they train, their
losses against independent formulas, ProGrad's update against paper Eq. 4, and their one-sentence failures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uda.baselines.base import UDABatch
from uda.baselines.coop import CoOp
from uda.baselines.dapl import DAPL, confident_pseudo_labels, masked_cross_entropy
from uda.baselines.prograd import ProGradCoOp, soft_cross_entropy
from uda.baselines.zeroshot_clip import ZeroShotCLIP
from uda.errors import ConfigError
from uda.harmonizers import GH, ProGrad
from uda.harmonizers.engine import harmonized_backward
from uda.models import LeNet
from uda.models.clip import ClipBackbone
from uda.models.prompt import ZeroShotHead, clip_logits

DIGITS = tuple(str(d) for d in range(10))
DOMAINS = ("mnist", "uci")


@pytest.fixture(scope="module")
def clip() -> ClipBackbone:
    torch.manual_seed(0)
    return ClipBackbone("tiny", pretrained=None)


def batch(n: int = 8, seed: int = 0) -> UDABatch:
    g = torch.Generator().manual_seed(seed)
    x_source, x_target = torch.randn(2, n, 1, 28, 28, generator=g)
    return UDABatch(x_source, torch.arange(n) % 10, x_target)


def build(name: str, clip: ClipBackbone, **kwargs):
    common = {"dataset_class_names": DIGITS, "n_ctx": 4}
    if name == "coop":
        return CoOp(clip, 10, **common, **kwargs)
    if name == "dapl":  # threshold 0 by default here: the random CLIP is never confident
        kwargs = {"threshold": 0.0, **kwargs}
        return DAPL(clip, 10, dataset_domains=DOMAINS, n_domain_ctx=2, **common, **kwargs)
    return ProGradCoOp(clip, 10, **{**common, "init": None}, **kwargs)


@pytest.mark.parametrize("name", ["coop", "dapl", "prograd"])
def test_only_the_prompt_vectors_are_trained(clip, name) -> None:
    baseline = build(name, clip)
    groups = baseline.optimizer_groups()
    assert list(groups) == ["main"] and groups["main"]["backbone"] == []
    trained = groups["main"]["heads"]
    prompt_ids = {id(p) for p in baseline.prompt.parameters()}
    assert trained and {id(p) for p in trained} == prompt_ids
    assert not any(p.requires_grad for p in baseline.backbone.parameters())
    out = baseline.compute_losses("main", batch(), 0)
    assert set(out.losses) == set(baseline.stages[0].trade_offs)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in baseline.backbone.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in trained)


def test_zeroshot_clip_trains_nothing_and_predicts_with_the_template(clip) -> None:
    baseline = ZeroShotCLIP(clip, 10, dataset_class_names=DIGITS)
    assert baseline.stages == () and baseline.optimizer_groups()["main"]["heads"] == []
    x = torch.randn(5, 1, 28, 28)
    text = clip.model.encode_text(clip.tokenize([f"a photo of a {d}." for d in DIGITS]))
    torch.testing.assert_close(baseline.predict(x), clip_logits(clip(x), text, clip.logit_scale), atol=1e-5, rtol=0)


def test_class_names_come_from_the_dataset_and_bad_ones_are_one_sentence(clip) -> None:
    named = CoOp(clip, 10, n_ctx=1, class_names=[f"Digit_{d}" for d in DIGITS], dataset_class_names=DIGITS)
    assert named.class_names[3] == "digit 3" and named.prompt.tokens.texts[3] == "X digit 3."
    assert CoOp(clip, 10, n_ctx=1, dataset_class_names=DIGITS).prompt.tokens.texts[0] == "X 0."
    with pytest.raises(
        ConfigError, match=r"baseline.class_names has 9 names but the dataset has 10 classes; give one name per class"
    ):
        CoOp(clip, 10, class_names=DIGITS[:9], dataset_class_names=DIGITS)
    with pytest.raises(ConfigError, match=r"has repeated names \['alarm clock'\]; every class needs its own name"):
        CoOp(clip, 2, class_names=["Alarm_Clock", "alarm clock"])
    with pytest.raises(ConfigError, match=r"the dataset gives no class names for the prompts; pass baseline.class"):
        CoOp(clip, 10)
    with pytest.raises(ConfigError, match=r"baseline=coop prompts CLIP's text tower, but the backbone is LeNet; use"):
        CoOp(LeNet(), 10, dataset_class_names=DIGITS)
    with pytest.raises(ConfigError, match=r"engine.gram_scope=backbone is empty for coop: the CLIP towers are frozen"):
        build("coop", clip).scope_parameters("backbone")


def test_prograd_losses_match_the_papers_definitions(clip) -> None:
    baseline = build("prograd", clip, temperature=2.0)
    b = batch()
    out = baseline.compute_losses("main", b, 0)
    features = clip(b.x_source)
    student = baseline.logits(features)
    teacher_text = clip.model.encode_text(clip.tokenize([f"a photo of a {d}." for d in DIGITS]))
    teacher = clip_logits(features, teacher_text, clip.logit_scale)
    torch.testing.assert_close(out.losses["cls"], F.cross_entropy(student, b.y_source))
    # soft CE = (KL(q || p) + H(q)) · T² at T = 2 (Eq. 3 up to the teacher's entropy)
    q, log_p = F.softmax(teacher / 2, dim=1), F.log_softmax(student / 2, dim=1)
    kl = F.kl_div(log_p, q, reduction="batchmean")
    entropy = -(q * q.log()).sum(dim=1).mean()
    torch.testing.assert_close(out.losses["kl"], (kl + entropy) * 4, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["conflict", "aligned"])
def test_prograd_update_is_paper_eq4(clip, case) -> None:
    """The declared stage + the prograd harmonizer (keep_anchor=false) give G_d, or G_d − λ(G_d·G_g/‖G_g‖²)G_g."""
    lam, temperature = 0.7, 1.0
    baseline = build("prograd", clip)
    stage = baseline.stages[0]
    names = list(stage.trade_offs)
    groups = [[names.index(n) for n in group] for group in stage.harmonize]
    assert groups == [[0, 1]] and names == ["cls", "kl"] and stage.trade_off == "after"
    params = baseline.optimizer_groups()["main"]["heads"]
    assert len(params) == 1  # one prompt tensor: ProGrad's per-tensor rule is the global one
    b = batch()
    features = baseline.image_features(b.x_source)
    # a teacher that moves the label's mass to the other classes (conflict: per sample, its logit-space gradient
    # p - q is -p_y/(1 - p_y) times the cross-entropy's p - e_y), or onto the label (aligned: q ~ e_y)
    with torch.no_grad():
        shift = F.one_hot(b.y_source, 10).float() * (-12.0 if case == "conflict" else 12.0)
        teacher = baseline.logits(features) + shift

    def losses() -> list[torch.Tensor]:
        student = baseline.logits(features)
        return [F.cross_entropy(student, b.y_source), soft_cross_entropy(student, teacher, temperature)]

    ce, kl = losses()
    (g_d,) = torch.autograd.grad(ce, params, retain_graph=True)
    (g_g,) = torch.autograd.grad(kl, params)
    dot = (g_d * g_g).sum()
    assert bool(dot < 0) == (case == "conflict")  # the setting exercises the intended branch of Eq. 4
    expected = g_d - lam * dot / g_g.square().sum() * g_g if dot < 0 else g_d
    stats = harmonized_backward(
        losses(),
        params,
        ProGrad(lam, keep_anchor=False),
        trade_offs=[stage.trade_offs[n] for n in names],
        groups=groups,
        trade_off_before=stage.trade_off == "before",
        tau_applies_to=stage.tau_applies_to,
        gram_params=baseline.scope_parameters("official", stage.name),
    )
    torch.testing.assert_close(params[0].grad, expected, atol=1e-7, rtol=1e-5)
    tau2 = -lam * min(float(dot), 0.0) / float(g_g.double().square().sum())
    assert stats.tau.tolist() == pytest.approx([1.0, tau2], rel=1e-5)
    if case == "conflict":  # λ < 1: the update still opposes the KL gradient, by (1 − λ) of the conflict
        assert float((params[0].grad * g_g).sum()) == pytest.approx((1 - lam) * float(dot), rel=1e-4)


def test_dapl_pseudo_labels_and_masked_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.0, 3.0, 0.0]])
    labels, mask = confident_pseudo_labels(logits, temperature=1.0, threshold=0.5)
    # softmax maxima: e²/(e²+2) = 0.787, 0.367, e³/(e³+2) = 0.909
    assert labels.tolist() == [0, 2, 1] and mask.tolist() == [True, False, True]
    _, mask_hot = confident_pseudo_labels(logits, temperature=0.1, threshold=0.5)  # sharper: all confident
    assert mask_hot.all()
    student = torch.randn(3, 3, requires_grad=True)
    by_hand = (F.cross_entropy(student[0:1], labels[0:1]) + F.cross_entropy(student[2:3], labels[2:3])) / 2
    torch.testing.assert_close(masked_cross_entropy(student, labels, mask), by_hand)
    none = masked_cross_entropy(student, labels, torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert float(none.detach()) == 0.0 and torch.equal(student.grad, torch.zeros(3, 3))  # no NaN on an empty mask


def test_dapl_prompts_losses_and_harmonized_group(clip) -> None:
    baseline = build("dapl", clip)
    stage = baseline.stages[0]
    assert stage.harmonize == (("target", "source"),) and stage.tau_applies_to == "gram_params"
    assert stage.trade_offs == {"target": 1.0, "source": 1.0}
    shared = baseline.scope_parameters("official", "main")
    assert [id(p) for p in shared] == [id(baseline.prompt.shared.vectors)]
    assert baseline.prompt.tokens[1].texts[0].endswith("X 0, a uci image.")
    b = batch()
    out = baseline.compute_losses("main", b, 0)
    source_ctx, target_ctx = (d.vectors for d in baseline.prompt.domains)
    # each domain context is reached by its own loss only; the shared one by both
    every = [source_ctx, target_ctx, *shared]
    g_t = torch.autograd.grad(out.losses["target"], every, retain_graph=True, allow_unused=True)
    g_s = torch.autograd.grad(out.losses["source"], every, retain_graph=True, allow_unused=True)
    assert g_t[0] is None and g_s[1] is None
    assert all(g is not None and g.abs().sum() > 0 for g in (g_t[1], g_t[2], g_s[0], g_s[2]))
    # threshold 0: every target sample is pseudo-labelled by zero-shot CLIP
    zs = ZeroShotHead(clip, DIGITS)(clip(b.x_target), clip.logit_scale)
    target_logits = clip_logits(clip(b.x_target), baseline.prompt(clip, 1), clip.logit_scale)
    torch.testing.assert_close(out.losses["target"], F.cross_entropy(target_logits, zs.argmax(1)))
    assert float(out.metrics["pseudo_label_rate"]) == 1.0
    # GH on the pair: tau reaches only the shared prompt; each domain prompt keeps its own gradient
    stats = harmonized_backward(
        [out.losses["target"], out.losses["source"]],
        baseline.optimizer_groups()["main"]["heads"],
        GH(),
        groups=[[0, 1]],
        gram_params=shared,
        tau_applies_to=stage.tau_applies_to,
    )
    torch.testing.assert_close(source_ctx.grad, g_s[0])
    torch.testing.assert_close(target_ctx.grad, g_t[1])
    expected_shared = stats.tau[0] * g_t[2] + stats.tau[1] * g_s[2] if stats.conflict() else g_t[2] + g_s[2]
    torch.testing.assert_close(shared[0].grad, expected_shared.to(shared[0].dtype), atol=1e-7, rtol=1e-4)


def test_dapl_evaluation_prompts_and_bad_values(clip) -> None:
    x = torch.randn(4, 1, 28, 28)
    ensemble = build("dapl", clip, predict_with="ensemble")
    features = clip(x)
    probs = [clip_logits(features, ensemble.prompt(clip, d), clip.logit_scale).softmax(1) for d in (0, 1)]
    torch.testing.assert_close(ensemble.predict(x), (probs[0] + probs[1]) / 2)
    ensemble.predict_with = "target"
    torch.testing.assert_close(ensemble.predict(x), clip_logits(features, ensemble.prompt(clip, 1), clip.logit_scale))
    with pytest.raises(ConfigError, match=r"baseline.predict_with='both' is unknown; choose one of: target, source"):
        build("dapl", clip, predict_with="both")
    with pytest.raises(ConfigError, match=r"dapl needs the source and target domain names for its prompts"):
        DAPL(clip, 10, dataset_class_names=DIGITS)
    with pytest.raises(ConfigError, match=r"baseline.threshold=1.5 is outside \[0, 1\]"):
        build("dapl", clip, threshold=1.5)


@pytest.mark.parametrize("cached", [False, True])
def test_the_per_image_features_are_one_modules_output_cached_or_not(clip, cached) -> None:
    """Feature analyses hook the last module of shared_scope: the frozen image features, also when cached."""
    from uda.analysis import predict_with_features

    baseline = build("dapl", clip, cache_image_features=cached)
    module = baseline.get_submodule(baseline.shared_scope[-1])
    x = torch.randn(6, 1, 28, 28)
    for _ in range(2):  # the second pass is served from the cache when it is on
        features, logits = predict_with_features(baseline.predict, module, x)
        torch.testing.assert_close(features, clip(x), atol=1e-6, rtol=0)
        assert logits.shape == (6, 10)
    assert baseline.cache_metrics() == ({"feature_cache_hit_rate": 0.5} if cached else {})


def test_prograd_selects_its_harmonizer_and_the_command_line_wins(train_cfg) -> None:
    cfg = train_cfg("baseline=prograd", "backbone=clip_tiny")
    assert cfg.harmonizer._target_ == "uda.harmonizers.ProGrad" and cfg.harmonizer.keep_anchor is False
    assert cfg.harmonizer.lam == 1.0 and cfg.baseline.init == "a photo of a" and cfg.baseline.n_ctx == 16
    assert train_cfg("baseline=prograd", "harmonizer=gh").harmonizer._target_ == "uda.harmonizers.GH"
    assert train_cfg("baseline=prograd", "harmonizer.lam=0.8").harmonizer.lam == 0.8
    assert train_cfg("baseline=dapl").harmonizer._target_ == "uda.harmonizers.GHPP"  # the project default
    assert train_cfg("baseline=cdan").harmonizer._target_ == "uda.harmonizers.GHPP"
