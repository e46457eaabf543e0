"""The PGA baseline on the tiny random CLIP: its parameter groups, pseudo-labels (fixed and online), evaluation,
the closure it gives the PGA procedure, and its one-sentence failures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uda.baselines.base import UDABatch
from uda.baselines.dapl import masked_cross_entropy
from uda.baselines.pga import PGA
from uda.errors import ConfigError
from uda.models.clip import ClipBackbone
from uda.models.prompt import clip_logits
from uda.procedures import pga_backward

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


def build(clip: ClipBackbone, **kwargs) -> PGA:
    common = {"dataset_class_names": DIGITS, "dataset_domains": DOMAINS, "n_ctx": 4, "n_domain_ctx": 2}
    return PGA(clip, 10, **{**common, **kwargs})


def test_groups_shared_class_specific_prompt_and_one_private_context_per_loss(clip) -> None:
    model = build(clip, threshold=0.0)  # the random CLIP is never confident
    shared = model.scope_parameters("official")
    private = model.private_parameters("main")
    assert [tuple(p.shape) for p in shared] == [(10, 4, clip.text_width)]  # official ctx_cls: one per class
    assert [tuple(p.shape) for p in private["target"]] == [(2, clip.text_width)]
    trained = model.optimizer_groups()["main"]["heads"]
    groups = [shared, private["target"], private["source"]]
    assert sorted(id(p) for g in groups for p in g) == sorted(id(p) for p in trained)
    stage = model.stages[0]
    assert dict(stage.trade_offs) == {"target": 1.0, "source": 0.3} and stage.harmonize == (("target", "source"),)
    assert model.stage("main").procedure == "pga" and model.procedure_options("main") == {"radius": 3e-4, "align": 1.0}
    assert build(clip).threshold == 0.4
    # each loss reaches the shared prompt and its own domain context only
    out = model.stages[0].loss_fn(batch(), 0)
    for name, own, other in (("target", "target", "source"), ("source", "source", "target")):
        grads = torch.autograd.grad(out.losses[name], shared + private[own] + private[other], allow_unused=True)
        assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0 and grads[2] is None


def test_fixed_pseudo_labels_are_zero_shot_once_and_never_refreshed(clip) -> None:
    model = build(clip, pseudo_labels="fixed", threshold=0.1)
    b = batch()
    features = model.image_features(b.x_target)
    text = F.normalize(clip.encode_text([f"A photo of a {d}" for d in DIGITS]).float(), dim=-1)
    probs = clip_logits(features.float(), text, clip.logit_scale).softmax(dim=-1)
    labels, confident = model.pseudo_labels(b.x_target, features)
    assert torch.equal(labels, probs.argmax(dim=-1)) and torch.equal(confident, probs.max(dim=-1).values > 0.1)
    # another zero-shot head from now on: seen images keep their labels, new images get the new head's
    model.zeroshot.text_features = model.zeroshot.text_features.flip(0)
    again, _ = model.pseudo_labels(b.x_target, features)
    assert torch.equal(again, labels)
    fresh = batch(seed=1)
    new_labels, _ = model.pseudo_labels(fresh.x_target, model.image_features(fresh.x_target))
    flipped = clip_logits(model.image_features(fresh.x_target).float(), text.flip(0), clip.logit_scale)
    assert torch.equal(new_labels, flipped.argmax(dim=-1))
    assert len(model.fixed_labels) == 16


def test_online_pseudo_labels_use_the_naive_prompt_temperature_and_threshold(clip) -> None:
    model = build(clip, pseudo_labels="online", temperature=0.5, threshold=0.12)
    assert model.threshold == 0.12 and build(clip, pseudo_labels="online").threshold == 0.6
    assert build(clip).threshold == 0.4
    b = batch()
    features = model.image_features(b.x_target)
    text = F.normalize(clip.encode_text([f"a photo of a {d}." for d in DIGITS]).float(), dim=-1)
    probs = (clip_logits(features.float(), text, clip.logit_scale) / 0.5).softmax(dim=-1)
    labels, confident = model.pseudo_labels(b.x_target, features)
    assert torch.equal(labels, probs.argmax(dim=-1)) and torch.equal(confident, probs.max(dim=-1).values >= 0.12)
    out = model.stages[0].loss_fn(b, 0)
    logits = model.domain_logits(features, 1)
    torch.testing.assert_close(out.losses["target"], masked_cross_entropy(logits, labels, confident))
    torch.testing.assert_close(
        out.losses["source"], F.cross_entropy(model.domain_logits(model.image_features(b.x_source), 0), b.y_source)
    )


def test_a_pga_step_reuses_the_frozen_features_and_restores_the_prompts(clip) -> None:
    model = build(clip, threshold=0.0)
    calls = []
    handle = model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        b = batch()
        out = model.stages[0].loss_fn(b, 0)
        losses = {n: out.losses[n] for n in ("target", "source")}
        before = [p.detach().clone() for p in model.prompt.parameters()]
        stats = pga_backward(
            lambda n: model.stages[0].loss_fn(b, 0).losses[n],
            losses,
            model.scope_parameters("official"),
            model.private_parameters("main"),
            {"target": 1.0, "source": 0.3},
            radius=0.5,
            align=1.0,
        )
    finally:
        handle.remove()
    assert len(calls) == 2  # the image tower ran once per domain for the four passes
    assert all(torch.equal(p, q) for p, q in zip(model.prompt.parameters(), before, strict=True))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompt.parameters())
    assert stats.gram.shape == (2, 2)


def test_evaluation_ensemble_and_each_prompt(clip) -> None:
    x = batch().x_target
    variants = build(clip).prediction_variants(x)
    torch.testing.assert_close(
        variants["ensemble"], (variants["source"].softmax(-1) + variants["target"].softmax(-1)) / 2
    )
    for which in ("ensemble", "source", "target"):
        model = build(clip, predict_with=which)
        torch.testing.assert_close(model.predict(x), model.prediction_variants(x)[which])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius": -1e-4}, r"radius rho=-0.0001 is invalid: .*must be >= 0"),
        ({"align": -1.0}, r"align a=-1.0 is invalid"),
        ({"trade_off": -0.3}, r"trade_off=-0.3 is invalid"),
        ({"pseudo_labels": "teacher"}, r"pseudo_labels='teacher' is unknown; choose fixed"),
        ({"predict_with": "both"}, r"predict_with='both' is unknown"),
        ({"dataset_domains": ("mnist",)}, r"needs the source and target domain names"),
        ({"class_names": ["a", "b"]}, r"has 2 names but the dataset has 10 classes"),
    ],
)
def test_bad_values_fail_in_one_sentence(clip, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build(clip, **kwargs)
    assert "\n" not in str(err.value)
