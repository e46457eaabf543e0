"""CLIP backbones, prompt learners and the image-feature cache on the tiny random CLIP (no network, no weights)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from uda.errors import ConfigError, DataError
from uda.models.clip import TINY_CONFIG, ClipBackbone, readable
from uda.models.feature_cache import ImageFeatureCache, fingerprints
from uda.models.prompt import CoOpPrompt, DomainPrompt, PromptContext, ZeroShotHead, clip_logits, template_embeddings

CLASSES = ("alarm clock", "0", "toothbrush", "the eiffel tower")


@pytest.fixture(scope="module")
def clip() -> ClipBackbone:
    torch.manual_seed(0)
    return ClipBackbone("tiny", pretrained=None)


def test_readable_names() -> None:
    assert readable("Alarm_Clock") == "alarm clock"
    assert readable("Real_World") == "real world"
    assert readable("The_Eiffel_Tower") == "the eiffel tower"
    assert readable(" back_pack ") == "back pack" and readable(3) == "3"


def test_tiny_clip_is_frozen_labelled_and_adapts_digits(clip) -> None:
    assert all(not p.requires_grad for p in clip.parameters())
    clip.train()
    assert clip.training and not any(m.training for m in clip.model.modules())  # towers stay in eval mode
    assert clip.note is not None and clip.note.startswith("not a result:")
    assert clip.out_features == TINY_CONFIG["embed_dim"] == 64 and clip.image_size == (28, 28)
    digits = torch.randn(3, 1, 28, 28)
    features = clip(digits)
    assert features.shape == (3, 64) and not features.requires_grad
    # one channel is repeated to three; another size is resized bilinearly to the tower's 28x28
    assert torch.allclose(features, clip.model.encode_image(digits.expand(-1, 3, -1, -1)), atol=1e-6)
    big = torch.randn(2, 3, 56, 56)
    resized = torch.nn.functional.interpolate(big, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.allclose(clip(big), clip.model.encode_image(resized), atol=1e-6)


def test_template_prompt_reproduces_encode_text(clip) -> None:
    """A context made of the template's own token embeddings gives exactly encode_text(template + class)."""
    full = CoOpPrompt(clip, CLASSES, n_ctx=None, init="a photo of a", truncate=False)
    assert full.context.vectors.shape == (4, clip.text_width)  # "a photo of a": 4 BPE tokens
    expected = clip.model.encode_text(clip.tokenize([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(full(clip), expected, atol=1e-6, rtol=0)
    # by default the prompts stop after their last end token (a causal tower pooled there never sees the
    # padding): the same features up to float32 rounding of the shorter attention sums
    prompt = CoOpPrompt(clip, CLASSES, n_ctx=None, init="a photo of a")
    ends = clip.tokenize([f"a photo of a {c}." for c in CLASSES]).argmax(dim=1)
    assert prompt.tokens.token_ids.shape == (4, int(ends.max()) + 1) and int(ends.max()) + 1 < 77
    torch.testing.assert_close(prompt(clip), expected, atol=1e-5, rtol=0)
    # DAPL's assembly: shared "a photo of" + a domain context "a", then "{class}, a {domain} image."
    domains = DomainPrompt(clip, CLASSES, ("real world", "clipart"), n_ctx=3, n_domain_ctx=1, truncate=False)
    with torch.no_grad():
        words = template_embeddings(clip, "a photo of a")
        domains.shared.vectors.copy_(words[:3])
        for context in domains.domains:
            context.vectors.copy_(words[3:])
    for k, d in enumerate(("real world", "clipart")):
        text = clip.model.encode_text(clip.tokenize([f"a photo of a {c}, a {d} image." for c in CLASSES]))
        torch.testing.assert_close(domains(clip, k), text, atol=1e-6, rtol=0)
    # the zero-shot head is the same text tower on the plain sentences
    head = ZeroShotHead(clip, CLASSES)
    image = clip(torch.randn(5, 3, 28, 28))
    torch.testing.assert_close(head(image, 3.0), clip_logits(image, expected, 3.0), atol=1e-5, rtol=0)


def test_context_shapes_and_initializations(clip) -> None:
    torch.manual_seed(1)
    random = CoOpPrompt(clip, CLASSES, n_ctx=16)
    assert random.context.vectors.shape == (16, 64) and 0.01 < float(random.context.vectors.detach().std()) < 0.03
    csc = CoOpPrompt(clip, CLASSES, n_ctx=16, class_specific=True)
    longest = int(clip.tokenize([f"{'X ' * 16}{c}." for c in CLASSES]).argmax(dim=1).max()) + 1
    assert csc.context.vectors.shape == (4, 16, 64) and csc.embeddings().shape == (4, longest, 64)
    padded = PromptContext(6, 64, init=template_embeddings(clip, "a photo of a"))  # ProGrad: zeros, then template
    assert torch.equal(padded.vectors[:2], torch.zeros(2, 64))
    assert torch.equal(padded.vectors[2:], template_embeddings(clip, "a photo of a"))
    with pytest.raises(ConfigError, match=r"n_ctx=2 is shorter than the 4 tokens of the init template"):
        CoOpPrompt(clip, CLASSES, n_ctx=2, init="a photo of a")
    with pytest.raises(ConfigError, match=r"the prompt for .* tokens with 70 context tokens, longer than CLIP's"):
        CoOpPrompt(clip, ("a very long class name indeed",), n_ctx=70)


def test_feature_cache_returns_the_encoder_features_and_counts_hits(clip) -> None:
    images = torch.randn(6, 1, 28, 28)
    cache = ImageFeatureCache()
    first = cache(clip, images[:4])
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    # the same images in another batch, another order, mixed with new ones
    order = torch.tensor([5, 2, 0, 4])
    second = cache(clip, images[order])
    assert (cache.hits, cache.misses, len(cache)) == (2, 6, 6)
    torch.testing.assert_close(second, clip(images[order]), atol=1e-6, rtol=0)
    torch.testing.assert_close(first, clip(images[:4]), atol=1e-6, rtol=0)
    assert cache.hit_rate == pytest.approx(2 / 8)
    bounded = ImageFeatureCache(max_entries=2)
    bounded(clip, images)
    assert len(bounded) == 2


def test_fingerprints_are_exact_and_batch_independent() -> None:
    weights = torch.randint(1, 2**31 - 1, (2, 12), generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, 2, 2)
    alone = fingerprints(x[3:4], weights)
    assert torch.equal(fingerprints(x, weights)[3:4], alone)
    nudged = x.clone()
    nudged[3, 1, 0, 1] = torch.nextafter(nudged[3, 1, 0, 1], torch.tensor(float("inf")))  # one ulp in one pixel
    assert not torch.equal(fingerprints(nudged, weights)[3], alone[0])
    # the key is Σ (bits mod P)·w mod P, by hand in Python integers
    p = 2**31 - 1
    bits = x[3].reshape(-1).view(torch.int32).tolist()
    assert alone[0].tolist() == [sum((b % p) * int(w) for b, w in zip(bits, row, strict=True)) % p for row in weights]


def test_pretrained_weights_without_network_fail_at_once_in_one_sentence(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants as hub_constants

    import uda.models.hub as hub

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing is cached
    monkeypatch.setattr(hub, "network_reachable", lambda url, timeout=hub.PROBE_TIMEOUT_S: False)
    with pytest.raises(DataError) as err:
        ClipBackbone("RN50", pretrained="openai")
    message = str(err.value)
    assert message.startswith("could not get the openai weights of CLIP RN50 (no network: huggingface.co:443 did not")
    url = "https://huggingface.co/timm/resnet50_clip.openai/resolve/main/open_clip_model.safetensors"
    assert f"download {url} on a machine with network" in message
    assert message.endswith("backbone.checkpoint=weights/clip-RN50-openai.safetensors") and "\n" not in message
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # the user said offline: no probe at all
    with pytest.raises(DataError, match=r"\(HF_HUB_OFFLINE=1 is set and no copy is in the hub cache\); download"):
        ClipBackbone("ViT-B-16", pretrained="openai")


def test_bad_model_names_and_tags(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"backbone.model='RN5O' is not an open_clip model; did you mean RN50"):
        ClipBackbone("RN5O")
    with pytest.raises(ConfigError, match=r"backbone.pretrained='openia' is not a weights tag of CLIP RN50; choose"):
        ClipBackbone("RN50", pretrained="openia")
    with pytest.raises(ConfigError, match=r"the tiny CLIP has no pretrained weights"):
        ClipBackbone("tiny", pretrained="openai")


def test_local_checkpoints_round_trip_and_a_wrong_model_names_its_keys(clip, tmp_path) -> None:
    path = tmp_path / "tiny.safetensors"
    state = {k: v.contiguous() for k, v in clip.model.state_dict().items()}
    save_file({**state, "context_length": torch.tensor(77)}, str(path))  # an OpenAI-style extra entry is ignored
    torch.manual_seed(5)
    loaded = ClipBackbone("tiny", checkpoint=path)
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.note is None and loaded.weights == f"checkpoint {path}"
    # a CLIP with a ResNet image tower is another model
    resnet = open_clip.CLIP(
        embed_dim=64,
        vision_cfg={"layers": [1, 1, 1, 1], "width": 8, "image_size": 32},
        text_cfg=TINY_CONFIG["text_cfg"],
    )
    wrong = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), wrong)
    with pytest.raises(DataError) as err:
        ClipBackbone("tiny", checkpoint=wrong)
    message = str(err.value)
    assert message.startswith(f"backbone.checkpoint={wrong} does not fit CLIP tiny (missing keys: visual.class_emb")
    assert "unexpected keys: visual.bn1.weight" in message and "\n" not in message
