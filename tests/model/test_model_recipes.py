"""The reference recipes build the published MiniMind2 shapes, and ``lmforge model info`` reports them.

Parameter counts are checked three ways: lmforge's model built on the ``meta`` device, the same
config built by ``transformers`` from our ``config.json`` contents (an independent
implementation), and the exact published-size figure written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.model import Transformer
from lmforge.model.hf import to_hf_config
from lmforge.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# name: (HF architecture, total parameters, active per token, the published size in millions)
EXPECTED = {
    "minimind2-small": ("LlamaForCausalLM", 26_878_464, 26_878_464, 26),
    "minimind2": ("LlamaForCausalLM", 104_030_976, 104_030_976, 104),
    "minimind2-moe": ("Qwen2MoeForCausalLM", 145_034_880, 91_950_720, 145),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_recipe_builds_the_published_shape(name):
    arch, total, _, published_m = EXPECTED[name]
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    cfg = recipe.model
    assert recipe.name == name
    assert cfg.hf_architecture == arch
    with torch.device("meta"):
        ours = Transformer(cfg)
    assert ours.num_parameters() == total
    assert abs(total / 1e6 - published_m) / published_m < 0.04  # within 4% of the published size

    from transformers import AutoConfig, AutoModelForCausalLM

    hf_dict = to_hf_config(cfg)
    hf_config = AutoConfig.for_model(**{k: v for k, v in hf_dict.items() if k != "architectures"})
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(hf_config)
    assert type(hf).__name__ == arch
    assert hf.num_parameters() == total

    # GPU-oriented training settings, within the ranges the header comments promise.
    train = recipe.train
    assert train.dtype == "bfloat16" and 512 <= train.seq_len <= 1024
    assert train.schedule in ("cosine", "wsd") and 1e-4 <= train.lr <= 1e-3


def test_moe_recipe_routes_top2_of_4_with_a_shared_expert():
    cfg = load_recipe(RECIPES / "minimind2-moe.yaml").model
    assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.num_shared_experts) == (4, 2, 1)
    assert (cfg.d_model, cfg.n_layers) == (640, 8)
    hf = to_hf_config(cfg)
    assert hf["qkv_bias"] is False and hf["shared_expert_intermediate_size"] == cfg.moe_ffn_hidden


def test_recipe_overrides_reach_the_model():
    recipe = load_recipe(RECIPES / "minimind2-small.yaml", ["model.n_heads=8", "model.n_kv_heads=2"])
    with torch.device("meta"):
        assert Transformer(recipe.model).num_parameters() == 25_829_888  # MiniMind2's released head layout


# --- lmforge model info ------------------------------------------------------------------


def _invoke(*args: str):
    from typer.testing import CliRunner

    from lmforge.model.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_model_info_json(name):
    from lmforge.train.flops import flops_per_token

    arch, total, active, _ = EXPECTED[name]
    result = _invoke("info", str(RECIPES / f"{name}.yaml"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert info["hf_architecture"] == arch
    assert info["parameters"]["total"] == total
    assert info["parameters"]["active_per_token"] == active
    assert info["parameters"]["non_embedding"] == total - 6400 * recipe.model.d_model
    assert info["seq_len"] == recipe.train.seq_len
    assert info["flops_per_token"]["training"] == pytest.approx(flops_per_token(recipe.model, recipe.train.seq_len))
    assert info["flops_per_token"]["forward"] == pytest.approx(info["flops_per_token"]["training"] / 3)


def test_model_info_text_and_overrides():
    result = _invoke("info", str(RECIPES / "minimind2-moe.yaml"), "--set", "model.num_experts=8", "--seq-len", "1024")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Qwen2MoeForCausalLM" in out and "8 routed + 1 shared experts, top-2" in out
    assert "active per token" in out and "at seq_len 1,024" in out
    dense = _invoke("info", str(RECIPES / "minimind2-small.yaml"))
    assert "LlamaForCausalLM" in dense.output and "total 26,878,464 (26.88M)" in dense.output
    assert "active per token" not in dense.output


def test_model_info_on_a_checkpoint_directory(tmp_path, make_config):
    from lmforge.model.hf import save_pretrained

    save_pretrained(Transformer(make_config("Qwen3MoeForCausalLM")), tmp_path / "ckpt")
    result = _invoke("info", str(tmp_path / "ckpt"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hf_architecture"] == "Qwen3MoeForCausalLM"
    empty = _invoke("info", str(tmp_path))
    assert empty.exit_code != 0 and "config.json" in empty.output


def test_model_info_bad_override_is_a_config_error():
    from lmforge.config import ConfigError

    result = _invoke("info", str(RECIPES / "minimind2-small.yaml"), "--set", "model.n_headz=4")
    assert isinstance(result.exception, ConfigError) and "did you mean 'n_heads'" in str(result.exception)
