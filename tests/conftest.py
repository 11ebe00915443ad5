"""Test-wide settings: offline hub, deterministic CPU, paths to committed fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository (= bundle) root."""
    return ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Committed test fixtures (tests/data, licences in tests/data/README.md)."""
    return DATA


# ---------------------------------------------------------------------------------------------------
# Tiny random encoders saved to disk and loaded by path, as users load real ones (nothing downloaded).
# ---------------------------------------------------------------------------------------------------
WORDS = (
    "the nuclei are evenly distributed density in upper lower left right is high sparsely irregularly "
    "lung lesion lesions bilateral pulmonary infection two infected areas and one no this slice"
).split()


def _save_tiny_text_encoder(folder: Path, kind: str) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast, ModernBertConfig, ModernBertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    common = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=64)
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    elif kind == "minilm":  # all-MiniLM-L6-v2 is a BERT with sentence-transformers files beside it
        model = BertModel(BertConfig(**common))
        (folder / "modules.json").write_text("[]")
        (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 256}')
    elif kind == "modernbert":
        model = ModernBertModel(ModernBertConfig(**common, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                                 cls_token_id=2, sep_token_id=3))
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny random BERT / MiniLM-style / ModernBERT encoders and tiny CLIP image encoders."""
    import json

    import open_clip
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("encoders")
    out = {kind: _save_tiny_text_encoder(root / kind, kind) for kind in ("bert", "minilm", "modernbert")}
    CLIPVisionModel(
        CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                         image_size=32, patch_size=8)
    ).save_pretrained(root / "hf_clip")
    out["hf_clip"] = root / "hf_clip"
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    (root / "TinyCLIP-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(root / "TinyCLIP-test.json"))
    torch.save(open_clip.create_model("TinyCLIP-test", pretrained=None).state_dict(), root / "tiny_clip.pt")
    out["open_clip_config"] = root / "TinyCLIP-test.json"
    out["open_clip_weights"] = root / "tiny_clip.pt"
    return out


@pytest.fixture(scope="session")
def tiny_network_options(tiny_encoders) -> dict:
    """Command-line overrides that make the bundle configs build a tiny LCPDN (32 px, tiny encoders)."""
    from scripts.bench_runs import SMOKE_OPTIONS  # the tiny network of `scripts/benchmark.py --smoke`

    return {
        **SMOKE_OPTIONS,
        "text_encoder_path": str(tiny_encoders["bert"]),
        "image_encoder_kind": "hf_clip",
        "image_encoder_path": str(tiny_encoders["hf_clip"]),
    }
