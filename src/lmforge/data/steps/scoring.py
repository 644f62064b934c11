"""Model-based quality scores: perplexity under a small reference LM, and a trained quality classifier.

``perplexity`` scores each document with a causal LM (an lmforge checkpoint or run directory,
or any local Hugging Face causal-LM directory) and writes ``metadata["ppl"]`` (perplexity per
token) and ``metadata["bpb"]`` (bits per UTF-8 byte). Perplexity depends on the tokenizer;
bits per byte does not, so ``bpb`` is the key to filter on or to order a curriculum by, and it
compares scores from different reference models. Very high bpb is garbled or foreign text; very
low bpb is repetitive boilerplate the model can predict by heart (CCNet keeps the middle).

Each document is scored on its first ``max_tokens`` tokens, after a context token (the model's
bos, else eos: how a document starts in lmforge's packed training data), so every text token is
predicted and the bytes counted are exactly the bytes of the scored text. Documents are sorted
by length and scored in micro-batches of about ``batch_tokens`` padded tokens under
``torch.inference_mode()``; right padding needs no attention mask in a causal model.

``quality_classifier`` runs a binary ``TextClassifier`` (``lmforge data train-classifier``,
fastText-style, CPU) and writes ``metadata["quality_score"]`` = P(positive).

Pipeline YAML::

    - type: perplexity
      model: runs/ref_lm              # checkpoint dir, run dir (latest checkpoint) or HF dir
      max_tokens: 512
      max_bpb: 2.5                     # optional: drop (high_perplexity) above
      min_bpb: 0.3                     # optional: drop (low_perplexity) below
    - type: quality_classifier
      model: runs/quality_clf
      min_score: 0.5                   # optional: drop (low_quality_score) below

From Python::

    lm = ReferenceLM.load("runs/ref_lm")
    lm.score(["some text", "另一段文字"])    # [TextScore(tokens=..., nll=..., bytes=...), ...]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.data.document import Document
from lmforge.data.pipeline.base import Drop, Step, StepContext, drop, register_step

# A token is rarely longer than this many characters; cutting the text first keeps tokenizing
# a 1 MB document cheap when only its first max_tokens tokens are scored.
_CHARS_PER_TOKEN_BOUND = 16


@dataclass
class TextScore:
    """One text's score: ``tokens`` predicted, their summed ``nll`` (nats), the ``bytes`` they cover."""

    tokens: int
    nll: float
    bytes: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bpb(self) -> float:
        return self.nll / math.log(2) / self.bytes if self.bytes else float("nan")


