"""``lmforge model info``: what a recipe's model is before any training — its HF architecture,
shape, parameter counts and compute per token.

    lmforge model info recipes/minimind2-small.yaml
    lmforge model info recipes/minimind2-moe.yaml --set model.num_experts=8 --json
    lmforge model info runs/demo/pretrain-*/checkpoints/step-000800     # a checkpoint directory

The model is built on the ``meta`` device (shapes only, no memory, no initialization), so a
billion-parameter recipe answers at once. Counts:

- *total*: every parameter once (a tied output projection is the embedding);
- *non-embedding*: total minus the token embedding (Kaplan et al.'s N);
- *active per token*: for MoE, total minus the routed experts a token does not visit.

FLOPs per token use the trainer's MFU accounting (``lmforge.train.flops``, PaLM's
``6·N + 12·L·H·Q·T`` for training; a forward pass is a third of it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import RecipeArgument, SetOption
from lmforge.io import human

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """Inspect model shapes: parameters, FLOPs, HF architecture."""
    # A callback keeps `info` a subcommand even while it is the only one (Typer would otherwise
    # collapse a one-command app into that command when the app is run on its own).


def describe(cfg, seq_len: int, name: str = "") -> dict:
    """The numbers ``model info`` prints, for a ``ModelConfig``, as a JSON-friendly dict."""
    import torch

    from lmforge.model.transformer import Transformer
    from lmforge.train.flops import flops_per_token

    with torch.device("meta"):
        model = Transformer(cfg)
    total = model.num_parameters()
    embedding = model.model.embed_tokens.weight.numel()
    active = total
    if cfg.is_moe:
        per_expert = sum(p.numel() for p in model.model.layers[0].mlp.experts[0].parameters())
        active = total - cfg.n_layers * (cfg.num_experts - cfg.num_experts_per_tok) * per_expert
    train_flops = flops_per_token(cfg, seq_len)
    shape = {
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_hidden": cfg.ffn_hidden,
        "qk_norm": cfg.qk_norm,
        "attention_bias": cfg.attention_bias,
        "tie_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling_factor": cfg.rope_scaling_factor,
        "max_seq_len": cfg.max_seq_len,
    }
    if cfg.is_moe:
        shape.update(
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            num_shared_experts=cfg.num_shared_experts,
            moe_ffn_hidden=cfg.moe_ffn_hidden,
        )
    return {
        "name": name,
        "hf_architecture": cfg.hf_architecture,
        "shape": shape,
        "parameters": {"total": total, "non_embedding": total - embedding, "embedding": embedding, "active_per_token": active},
        "weights_bytes": {"float32": 4 * total, "bfloat16": 2 * total},
        "seq_len": seq_len,
        "flops_per_token": {"forward": train_flops / 3, "training": train_flops},
    }


def _format(info: dict) -> str:
    s, p, f = info["shape"], info["parameters"], info["flops_per_token"]
    heads = f"{s['n_heads']} query / {s['n_kv_heads']} KV heads × {s['head_dim']}"
    attention = ", QK-norm" if s["qk_norm"] else ""
    attention += ", q/k/v bias" if s["attention_bias"] else ""
    theta = s["rope_theta"]
    rope = f"RoPE θ {theta:,.0f}" if float(theta).is_integer() else f"RoPE θ {theta:g}"
    if s["rope_scaling_factor"] != 1.0:
        rope += f" (linear ×{s['rope_scaling_factor']:g})"
    if "num_experts" in s:
        shared = f" + {s['num_shared_experts']} shared" if s["num_shared_experts"] else ""
        ffn = f"MoE {s['num_experts']} routed{shared} experts, top-{s['num_experts_per_tok']}, SwiGLU {s['moe_ffn_hidden']}"
    else:
        ffn = f"SwiGLU {s['ffn_hidden']}"
    lines = [
        f"{info['name'] or 'model'}: {info['hf_architecture']}",
        f"  shape        d_model {s['d_model']}, {s['n_layers']} layers, {heads}{attention}",
        f"               {ffn}, vocab {s['vocab_size']:,}, {'tied' if s['tie_embeddings'] else 'untied'} embeddings, {rope}",
        f"  parameters   total {p['total']:,} ({human(p['total'])}), non-embedding {p['non_embedding']:,} ({human(p['non_embedding'])})",
    ]
    if p["active_per_token"] != p["total"]:
        lines.append(f"               active per token {p['active_per_token']:,} ({human(p['active_per_token'])})")
    lines += [
        f"  weights      {human(info['weights_bytes']['float32'])}B fp32, {human(info['weights_bytes']['bfloat16'])}B bf16",
        f"  FLOPs/token  forward {human(f['forward'])}, training {human(f['training'])} (at seq_len {info['seq_len']:,})",
    ]
    return "\n".join(lines)


@app.command("info", help="Print a recipe's (or checkpoint's) HF architecture, shape, parameter counts and FLOPs per token.")
def info(
    recipe_path: RecipeArgument,
    overrides: SetOption = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Context length for the attention FLOPs (default: the recipe's train.seq_len).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    if Path(recipe_path).is_dir():  # a checkpoint directory: its config.json is the shape
        from lmforge.model.hf import from_hf_config

        config_path = Path(recipe_path) / "config.json"
        if not config_path.is_file():
            raise typer.BadParameter(f"{recipe_path}: a directory without config.json is not a checkpoint", param_hint="RECIPE")
        try:
            cfg = from_hf_config(json.loads(config_path.read_text()), str(config_path))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="RECIPE") from None
        name, default_seq = Path(recipe_path).name, cfg.max_seq_len
    else:
        from lmforge.cli_common import load_recipe_for_cli

        recipe = load_recipe_for_cli(recipe_path, overrides)
        cfg, name, default_seq = recipe.model, recipe.name, recipe.train.seq_len
    result = describe(cfg, seq_len or default_seq, name)
    print(json.dumps(result, indent=2) if as_json else _format(result))
