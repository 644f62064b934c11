"""AdamW parameter groups: no weight decay on norms, biases and embeddings unless asked."""

import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.optim import build_optimizer, param_groups


def _groups(model, **kw):
    groups = param_groups(model, weight_decay=0.1, **kw)
    return {name: g["weight_decay"] for g in groups for name in g["names"]}


def test_no_decay_on_norms_biases_and_embeddings():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, attention_bias=True, tie_embeddings=True)
    decay = _groups(Transformer(cfg))
    assert decay["model.embed_tokens.weight"] == 0.0
    assert "lm_head.weight" not in decay  # tied: one parameter, counted once, as the embedding
    assert decay["model.layers.0.self_attn.q_proj.bias"] == 0.0
    assert decay["model.layers.0.input_layernorm.weight"] == 0.0
    assert decay["model.norm.weight"] == 0.0
    assert decay["model.layers.0.self_attn.q_proj.weight"] == 0.1
    assert decay["model.layers.0.mlp.down_proj.weight"] == 0.1


def test_decay_embeddings_flag_and_untied_head():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, tie_embeddings=False)
    model = Transformer(cfg)
    assert _groups(model)["lm_head.weight"] == 0.1  # an output projection, not an embedding lookup
    assert _groups(model)["model.embed_tokens.weight"] == 0.0
    assert _groups(model, decay_embeddings=True)["model.embed_tokens.weight"] == 0.1


def test_frozen_parameters_are_left_out_and_every_trainable_one_is_in():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    model = Transformer(cfg)
    model.model.layers[0].requires_grad_(False)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert isinstance(opt, torch.optim.AdamW)
