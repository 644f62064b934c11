"""Loss objects: what the one trainer loop optimizes.

Stages differ by their objective (and dataset/collator, model transform, frozen reference
model), not by their loop. An objective is a small object with this interface:

* ``__call__(model, batch) -> (loss, metrics)``: the scalar loss to minimize, averaged over the
  batch's ``loss_tokens(batch)`` tokens, and a dict of detached tensors/floats to log
  (``"expert_load"`` may be a [n_layers, n_experts] tensor).
* ``loss_tokens(batch) -> int``: how many tokens the loss averages over. The trainer weights
  each micro-batch by its share of the step's tokens (over all micro-batches and ranks), so a
  step's loss and gradient are the token mean over the whole global batch, as if it had been
  one batch — also when masking makes micro-batches unequal (SFT).
* ``evaluate(model, batch) -> (loss_sum, tokens)`` or ``(loss_sum, tokens, sums)``: summed
  held-out loss, for exact means over any number of batches and ranks; ``sums`` (optional) maps
  more metric names to sums over the same ``tokens`` (logged as ``eval_<name>`` means, e.g. DPO's
  reward accuracy). ``bytes`` (the UTF-8 bytes the scored tokens stand for) and ``byte_nll``
  (the loss summed over those tokens) give ``eval_bpb``, bits per byte, which compares across
  tokenizers.
* ``frozen_models() -> list[nn.Module]``: reference/teacher models the trainer moves to the
  device and keeps in eval mode (DPO, distillation); empty here.

Usage::

    objective = LanguageModeling(z_loss=1e-4)
    loss, metrics = objective(model, {"input_ids": x, "labels": y})   # metrics: ce, aux_loss, z_loss
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # labels equal to this are not predicted (padding, prompts in SFT)


class Objective(Protocol):
    name: str

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]: ...

    def loss_tokens(self, batch: dict) -> int: ...

    def evaluate(self, model: nn.Module, batch: dict) -> tuple[float, int] | tuple[float, int, dict]: ...

    def frozen_models(self) -> list[nn.Module]: ...


class LanguageModeling:
    """Next-token cross-entropy + the model's MoE load-balancing loss + an optional z-loss.

    ``z_loss`` adds ``coef · mean(logsumexp(logits)²)``, which keeps the softmax normalizer near
    1 and the logits from drifting (PaLM; YuLan-Mini uses 1e-4). Cross-entropy is computed in
    fp32 even under bf16 autocast: the log-softmax over a large vocabulary loses precision in bf16.
    ``token_bytes`` ([vocab] byte length per token id, ``lmforge.eval.bpb.token_bytes_for``) makes
    held-out evaluation report bits per byte too.
    """

    name = "language_modeling"

    def __init__(self, z_loss: float = 0.0, ignore_index: int = IGNORE_INDEX, token_bytes: torch.Tensor | None = None) -> None:
        self.z_loss = z_loss
        self.ignore_index = ignore_index
        self.token_bytes = token_bytes

    def loss_tokens(self, batch: dict) -> int:
        return int((batch["labels"] != self.ignore_index).sum())

    def frozen_models(self) -> list[nn.Module]:
        return []

    def _token_losses(self, model: nn.Module, batch: dict, reduction: str = "sum"):
        # Packed SFT rows bring their own positions and block-diagonal mask (lmforge.data.packing).
        extra = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
        out = model(batch["input_ids"], **extra)
        logits = out.logits.float().flatten(0, 1)
        labels = batch["labels"].flatten()
        ce = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction=reduction)
        return out, logits, labels, ce

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        out, logits, labels, ce_sum = self._token_losses(model, batch)
        mask = labels != self.ignore_index
        n = mask.sum().clamp(min=1)
        ce = ce_sum / n
        loss = ce + out.aux_loss
        metrics: dict = {"ce": ce.detach()}
        if self.z_loss:
            lse = torch.logsumexp(logits, dim=-1)
            z = (lse.pow(2) * mask).sum() / n
            loss = loss + self.z_loss * z
            metrics["z_loss"] = z.detach()
        if out.expert_load is not None:
            metrics["aux_loss"] = out.aux_loss.detach()
            metrics["expert_load"] = out.expert_load.detach()
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: dict) -> tuple[float, int] | tuple[float, int, dict]:
        _, _, labels, ce = self._token_losses(model, batch, reduction="none")  # 0 where ignored
        scored = labels != self.ignore_index
        if self.token_bytes is None:
            return float(ce.sum()), int(scored.sum())
        if self.token_bytes.device != labels.device:
            self.token_bytes = self.token_bytes.to(labels.device)
        # Bits per byte counts text only: special tokens (<|im_end|>, end of document) have no
        # bytes, so their loss stays out too (as nanochat does), and the figure matches `lmforge eval`'s.
        nbytes = self.token_bytes[labels.clamp(min=0)] * scored
        text = nbytes > 0
        return float(ce.sum()), int(scored.sum()), {"bytes": float(nbytes.sum()), "byte_nll": float(ce[text].sum())}
