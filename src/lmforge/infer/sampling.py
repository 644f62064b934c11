"""Sampling settings and the logits processors that apply them, vectorized over a batch.

``SamplingConfig`` is what a caller (CLI, recipe ``sample`` section, server request, evaluator)
asks for; the engine turns one config per row into ``RowParams`` tensors so that a batch whose
rows were requested with different settings is still processed in a handful of tensor ops.

The processors follow Hugging Face ``generate`` semantics and order, so results can be compared
with ``transformers``:

1. repetition penalty (HF ``RepetitionPenaltyLogitsProcessor``): for every token already in the
   context (prompt and generated so far), a positive logit is divided by the penalty and a
   negative one multiplied by it; applied for greedy decoding too;
2. temperature: logits / T (T == 0 means greedy: argmax of the penalized logits);
3. top-k: keep the k highest logits (ties with the k-th are kept, as in HF);
4. top-p (nucleus): keep the smallest set of most likely tokens whose probability reaches p;
   the most likely token is always kept.

Sampling draws each row with its own ``torch.Generator``, so a seeded request gives the same
tokens whether it runs alone or batched with others.

Example::

    cfg = SamplingConfig(temperature=0.7, top_p=0.9, seed=1)
    params = RowParams.from_configs([cfg], device="cpu")
    next_ids = sample_next(logits, params, seen=None, generators=[make_generator(cfg.seed, "cpu")])
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: recipes import SamplingConfig, and loading a recipe
# (or answering `lmforge --help`) should not pay for importing torch.


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the context
    stop: list[str] = field(default_factory=list)  # stop strings, besides the eos token
    seed: int | None = None  # None: a fresh random seed per request
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens, besides the engine's eos ids
    ignore_eos: bool = False  # never stop on the engine's eos ids (benchmarks, comparisons with HF)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off); got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off); got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off); got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A per-request RNG; an unseeded request still gets its own generator (fresh random seed)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))
    return gen


@dataclass
class RowParams:
    """Per-row sampling settings as [B, 1] tensors (row order = batch order)."""

    temperature: torch.Tensor  # float; 0 marks a greedy row
    top_k: torch.Tensor  # long; 0 = off
    top_p: torch.Tensor  # float; 1 = off
    repetition_penalty: torch.Tensor  # float; 1 = off
    # Python-side summaries so that whole processors are skipped when no row uses them.
    any_penalty: bool
    any_top_k: bool
    any_top_p: bool
    all_greedy: bool

    @classmethod
    def from_configs(cls, configs: list[SamplingConfig], device: torch.device | str) -> RowParams:
        import torch

        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)

        return cls(
            temperature=col([c.temperature for c in configs], torch.float32),
            top_k=col([c.top_k for c in configs], torch.long),
            top_p=col([c.top_p for c in configs], torch.float32),
            repetition_penalty=col([c.repetition_penalty for c in configs], torch.float32),
            any_penalty=any(c.repetition_penalty != 1.0 for c in configs),
            any_top_k=any(c.top_k > 0 and not c.greedy for c in configs),
            any_top_p=any(c.top_p < 1.0 and not c.greedy for c in configs),
            all_greedy=all(c.greedy for c in configs),
        )

    def select(self, rows: torch.Tensor) -> RowParams:
        """The parameters of a subset of rows (when finished rows leave the batch)."""
        return RowParams(
            temperature=self.temperature.index_select(0, rows),
            top_k=self.top_k.index_select(0, rows),
            top_p=self.top_p.index_select(0, rows),
            repetition_penalty=self.repetition_penalty.index_select(0, rows),
            any_penalty=self.any_penalty,
            any_top_k=self.any_top_k,
            any_top_p=self.any_top_p,
            all_greedy=self.all_greedy,
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor | float) -> torch.Tensor:
    """HF semantics: seen tokens' logits are divided by ``penalty`` if positive, multiplied if negative.

    ``seen`` is a bool [B, V] mask of tokens in each row's context; ``penalty`` a float or [B, 1].
    """
    import torch

    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor | int) -> torch.Tensor:
    """Mask (-inf) everything below each row's k-th highest logit; k == 0 leaves the row alone."""
    import torch

    vocab = logits.shape[-1]
    k = torch.as_tensor(top_k, device=logits.device).reshape(-1, 1).expand(logits.shape[0], 1)
    k = torch.where(k > 0, k.clamp(max=vocab), torch.full_like(k, vocab))
    kth = torch.topk(logits, int(k.max()), dim=-1).values.gather(-1, k - 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor | float) -> torch.Tensor:
    """Nucleus filtering: drop tokens once the more likely ones already hold probability >= p.

    Same rule as HF (sort ascending, drop while cumulative probability <= 1 - p), written on the
    descending sort; rows with p >= 1 are untouched (float round-off must not clip their tail).
    """
    import torch

    p = torch.as_tensor(top_p, dtype=torch.float32, device=logits.device).reshape(-1, 1).expand(logits.shape[0], 1)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    threshold = torch.where(p >= 1.0, torch.full_like(p, float("inf")), p)
    drop_sorted = mass_before >= threshold
    drop_sorted[:, 0] = False  # the most likely token always survives
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, params: RowParams, seen: torch.Tensor | None) -> torch.Tensor:
    """Penalty, temperature, top-k, top-p in HF order; returns float32 logits ready to softmax.

    Greedy rows get temperature 1 here (their argmax is taken from the penalized logits).
    """
    import torch

    logits = logits.float()
    if params.any_penalty and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.all_greedy:
        return logits
    temperature = torch.where(params.temperature > 0, params.temperature, torch.ones_like(params.temperature))
    logits = logits / temperature
    if params.any_top_k:
        logits = apply_top_k(logits, torch.where(params.temperature > 0, params.top_k, torch.zeros_like(params.top_k)))
    if params.any_top_p:
        logits = apply_top_p(logits, torch.where(params.temperature > 0, params.top_p, torch.ones_like(params.top_p)))
    return logits


