"""Loss objects (token-mean CE, z-loss, MoE auxiliary loss) and the FLOPs-per-token count used for MFU."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.model import ModelConfig, Transformer
from lmforge.train.flops import flops_per_token, matmul_params
from lmforge.train.objectives import IGNORE_INDEX, LanguageModeling


@pytest.fixture
def model():
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2))


def test_language_modeling_is_token_mean_ce_plus_z_loss_over_unmasked_tokens(model):
    x = torch.randint(0, 64, (2, 10))
    y = torch.randint(0, 64, (2, 10))
    y[0, :4] = IGNORE_INDEX
    objective = LanguageModeling(z_loss=1e-2)
    assert objective.loss_tokens({"labels": y}) == 16
    loss, metrics = objective(model, {"input_ids": x, "labels": y})
    logits = model(x).logits.float()
    keep = y != IGNORE_INDEX
    ce = F.cross_entropy(logits[keep], y[keep])
    z = (torch.logsumexp(logits[keep], -1) ** 2).mean()
    torch.testing.assert_close(metrics["ce"], ce)
    torch.testing.assert_close(metrics["z_loss"], z)
    torch.testing.assert_close(loss, ce + 1e-2 * z)
    loss_sum, n = objective.evaluate(model, {"input_ids": x, "labels": y})
    assert n == 16 and loss_sum == pytest.approx(float(ce.detach()) * 16, rel=1e-5)
    assert "expert_load" not in metrics  # dense


def test_moe_objective_adds_scaled_aux_loss():
    moe = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, num_experts=4,
                                  num_experts_per_tok=2, qk_norm=True, aux_loss_coef=0.1))
    x = torch.randint(0, 64, (2, 8))
    loss, metrics = LanguageModeling()(moe, {"input_ids": x, "labels": x})
    assert metrics["expert_load"].shape == (2, 4)
    torch.testing.assert_close(loss, metrics["ce"] + metrics["aux_loss"])
    assert 0.05 < float(metrics["aux_loss"]) < 0.5  # ≈ coef · 1.0 near uniform routing


def test_flops_per_token_counts_active_matmul_weights():
    dense = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=128)
    model = Transformer(dense)
    # tied embeddings: every parameter except the norms takes part in a matmul, lm_head included
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert matmul_params(dense) == model.num_parameters() - norms
    assert flops_per_token(dense, 16) == 6 * matmul_params(dense) + 12 * 2 * 4 * 16 * 16
    moe = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, num_experts=8,
                      num_experts_per_tok=2, moe_ffn_hidden=32, qk_norm=True)
    two_experts = ModelConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, num_experts=2,
                              num_experts_per_tok=2, moe_ffn_hidden=32, qk_norm=True)
    # only the top-k experts count: 8 experts cost what 2 do, but for the router's width
    assert matmul_params(moe) - matmul_params(two_experts) == 2 * 64 * 6
