"""LoRA through ``peft``: low-rank adapters trained on chat data over a frozen checkpoint, and merging them.

``lmforge lora`` is SFT (same chat data, packing, ``LanguageModeling`` loss and ``Trainer``) with
one model transform: ``peft.get_peft_model`` adds adapters to the projections named in the
recipe's ``lora`` section and freezes everything else, so the optimizer sees only adapter
weights (and ``lora.modules_to_save``, trained in full)::

    lmforge lora recipes/sft.yaml --set train.init_from=runs/demo/sft --set lora.rank=16
    lmforge lora merge runs/default/lora --out runs/default/lora-merged   # a plain checkpoint
    lmforge chat runs/default/lora-merged

Each checkpoint is a peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``,
``task_type`` CAUSAL_LM, ``base_model_name_or_path`` the base checkpoint's absolute path) with the
tokenizer files and the usual trainer state beside it, so ``transformers`` users load it as is::

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, "runs/default/lora/checkpoints/step_00001000")

What peft needs from lmforge's ``Transformer``: nothing beyond module names (already HF's) and a
``config`` (a dataclass, which peft reads with ``dataclasses.asdict``). The generic ``PeftModel``
that ``get_peft_model`` returns for ``task_type=None`` calls the model's own ``forward``;
``PeftModelForCausalLM`` would call it with HF-only arguments and ask for
``prepare_inputs_for_generation``. So training uses the generic class and the saved config says
CAUSAL_LM, which is what the adapter is once loaded over the HF-format base.

Python::

    result = train_lora(load_recipe("recipes/sft.yaml", ["train.init_from=runs/demo/sft"]))
    merged = merge_lora(result.checkpoint, Path("merged/"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from lmforge import __version__
from lmforge.config import ConfigError, to_dict
from lmforge.eval.bpb import token_bytes_for
from lmforge.io import replace_dir, write_json_atomic
from lmforge.train.checkpoint import (
    CHECKPOINTS_DIR, META, META_FORMAT, copy_tokenizer_files, latest_checkpoint, read_meta, resolve_checkpoint,
)
from lmforge.train.distributed import training_session
from lmforge.train.flops import flops_per_token, matmul_params
from lmforge.train.metrics import say
from lmforge.train.objectives import LanguageModeling
from lmforge.train.pretrain import as_config_error
from lmforge.train.sft import describe_chat_data, prepare_chat_data
from lmforge.train.trainer import Trainer, TrainResult

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def peft_config(lcfg, base: Path):
    """The ``peft.LoraConfig`` for a recipe's ``lora`` section (``LoRAConfig``) over ``base``."""
    from peft import LoraConfig

    return LoraConfig(
        r=lcfg.rank, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout, target_modules=list(lcfg.target_modules),
        modules_to_save=list(lcfg.modules_to_save) or None, bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=str(Path(base).resolve()),
    )  # fmt: skip


def add_adapters(model: nn.Module, config, what: str = "lora") -> nn.Module:
    """Wrap ``model`` with peft adapters for ``config`` (a ``peft.LoraConfig``); only they (and
    ``modules_to_save``) keep ``requires_grad``. The saved config keeps ``config``'s task type
    (CAUSAL_LM when unset; see the module docstring) and ``base_model_name_or_path``."""
    from peft import get_peft_model

    names = [name for name, _ in model.named_modules()]
    for wanted in config.modules_to_save or []:
        if not any(n == wanted or n.endswith(f".{wanted}") for n in names):
            raise ConfigError(f"{what}.modules_to_save: the model has no module named {wanted!r} (e.g. lm_head, embed_tokens)")
    # task_type None: the generic PeftModel, which calls our forward with our arguments. The
    # base path is set after wrapping, where get_peft_model would overwrite it (with None).
    task_type, base = config.task_type, config.base_model_name_or_path
    try:
        wrapped = get_peft_model(model, dataclasses.replace(config, task_type=None, base_model_name_or_path=None))
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(f"{what}.target_modules: {exc}") from None
    saved = wrapped.peft_config["default"]
    saved.task_type, saved.base_model_name_or_path = task_type or "CAUSAL_LM", base
    return wrapped


