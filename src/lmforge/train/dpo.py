"""Direct preference optimization: a fine-tuned checkpoint + preference pairs → a preferred model,
on the one ``Trainer``.

For each pair the policy π (the model being trained) and the reference r (the starting model,
fixed) score both replies by the summed log-probability of the reply's tokens; the loss
(Rafailov et al. 2023; TRL's ``sigmoid``) is

    −log σ(β · ((π_chosen − r_chosen) − (π_rejected − r_rejected)))

averaged over pairs, so the Trainer weights micro-batches by pairs (``loss_tokens``). The
reference is either a frozen copy scoring every batch (``dpo.reference: frozen``) or scored once
before training and kept with each pair (``precomputed``, the default: no second model in
memory); both give the same losses. Logged, as TRL's ``rewards/*`` under flat names:
``rewards_chosen`` = β(π_c − r_c), ``rewards_rejected``, ``reward_margin`` (their difference),
``reward_accuracy`` (share of pairs with a positive margin), ``logps_chosen``/``logps_rejected``;
held out as ``eval_<name>``::

    lmforge dpo recipe.yaml --set train.init_from=runs/demo/sft --set 'dpo.train=[pairs.jsonl]'

Recipe sections: ``dpo`` (``DPOConfig``: pairs, β, reference, over-long policy) and ``train``
(``init_from`` is required; ``seq_len`` bounds each prompt+reply). Pairs are read by
``lmforge.data.preference``; batches hold pairs of similar length to keep padding low.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import random
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import ConfigError, to_dict
from lmforge.data.chat import IGNORE_INDEX
from lmforge.data.preference import EncodedPair, PreferenceStats, collate_pairs, fit_pair, read_preference_pairs
from lmforge.data.readers import ReadStats
from lmforge.io import write_json_atomic
from lmforge.train.checkpoint import latest_checkpoint, resolve_checkpoint
from lmforge.train.distributed import resolve_dtype, training_session
from lmforge.train.flops import flops_per_token
from lmforge.train.metrics import say
from lmforge.train.pretrain import as_config_error
from lmforge.train.sft import _held_out
from lmforge.train.trainer import Trainer, TrainResult

_BUCKET_BATCHES = 32  # global batches per window whose pairs are grouped by length
REFERENCE_CACHE = "reference_logps.pt"  # precomputed reference log-probs in the run dir, with a fingerprint


def sequence_logps(model: nn.Module, batch: dict):
    """Summed log-probabilities of each row's labelled tokens ([rows], fp32) and the model output."""
    out = model(batch["input_ids"])
    labels = batch["labels"]
    # fp32 log-softmax even under bf16 autocast: a reply's sum over hundreds of tokens needs it.
    nll = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.view(labels.shape).sum(-1), out


class DPO:
    """The DPO sigmoid loss; batches from ``collate_pairs`` (B chosen rows, then B rejected).

    ``sft_weight`` > 0 adds that times the chosen replies' mean per-token negative log-likelihood
    (RPO, Pang et al. 2024; TRL's ``rpo_alpha``): plain DPO may lower the chosen replies'
    likelihood along with the rejected ones' (both rewards negative) and drift into degenerate
    text; the NLL term keeps the chosen replies likely. Logged as ``chosen_nll``.
    """

    name = "dpo"

    def __init__(self, beta: float, reference: nn.Module | None = None, sft_weight: float = 0.0) -> None:
        self.beta, self.reference, self.sft_weight = beta, reference, sft_weight

    def loss_tokens(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0]) // 2  # pairs: the loss is a mean over pairs

    def frozen_models(self) -> list[nn.Module]:
        return [self.reference] if self.reference is not None else []

    def _pair_terms(self, model: nn.Module, batch: dict):
        logps, out = sequence_logps(model, batch)
        pairs = logps.shape[0] // 2
        if "reference_chosen_logps" in batch:
            ref_chosen, ref_rejected = batch["reference_chosen_logps"], batch["reference_rejected_logps"]
        elif self.reference is not None:
            with torch.no_grad():
                ref, _ = sequence_logps(self.reference, batch)
            ref_chosen, ref_rejected = ref[:pairs], ref[pairs:]
        else:
            raise ValueError("DPO needs the reference's log-probabilities: a frozen reference model, or reference_*_logps in the batch")
        chosen_tokens = (batch["labels"][:pairs] != IGNORE_INDEX).sum(-1).clamp(min=1)
        chosen_nll = -logps[:pairs] / chosen_tokens  # per token, so long and short replies weigh alike
        rewards_chosen = self.beta * (logps[:pairs] - ref_chosen)
        rewards_rejected = self.beta * (logps[pairs:] - ref_rejected)
        margin = rewards_chosen - rewards_rejected
        losses = -F.logsigmoid(margin)
        if self.sft_weight:
            losses = losses + self.sft_weight * chosen_nll
        terms = {
            "chosen_nll": chosen_nll,
            "rewards_chosen": rewards_chosen, "rewards_rejected": rewards_rejected, "reward_margin": margin,
            "reward_accuracy": (margin > 0).float(), "logps_chosen": logps[:pairs], "logps_rejected": logps[pairs:],
        }  # fmt: skip
        return losses, {k: v.detach() for k, v in terms.items()}, out

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        losses, terms, out = self._pair_terms(model, batch)
        metrics: dict = {k: v.mean() for k, v in terms.items()}
        loss = losses.mean() + out.aux_loss  # MoE load balancing, as in every stage (0 for dense models)
        if out.expert_load is not None:
            metrics["aux_loss"] = out.aux_loss.detach()
            metrics["expert_load"] = out.expert_load.detach()
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch: dict) -> tuple[float, int, dict]:
        losses, terms, _ = self._pair_terms(model, batch)
        return float(losses.sum()), int(losses.numel()), {k: float(v.sum()) for k, v in terms.items()}


