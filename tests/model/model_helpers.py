"""Helpers for the decode-step tests (a plain module, imported by name as serve_helpers is):
a left-padded prefill as the engine does it, a copy of a KV cache to run a second path on, and
the server's slot cache set up for one decode step."""

from __future__ import annotations

import torch


def prefilled(model, prompts: list[list[int]], total: int):
    """Left-padded prefill, as the engine does: (cache, [B, total] key mask, next positions [B])."""
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros((batch, width), dtype=torch.long)
    key_mask = torch.zeros((batch, total), dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        key_mask[row, width - len(p):width] = True
    positions = (key_mask[:, :width].long().cumsum(-1) - 1).clamp(min=0)
    cache = model.new_kv_cache(batch, total)
    model(ids, position_ids=positions, kv_cache=cache, attention_mask=key_mask[:, :width])
    return cache, key_mask, torch.tensor([len(p) for p in prompts])


def clone_cache(cache):
    copy = type(cache).__new__(type(cache))
    copy.__dict__.update(cache.__dict__)
    copy.k, copy.v = cache.k.clone(), cache.v.clone()
    return copy


def slot_caches(config, slots: int, lengths: torch.Tensor):
    """Two equal ``SlotKVCache``s of random content, each slot b holding ``lengths[b]`` tokens and
    set for the next step as the scheduler sets it, and that step's [B, 1, 1, S] key mask."""
    from lmforge.serve.scheduler import SlotKVCache

    cache = SlotKVCache(config, slots, 16, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(2)
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    mirror = clone_cache(cache)
    width = int(lengths.max()) + 1
    mask = (torch.arange(width)[None, :] <= lengths[:, None])[:, None, None, :]
    for c in (cache, mirror):
        c.length, c.write_pos = width - 1, lengths
    return cache, mirror, mask