def save_adapter(model: nn.Module, directory: Path) -> None:
    """The Trainer's ``save_weights``: a peft adapter (``adapter_config.json`` in inference mode
    and ``adapter_model.safetensors``), the two files ``PeftModel.save_pretrained`` writes.

    Written here rather than by ``save_pretrained``, which adds an empty template model card and,
    to detect resized embeddings, calls ``from_pretrained`` on the model's config class (an
    HF-only method); embeddings are never resized here.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    # clone: safetensors refuses tensors that share storage (e.g. saved copies of tied layers)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    dataclasses.replace(model.peft_config["default"], inference_mode=True).save_pretrained(str(directory))


def load_adapter(model: nn.Module, directory: Path) -> None:
    """The Trainer's ``load_weights``: adapter weights from ``directory`` into ``model``, strictly.

    A mismatch (another rank, other target modules) raises ``RuntimeError``, which ``--resume``
    reports as a checkpoint that does not fit the recipe.
    """
    from peft import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict

    directory = Path(directory)
    if not (directory / ADAPTER_WEIGHTS).is_file() and not (directory / "adapter_model.bin").is_file():
        raise RuntimeError(f"{directory}: no {ADAPTER_WEIGHTS}: not a LoRA adapter checkpoint")
    state = load_peft_weights(str(directory), device="cpu")
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RuntimeError(f"{directory}: adapter weights do not match; missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise RuntimeError(f"{directory}: {name} has shape {tuple(tensor.shape)}, this model expects {tuple(expected[name].shape)}")
    set_peft_model_state_dict(model, state)


def parameter_counts(model: nn.Module) -> dict:
    """Trainable and total parameters (shared tensors counted once)."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return {"trainable_parameters": trainable, "total_parameters": total, "trainable_fraction": trainable / max(total, 1)}


def lora_flops_per_token(model: nn.Module, model_cfg, seq_len: int) -> float:
    """Training FLOPs per token with frozen weights: their weight gradients are never computed,
    so a frozen matmul weight costs 4 FLOPs per token (forward, input gradient), not 6; adapter
    weights and ``modules_to_save`` copies (which replace their frozen original) cost 6."""
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    saved = sum(p.numel() for n, p in model.named_parameters()
                if p.requires_grad and ".lora_" not in n and p.ndim >= 2 and id(p) not in embeddings)  # fmt: skip
    return flops_per_token(model_cfg, seq_len) - 2.0 * matmul_params(model_cfg) + 2.0 * saved + 6.0 * lora


def train_lora(recipe, resume: bool = False, hooks: Iterable = ()) -> TrainResult:
    """Train adapters (``recipe.lora``) over ``recipe.train.init_from`` on ``recipe.sft``'s conversations."""
    from lmforge.model.hf import load_pretrained
    from lmforge.tokenizer.train import load_tokenizer

    cfg, scfg = recipe.train, recipe.sft
    if not cfg.init_from:
        raise ConfigError("train.init_from is not set: LoRA adapts a checkpoint (a run directory or checkpoint)")
    run_dir = Path(cfg.out_dir or Path(recipe.out_dir) / "lora")
    with training_session(cfg.device, cfg.num_threads) as env:
        # An adapter given here is refused by resolve_checkpoint, with the merge command to run.
        parent = as_config_error("train.init_from", resolve_checkpoint, cfg.init_from).resolve()
        tokenizer = load_tokenizer(parent)
        torch.manual_seed(cfg.seed)  # the adapters' initialization
        base = as_config_error("train.init_from", lambda p: load_pretrained(p, device="cpu", dtype=torch.float32), parent)
        if cfg.seq_len > base.config.max_seq_len:
            raise ConfigError(f"train.seq_len={cfg.seq_len} exceeds the checkpoint's max_seq_len={base.config.max_seq_len}")
        model_cfg = base.config
        model = add_adapters(base, peft_config(recipe.lora, parent))
        data = prepare_chat_data(scfg, cfg, tokenizer, env)
        counts = parameter_counts(model)
        used = dataclasses.replace(recipe, model=model_cfg, train=dataclasses.replace(cfg, out_dir=str(run_dir), tokenizer=str(parent)))
        trainer = Trainer(
            model, LanguageModeling(z_loss=cfg.z_loss, token_bytes=token_bytes_for(parent, model_cfg.vocab_size)), data.train, cfg,
            run_dir=run_dir, env=env, eval_data=data.eval, tokenizer_dir=parent, recipe=to_dict(used),
            parent_checkpoint=str(parent), flops_per_token=lora_flops_per_token(model, model_cfg, cfg.seq_len),
            hooks=hooks, save_weights=save_adapter, load_weights=load_adapter, stage="lora",
        )  # fmt: skip
        if env.is_main:
            write_json_atomic(run_dir / "lora_data.json", {**data.report, **counts, "lora": to_dict(recipe.lora)})
            say(f"lora: rank {recipe.lora.rank} on {', '.join(recipe.lora.target_modules)} of {model_cfg.hf_architecture} "
                f"from {parent}; {counts['trainable_parameters']:,} of {counts['total_parameters']:,} parameters trained "
                f"({counts['trainable_fraction']:.2%}); {describe_chat_data(data, cfg.seq_len)} → {run_dir}")
        return trainer.fit(resume=resume)


# --- merging ------------------------------------------------------------------------------------


