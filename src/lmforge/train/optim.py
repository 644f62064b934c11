"""AdamW with the usual weight-decay grouping.

Decay shrinks weights toward zero, which is a useful prior for matrices but not for norm gains
(their natural value is 1), biases, or embedding rows (rare tokens get few gradient updates, so
decay would erase them between visits). So only parameters with 2+ dimensions that are not
embeddings decay; ``decay_embeddings=True`` opts embeddings in (some recipes, e.g. YuLan-Mini,
decay everything). A tied ``lm_head`` is the embedding matrix, so it follows the embedding rule.
Only trainable parameters (``requires_grad``) are included, so a model transform that freezes
weights (LoRA) needs nothing special here.

Usage::

    optimizer = build_optimizer(model, train_cfg)
    groups = param_groups(model, weight_decay=0.1)   # [{"params", "weight_decay", "names"}, ...]
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two AdamW groups, decayed and not; each carries ``names`` for logging and tests."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = ([], []), ([], [])
    seen: set[int] = set()
    for name, param in model.named_parameters():  # named_parameters() already yields tied weights once
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        is_embedding = id(param) in embedding_ids
        wants_decay = param.ndim >= 2 and (decay_embeddings or not is_embedding)
        target = decay if wants_decay else no_decay
        target[0].append(param)
        target[1].append(name)
    groups = [
        {"params": decay[0], "weight_decay": weight_decay, "names": decay[1]},
        {"params": no_decay[0], "weight_decay": 0.0, "names": no_decay[1]},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, configured from a ``TrainConfig``."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_embeddings)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    # `names` is ours, not AdamW's; torch keeps extra group keys and saves them in state_dict,
    # which makes a resumed optimizer's groups self-describing.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