class ReferenceLM:
    """A causal LM and its tokenizer, for scoring text (``load``, then ``score``)."""

    def __init__(self, model: Any, tokenizer: Any, context_token: int | None, is_lmforge: bool, device: Any) -> None:
        self.model, self.tokenizer = model, tokenizer  # tokenizer: a `tokenizers.Tokenizer`
        self.context_token = context_token
        self.is_lmforge = is_lmforge
        self.device = device

    @classmethod
    def load(
        cls,
        path: str | Path,
        tokenizer: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        context: Literal["auto", "bos", "eos", "none"] = "auto",
    ) -> ReferenceLM:
        """Load from a checkpoint directory, a run directory (its latest checkpoint) or an HF directory."""
        import torch

        from lmforge.model.hf import from_hf_config, load_pretrained
        from lmforge.train.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        dev = torch.device(device)
        hf_config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        try:  # lmforge's own architectures load without transformers (and faster)
            from_hf_config(hf_config, str(ckpt / "config.json"))
            is_lmforge = True
        except ValueError:
            is_lmforge = False
        if is_lmforge:
            model = load_pretrained(ckpt, device=dev, dtype=torch_dtype)
            bos, eos = model.config.bos_token_id, model.config.eos_token_id
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True, dtype=torch_dtype).to(dev).eval()
            bos, eos = model.config.bos_token_id, model.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        context_token = {"auto": bos if bos is not None else eos, "bos": bos, "eos": eos, "none": None}[context]
        if context in ("bos", "eos") and context_token is None:
            raise ValueError(f"{ckpt}: context '{context}' asked for, but the model config has no {context}_token_id")
        return cls(model, _load_fast_tokenizer(Path(tokenizer) if tokenizer else ckpt), context_token, is_lmforge, dev)

    def score(self, texts: list[str], max_tokens: int = 512, batch_tokens: int = 4096) -> list[TextScore]:
        """One ``TextScore`` per text (zero tokens for an empty text)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        cut = max_tokens * _CHARS_PER_TOKEN_BOUND
        encodings = self.tokenizer.encode_batch([t[:cut] for t in texts], add_special_tokens=False)
        prefix = [] if self.context_token is None else [self.context_token]
        inputs, scored_bytes = [], []
        for text, enc in zip(texts, encodings):
            ids = enc.ids[:max_tokens]
            if not ids:
                inputs.append([])
                scored_bytes.append(0)
                continue
            # The characters the kept tokens cover (offsets index the original text). Without a
            # context token the first token is only context, so its characters are not scored.
            whole = len(ids) == len(enc.ids) and len(text) <= cut
            end = len(text) if whole else max(e for _, e in enc.offsets[: len(ids)])
            begin = 0 if prefix else enc.offsets[0][1]
            inputs.append(prefix + ids)
            scored_bytes.append(len(text[begin:end].encode("utf-8")))
        results = [TextScore(0, 0.0, 0) for _ in texts]
        order = sorted((i for i in range(len(texts)) if len(inputs[i]) >= 2), key=lambda i: -len(inputs[i]))
        pad = self.context_token if self.context_token is not None else 0  # any valid id: never attended to
        with torch.inference_mode():
            start = 0
            while start < len(order):
                width = len(inputs[order[start]])  # the longest in this micro-batch (sorted)
                size = max(1, min(len(order) - start, batch_tokens // width))
                rows = order[start : start + size]
                start += size
                batch = np.full((len(rows), width), pad, dtype=np.int64)
                for r, i in enumerate(rows):
                    batch[r, : len(inputs[i])] = inputs[i]
                ids = torch.from_numpy(batch).to(self.device)
                logits = self._logits(ids)[:, :-1].float()
                targets = ids[:, 1:].clone()
                lengths = torch.tensor([len(inputs[i]) - 1 for i in rows], device=self.device)
                real = torch.arange(width - 1, device=self.device)[None, :] < lengths[:, None]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
                nll = (nll.view(len(rows), -1) * real).sum(dim=1).double().cpu().tolist()
                for r, i in enumerate(rows):
                    results[i] = TextScore(len(inputs[i]) - 1, nll[r], scored_bytes[i])
        return results

    def _logits(self, ids):
        # Right padding: a causal model never lets a real token see the padding after it.
        if self.is_lmforge:
            return self.model(ids).logits
        return self.model(input_ids=ids).logits


def _load_fast_tokenizer(directory: Path):
    """The fast ``tokenizers.Tokenizer`` of a checkpoint/tokenizer directory."""
    if (directory / "tokenizer.json").is_file():
        from lmforge.tokenizer.train import load_tokenizer

        return load_tokenizer(directory)
    from transformers import AutoTokenizer

    try:  # e.g. a sentencepiece tokenizer.model, converted to a fast tokenizer
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, use_fast=True).backend_tokenizer
    except Exception as exc:
        raise FileNotFoundError(f"{directory}: no usable tokenizer (tokenizer.json or a fast-convertible one): {exc}") from None


@dataclass
class PerplexityConfig:
    # Reference model: an lmforge checkpoint, a run directory (its latest checkpoint) or any local
    # Hugging Face causal-LM directory. Relative to the pipeline file. Required.
    model: str = ""
    # Tokenizer directory; None: the model directory's own tokenizer files.
    tokenizer: str | None = None
    # Tokens scored per document (its beginning). 512 is enough for a stable per-byte estimate
    # and bounds the cost of long documents.
    max_tokens: int = 512
    # Padded tokens per forward pass. Memory ~ batch_tokens * vocab_size * 4 bytes for the
    # logits: 4096 is ~100 MB with a 6k vocabulary; lower it for 150k-vocabulary models.
    batch_tokens: int = 4096
    # torch threads per worker. The executor already runs one worker per core, so 1.
    num_threads: int = 1
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 only where the hardware is fast at it
    # Context token before each document: auto = bos if the model has one, else eos.
    context: Literal["auto", "bos", "eos", "none"] = "auto"
    # Metadata keys are f"{prefix}ppl" and f"{prefix}bpb" (e.g. prefix "ref2_" for a second model).
    prefix: str = ""
    # Optional filters on bits per byte: above max_bpb -> high_perplexity, below min_bpb -> low_perplexity.
    max_bpb: float | None = None
    min_bpb: float | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is required: a checkpoint, run or Hugging Face model directory")
        for name in ("max_tokens", "batch_tokens", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("max_bpb", "min_bpb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0; got {value}")
        if self.max_bpb is not None and self.min_bpb is not None and self.min_bpb >= self.max_bpb:
            raise ValueError(f"min_bpb ({self.min_bpb}) must be below max_bpb ({self.max_bpb})")


@register_step("perplexity")
class Perplexity(Step):
    resource_fields = ("model", "tokenizer")
    """Writes metadata ppl / bpb from a reference LM; optional bpb filters."""

    Config = PerplexityConfig

    def setup(self, ctx: StepContext) -> None:
        import torch

        cfg = self.config
        torch.set_num_threads(cfg.num_threads)  # this worker's share of the machine
        tokenizer = ctx.resolve(cfg.tokenizer) if cfg.tokenizer else None
        self.lm = ReferenceLM.load(ctx.resolve(cfg.model), tokenizer, cfg.device, cfg.dtype, cfg.context)

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        cfg = self.config
        scores = self.lm.score([d.text for d in docs], cfg.max_tokens, cfg.batch_tokens)
        out: list[Document | Drop] = []
        for doc, s in zip(docs, scores):
            if not s.tokens or not s.bytes:
                self.count("unscored")  # empty, or a single token with no context to predict it from
                out.append(doc)
                continue
            doc.metadata[f"{cfg.prefix}ppl"] = round(s.ppl, 3)
            doc.metadata[f"{cfg.prefix}bpb"] = round(s.bpb, 4)
            if cfg.max_bpb is not None and s.bpb > cfg.max_bpb:
                out.append(drop("high_perplexity"))
            elif cfg.min_bpb is not None and s.bpb < cfg.min_bpb:
                out.append(drop("low_perplexity"))
            else:
                out.append(doc)
        return out


@dataclass
class QualityClassifierConfig:
    # Classifier directory from `lmforge data train-classifier`. Required.
    model: str = ""
    # The label whose probability is the quality score (train-classifier names it "positive").
    positive_label: str = "positive"
    # Metadata key for the score.
    key: str = "quality_score"
    # Optional filter: documents scoring below are dropped (reason low_quality_score).
    min_score: float | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is required: a classifier directory from `lmforge data train-classifier`")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1]; got {self.min_score}")


@register_step("quality_classifier")
class QualityClassifier(Step):
    resource_fields = ("model",)
    """Writes metadata["quality_score"] = P(positive) from a fastText-style classifier."""

    Config = QualityClassifierConfig

    def setup(self, ctx: StepContext) -> None:
        from lmforge.data.steps.classifier import TextClassifier

        self.classifier = TextClassifier.load(ctx.resolve(self.config.model))
        self.column = self.classifier.label_index(self.config.positive_label)

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        cfg = self.config
        scores = self.classifier.predict_proba([d.text for d in docs])[:, self.column]
        out: list[Document | Drop] = []
        for doc, score in zip(docs, scores):
            doc.metadata[cfg.key] = round(float(score), 4)
            out.append(drop("low_quality_score") if cfg.min_score is not None and score < cfg.min_score else doc)
        return out