def _adapter_dir(adapter: Path) -> Path:
    """``adapter`` itself, or the latest checkpoint of a LoRA run directory (or its checkpoints/)."""
    adapter = Path(adapter)
    if (adapter / ADAPTER_CONFIG).is_file():
        return adapter
    found = latest_checkpoint(adapter.parent if adapter.name == CHECKPOINTS_DIR else adapter)
    if found is not None and (found / ADAPTER_CONFIG).is_file():
        return found
    if (adapter / "config.json").is_file() or found is not None:
        raise ConfigError(f"adapter={adapter}: not a LoRA adapter (no {ADAPTER_CONFIG}); it is a full checkpoint or run already")
    raise ConfigError(f"adapter={adapter}: no {ADAPTER_CONFIG} here, and no checkpoints/step_* with one"
                      + ("" if adapter.exists() else " (no such directory)"))


def _base_dir(base: Path | str) -> Path:
    from lmforge.model.hf import resolve_model_dir

    if Path(base).expanduser().exists():
        return as_config_error("base", resolve_checkpoint, Path(base).expanduser())
    return as_config_error("base", resolve_model_dir, str(base))  # a hub id, as peft adapters from the hub name it


def _untie(model: nn.Module) -> None:
    """Give a tied ``lm_head`` its own copy: merging an adapter into one of the pair (or swapping
    in a ``modules_to_save`` copy) must not silently change the other."""
    if model.config.tie_embeddings:
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach().clone())


def _retie_if_equal(model: nn.Module) -> None:
    """Tie again when the output projection still equals the embedding; else record it untied."""
    if not model.config.tie_embeddings:
        return
    if torch.equal(model.lm_head.weight, model.model.embed_tokens.weight):
        model.tie_weights()
    else:
        model.config = dataclasses.replace(model.config, tie_embeddings=False)


def _saved_dtype(base_dir: Path) -> torch.dtype:
    hf = json.loads((base_dir / "config.json").read_text())
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    return getattr(torch, name) if isinstance(getattr(torch, name, None), torch.dtype) else torch.float32


def merge_lora(adapter: Path, out: Path, base: Path | None = None) -> Path:
    """Fold ``adapter``'s weights into its base; write a plain checkpoint to ``out`` (atomically).

    ``adapter`` is a LoRA checkpoint or run directory (its latest checkpoint); ``base`` defaults to
    the adapter's ``base_model_name_or_path``. The result is saved in the base's dtype, with the
    tokenizer files, and loads in ``lmforge chat`` and ``transformers`` like any checkpoint.
    """
    from peft import LoraConfig

    from lmforge.model.hf import load_pretrained, save_pretrained

    adapter_dir = _adapter_dir(Path(adapter)).resolve()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: already exists and is not empty; choose a new directory or remove it")
    try:
        config = LoraConfig.from_pretrained(str(adapter_dir))
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{adapter_dir / ADAPTER_CONFIG}: not a LoRA adapter config: {exc}") from None
    base = base or config.base_model_name_or_path
    if not base:
        raise ConfigError(f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path; name the base checkpoint with --base")
    base_dir = _base_dir(base)
    model = as_config_error("base", lambda p: load_pretrained(p, device="cpu", dtype=torch.float32), base_dir)
    _untie(model)
    # The adapter's weights replace any initialization, so none is computed (PiSSA & co. would
    # even rewrite the base weights).
    config = dataclasses.replace(config, init_lora_weights=False, inference_mode=True)
    peft_model = add_adapters(model, config, what=str(adapter_dir / ADAPTER_CONFIG))
    try:
        load_adapter(peft_model, adapter_dir)
    except RuntimeError as exc:
        raise ConfigError(f"adapter {adapter_dir} does not fit base {base_dir}: {exc}") from None
    merged = peft_model.merge_and_unload()
    _retie_if_equal(merged)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_pretrained(merged, tmp, dtype=_saved_dtype(base_dir))
        if (base_dir / "generation_config.json").is_file():  # the base's stop tokens, which may be several
            shutil.copy2(base_dir / "generation_config.json", tmp / "generation_config.json")
        tokenizer_src = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir
        as_config_error("tokenizer", lambda d: copy_tokenizer_files(d, tmp), tokenizer_src)
        adapter_meta = read_meta(adapter_dir)
        meta = {
            "format": META_FORMAT, "stage": "lora_merge", "base": str(base_dir), "adapter": str(adapter_dir),
            "parent_checkpoint": str(adapter_dir), "step": adapter_meta.get("step"),
            "lora": {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules or []),
                     "modules_to_save": sorted(config.modules_to_save or [])},
            "lmforge_version": __version__, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "recipe": adapter_meta.get("recipe", {}),
        }  # fmt: skip
        write_json_atomic(tmp / META, meta)  # last: a checkpoint is complete once lmforge.json exists
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