class PreferenceBatches:
    """Micro-batches of pairs, reshuffled every epoch with ``seed``; resumable from its state.

    A step's global batch is ``batch_size · grad_accum · world_size`` pairs. Each epoch shuffles
    the pairs, then within windows of ``bucket_batches`` global batches sorts them by length, cuts
    global batches and shuffles those, so a batch's rows have similar lengths (little padding)
    while the order stays random. Micro-batch ``m`` of rank ``r`` is slice ``m · world_size + r``
    of its step's global batch, so the pairs a step sees do not depend on how the global batch is
    split. An epoch's last incomplete global batch is left out (the next epoch reshuffles all).
    """

    def __init__(self, pairs: list[EncodedPair], batch_size: int, pad_id: int, seed: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1, bucket_batches: int = _BUCKET_BATCHES) -> None:  # fmt: skip
        self.global_batch = batch_size * grad_accum * world_size
        if len(pairs) < self.global_batch:
            raise ValueError(f"{len(pairs)} pairs cannot fill one global batch of {self.global_batch} (batch_size · grad_accum · ranks)")
        self.pairs, self.batch_size, self.pad_id, self.grad_accum = pairs, batch_size, pad_id, grad_accum
        self.seed, self.rank, self.world_size, self.bucket_batches = seed, rank, world_size, bucket_batches
        self.epoch, self.position = 0, 0  # position: micro-batches taken in this epoch
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.pairs)))
        rng.shuffle(order)
        size = self.global_batch
        order = order[: len(order) - len(order) % size]
        batches: list[list[int]] = []
        window = size * self.bucket_batches
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: (self.pairs[i].length, i))
            group = [chunk[j : j + size] for j in range(0, len(chunk), size)]
            rng.shuffle(group)
            batches += group
        return batches

    def padding_fraction(self) -> float:
        """Share of padding in this epoch's batches (all ranks), as the trainer will see it."""
        padded = real = 0
        for batch in self._batches:
            for start in range(0, len(batch), self.batch_size):
                mine = [self.pairs[i] for i in batch[start : start + self.batch_size]]
                lengths = [len(p.chosen_ids) for p in mine] + [len(p.rejected_ids) for p in mine]
                padded, real = padded + max(lengths) * len(lengths), real + sum(lengths)
        return (padded - real) / max(padded, 1)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.position >= len(self._batches) * self.grad_accum:
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches()
        step, micro = divmod(self.position, self.grad_accum)
        self.position += 1
        start = (micro * self.world_size + self.rank) * self.batch_size
        mine = self._batches[step][start : start + self.batch_size]
        return collate_pairs([self.pairs[i] for i in mine], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = self._epoch_batches()


@torch.no_grad()
def compute_reference_logps(reference: nn.Module, pairs: list[EncodedPair], batch_size: int, pad_id: int, env, amp_dtype) -> torch.Tensor:
    """[pairs, 2] (chosen, rejected) summed reply log-probs under ``reference`` in eval mode;
    the ranks share the work. Batches of similar length; a progress line at most every 10 s."""
    reference.to(env.device).eval()
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i].length, i))[env.rank :: env.world_size]
    values = torch.zeros(len(pairs), 2, dtype=torch.float32)
    start_time = last_report = time.perf_counter()
    with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = collate_pairs([pairs[i] for i in index], pad_id)
            logps, _ = sequence_logps(reference, {k: batch[k].to(env.device) for k in ("input_ids", "labels")})
            values[index] = logps.float().cpu().view(2, -1).T
            done, now = start + len(index), time.perf_counter()
            if env.is_main and (now - last_report >= 10 or done == len(order)):
                say(f"reference log-probs: {done:,}/{len(order):,} pairs{' (this rank)' if env.is_distributed else ''}, "
                    f"{now - start_time:.1f} s ({done / max(now - start_time, 1e-9):,.1f} pairs/s)")
                last_report = now
    # Other ranks' rows are zero here; summing gives every rank all of them, exactly.
    return torch.tensor(env.all_reduce_sum(values.flatten().tolist()), dtype=torch.float32).view(-1, 2)