def sample_next(
    logits: torch.Tensor,
    params: RowParams,
    seen: torch.Tensor | None,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Next token per row, [B] long: argmax for greedy rows, a draw from each row's RNG otherwise."""
    import torch

    processed = process_logits(logits, params, seen)
    greedy = processed.argmax(dim=-1)
    if params.all_greedy:
        return greedy
    probs = processed.softmax(dim=-1)
    sampled = [row for row, row_is_greedy in enumerate((params.temperature[:, 0] == 0).tolist()) if not row_is_greedy]
    if len(sampled) == len(generators):
        return draw_tokens(probs, generators)
    out = greedy.clone()
    rows = torch.tensor(sampled, device=probs.device)
    out[rows] = draw_tokens(probs.index_select(0, rows), [generators[row] for row in sampled])
    return out


def draw_tokens(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` [R, V], row r drawn with ``generators[r]``: inverse
    transform sampling, the first token whose cumulative probability exceeds u ~ U[0, total).

    The distribution ``torch.multinomial`` samples (it also walks a cumulative sum), at one
    uniform number per row instead of a ~120 µs call per row on a CPU: a batch of 32 sampled
    rows cost more than the model's forward before. Each row keeps its own generator: a shared
    one would make a request's draw depend on its batch neighbours, and per-request
    reproducibility is the point of the seed. The sum is taken in fp64 (fp32 on Apple's MPS,
    which has no fp64), so its rounding is negligible; zero-probability tokens (top-k/top-p
    cuts) are never drawn. A row with no valid probabilities (NaN, all zero) is an error, as it
    is for ``torch.multinomial``, never an out-of-vocabulary id.
    """
    import torch

    exact = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = probs.to(exact).cumsum(dim=-1)
    total = cdf[:, -1:]
    if not bool((total > 0).all()):  # NaN compares False too
        bad = (~(total[:, 0] > 0)).nonzero()[:, 0].tolist()
        raise RuntimeError(f"sampling: row(s) {bad} have no valid probabilities (NaN, inf or all-zero logits)")
    u = torch.stack([torch.rand((), generator=g, dtype=exact, device=probs.device) for g in generators]).unsqueeze(1)
    # u·total < total strictly, so the search stops at or before the last token with mass.
    u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)