def _fingerprint(reference_dir: Path, pairs: list[EncodedPair], amp_dtype, device, batch_size: int) -> str:
    """What the reference log-probs depend on: the weights, the token ids, the numerics."""
    h = hashlib.sha256(f"{amp_dtype}|{device.type}|{batch_size}".encode())
    for path in sorted(p for p in reference_dir.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    for p in pairs:
        for seq in (p.chosen_ids, p.chosen_labels, p.rejected_ids, p.rejected_labels):
            h.update(array("q", seq).tobytes() + b"|")
    return h.hexdigest()


def attach_reference_logps(reference: nn.Module, reference_dir: Path, pairs: list[EncodedPair], batch_size: int, pad_id: int,
                           env, amp_dtype, run_dir: Path) -> None:  # fmt: skip
    """Set every pair's reference log-probs: from the run dir's cache when its fingerprint
    matches (a resumed run reuses exactly the values it trained with), else computed and cached."""
    cache, values = run_dir / REFERENCE_CACHE, None
    fingerprint = _fingerprint(reference_dir, pairs, amp_dtype, env.device, batch_size) if env.is_main else ""
    if env.is_main and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved.get("fingerprint") == fingerprint and saved["logps"].shape == (len(pairs), 2):
            values = saved["logps"]
            say(f"reference log-probs: {len(pairs):,} pairs from {cache}")
    values = env.broadcast_object(values)
    if values is None:
        values = compute_reference_logps(reference, pairs, batch_size, pad_id, env, amp_dtype)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp")
            torch.save({"fingerprint": fingerprint, "logps": values}, tmp)
            tmp.replace(cache)
    for pair, (chosen, rejected) in zip(pairs, values.tolist()):
        pair.reference_chosen, pair.reference_rejected = chosen, rejected


@dataclass
class PreferenceData:
    train: list[EncodedPair]
    val: list[EncodedPair]
    report: dict


def _read(paths: list[str], skip_bad: bool, what: str):
    stats = ReadStats()
    pairs = list(read_preference_pairs(paths, skip_bad=skip_bad, stats=stats))
    if not pairs:
        raise ConfigError(f"dpo.{what}: no preference pairs in {paths}")
    read = {"files": [f["path"] for f in stats.files], "records": stats.documents,
            "bad_records": stats.bad_lines, "bad_examples": stats.bad_examples}
    return pairs, read


def prepare_preference_data(dcfg, seq_len: int, tokenizer) -> PreferenceData:
    """Read ``dcfg``'s pairs, hold out a validation share (by a stable hash) unless ``dcfg.val``
    names files, and encode both within ``seq_len`` by ``dcfg.overlong``."""
    if not dcfg.train:
        raise ConfigError("dpo.train is not set: name preference jsonl files ({'chosen', 'rejected'} pairs)")
    train, read = _read(dcfg.train, dcfg.skip_bad, "train")
    report: dict = {"train_read": read}
    if dcfg.val:
        val, report["val_read"] = _read(dcfg.val, dcfg.skip_bad, "val")
    else:
        # Split by prompt: pairs sharing a prompt (several per prompt is common) stay on one side.
        val = [p for p in train if _held_out(p.prompt, dcfg.val_fraction)]
        train = [p for p in train if not _held_out(p.prompt, dcfg.val_fraction)]
    encoded = {}
    for what, pairs in (("train", train), ("val", val)):
        stats = PreferenceStats()
        encoded[what] = [e for p in pairs if (e := fit_pair(p, tokenizer, seq_len, dcfg.overlong, stats)) is not None]
        report[f"{what}_pairs"] = stats.as_dict()
    if not encoded["train"]:
        raise ConfigError(f"dpo.train: every pair is longer than train.seq_len={seq_len} (dpo.overlong={dcfg.overlong})")
    return PreferenceData(encoded["train"], encoded["val"], report)


def _reference_model(model: nn.Module, parent: Path, reference_dir: Path, mode: str, tokenizer_sha: str) -> nn.Module:
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import tokenizer_sha256

    if reference_dir.resolve() == parent.resolve():
        # Precomputing scores with the policy itself before its first step: no second copy.
        return model if mode == "precomputed" else copy.deepcopy(model)
    reference = load_pretrained(reference_dir, device="cpu", dtype=torch.float32)
    try:
        same_tokenizer = tokenizer_sha256(reference_dir) == tokenizer_sha
    except FileNotFoundError:
        same_tokenizer = reference.config.vocab_size == model.config.vocab_size
    if not same_tokenizer:
        raise ConfigError(f"dpo.reference_from={reference_dir}: its tokenizer differs from train.init_from's; DPO compares "
                          "log-probabilities of the same tokens, so both must share one")  # fmt: skip
    return reference


def train_dpo(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Align ``recipe.train.init_from`` with ``recipe.dpo``'s preference pairs."""
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer, tokenizer_sha256

    cfg, dcfg = recipe.train, recipe.dpo
    if not cfg.init_from:
        raise ConfigError("train.init_from is not set: DPO starts from a fine-tuned checkpoint (a run directory or checkpoint)")
    run_dir = Path(cfg.out_dir or Path(recipe.out_dir) / "dpo")
    if not resume and latest_checkpoint(run_dir) is not None:  # before scoring the reference, not after
        raise ConfigError(f"{run_dir} already has checkpoints; pass --resume to continue that run, or choose another train.out_dir")
    with training_session(cfg.device, cfg.num_threads) as env:
        parent = as_config_error("train.init_from", resolve_checkpoint, cfg.init_from)
        reference_dir = as_config_error("dpo.reference_from", resolve_checkpoint, dcfg.reference_from) if dcfg.reference_from else parent
        tokenizer = load_tokenizer(parent)
        torch.manual_seed(cfg.seed)
        model = load_pretrained(parent, device="cpu", dtype=torch.float32)
        if cfg.seq_len > model.config.max_seq_len:
            raise ConfigError(f"train.seq_len={cfg.seq_len} exceeds the checkpoint's max_seq_len={model.config.max_seq_len}")
        data = prepare_preference_data(dcfg, cfg.seq_len, tokenizer)
        # The held-out set is the first eval_batches global batches of pairs, as in pretraining.
        data.val = data.val[: cfg.eval_batches * cfg.batch_size * cfg.grad_accum * env.world_size]
        # Every rank must evaluate (its collectives pair up with the others'): equal shares.
        data.val = data.val[: len(data.val) // env.world_size * env.world_size]
        pad_id = tokenizer.token_to_id("<|endoftext|>") or 0
        reference = _reference_model(model, parent, reference_dir, dcfg.reference, tokenizer_sha256(parent))
        if dcfg.reference == "precomputed":
            amp_dtype = resolve_dtype(cfg.dtype, env.device)
            attach_reference_logps(reference, reference_dir, data.train + data.val, cfg.batch_size, pad_id, env, amp_dtype, run_dir)
            reference = None  # a separately loaded reference is freed here
        try:
            train_data = PreferenceBatches(data.train, cfg.batch_size, pad_id, cfg.seed, env.rank, env.world_size, cfg.grad_accum)
        except ValueError as exc:
            raise ConfigError(f"dpo.train: {exc}; use more pairs or a smaller train.batch_size") from None
        mine = sorted(data.val[env.rank :: env.world_size], key=lambda p: p.length)
        eval_data = [collate_pairs(mine[i : i + cfg.batch_size], pad_id) for i in range(0, len(mine), cfg.batch_size)] or None
        used = dataclasses.replace(
            recipe, model=model.config, train=dataclasses.replace(cfg, out_dir=str(run_dir), tokenizer=str(parent)),
            dpo=dataclasses.replace(dcfg, reference_from=str(reference_dir)),
        )  # fmt: skip
        # A frozen reference adds one forward (2N of the 6N FLOPs per token) to every step.
        flops = flops_per_token(model.config, cfg.seq_len) * (8 / 6 if reference is not None else 1)
        trainer = Trainer(
            model, DPO(dcfg.beta, reference, dcfg.sft_weight), train_data, cfg,
            run_dir=run_dir, env=env, eval_data=eval_data, tokenizer_dir=parent, recipe=to_dict(used),
            parent_checkpoint=str(parent), flops_per_token=flops, hooks=hooks, stage="dpo",
        )  # fmt: skip
        if env.is_main:
            report = {**data.report, "padding_fraction": round(train_data.padding_fraction(), 4), "beta": dcfg.beta,
                      "reference": dcfg.reference, "reference_from": str(reference_dir), "seq_len": cfg.seq_len,
                      "eval_pairs": len(data.val)}  # fmt: skip
            write_json_atomic(run_dir / "dpo_data.json", report)
            t = data.report["train_pairs"]
            say(f"dpo: {model.config.hf_architecture} from {parent}, reference {dcfg.reference} ({reference_dir}), β={dcfg.beta}; "
                f"{t['kept']:,} pairs ({len(data.val):,} held out; over-long: {t['truncated_overlong']} truncated, "
                f"{t['dropped_overlong']} dropped; bad records {data.report['train_read']['bad_records']}; "
                f"padding {report['padding_fraction']:.1%}) → {run_dir}")  # fmt: skip
        return trainer.fit(resume=resume)
