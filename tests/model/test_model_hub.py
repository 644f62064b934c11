"""Where checkpoints come from: local directories as they are, hub repo ids through the hub cache.

Never touches the network: hub lookups run with ``HF_HUB_OFFLINE=1`` against a hand-made cache
in the hub's layout (``models--org--name/snapshots/<commit>/`` + ``refs/<branch>``), or with
``snapshot_download`` replaced by a spy.
"""

from __future__ import annotations

import pytest
import torch

from lmforge.model import Transformer
from lmforge.model.hf import HUB_ALLOW_PATTERNS, load_pretrained, resolve_model_dir, save_pretrained

COMMIT = "0123456789abcdef0123456789abcdef01234567"
COMMIT_V1 = "fedcba9876543210fedcba9876543210fedcba98"


def _hub_cache(tmp_path, make_config, randomize):
    """A hub cache holding repo acme/tiny: main -> COMMIT (a Qwen3 model), v1 -> COMMIT_V1 (Llama)."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    models = {}
    for commit, ref, arch in ((COMMIT, "main", "Qwen3ForCausalLM"), (COMMIT_V1, "v1", "LlamaForCausalLM")):
        model = randomize(Transformer(make_config(arch))).eval()
        save_pretrained(model, repo / "snapshots" / commit)
        (repo / "snapshots" / commit / "tokenizer.json").write_text("{}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        models[ref] = model
    return cache, models


def test_local_directory_is_used_as_is(tmp_path):
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(str(tmp_path)) == tmp_path


def test_missing_local_paths_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve_model_dir(tmp_path / "does" / "not" / "exist")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resolve_model_dir("./not-here")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="must be a directory"):
        resolve_model_dir(tmp_path / "weights.safetensors")


def test_offline_hub_cache_snapshot(tmp_path, monkeypatch, make_config, randomize):
    cache, _ = _hub_cache(tmp_path, make_config, randomize)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: read at call time
    main = resolve_model_dir("acme/tiny", cache_dir=cache)
    assert main == cache / "models--acme--tiny" / "snapshots" / COMMIT
    assert resolve_model_dir("acme/tiny", revision="v1", cache_dir=cache).name == COMMIT_V1
    assert resolve_model_dir("acme/tiny", revision=COMMIT_V1, cache_dir=cache).name == COMMIT_V1
    with pytest.raises(FileNotFoundError, match=r"acme/other.*local hub cache \(HF_HUB_OFFLINE is set\)"):
        resolve_model_dir("acme/other", cache_dir=cache)


def test_load_pretrained_from_hub_id(tmp_path, monkeypatch, make_config, randomize):
    import huggingface_hub.constants

    cache, models = _hub_cache(tmp_path, make_config, randomize)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # the default cache_dir
    ids = torch.randint(0, 96, (1, 6))
    for revision, ref in ((None, "main"), ("v1", "v1")):
        loaded = load_pretrained("acme/tiny", revision=revision)
        assert loaded.config.hf_architecture == models[ref].config.hf_architecture
        with torch.no_grad():
            assert torch.equal(loaded(ids).logits, models[ref](ids).logits)


def test_online_path_asks_only_for_checkpoint_files(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE the real download call is made, restricted to the files a
    checkpoint needs (a spy stands in for the network)."""
    import huggingface_hub

    calls = []

    def spy(**kwargs):
        calls.append(kwargs)
        return str(tmp_path)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    assert resolve_model_dir("Qwen/Qwen3-0.6B", revision="main") == tmp_path
    (call,) = calls
    assert call["repo_id"] == "Qwen/Qwen3-0.6B" and call["revision"] == "main"
    assert call["local_files_only"] is False
    for needed in ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
        assert needed in call["allow_patterns"]
    assert call["allow_patterns"] == HUB_ALLOW_PATTERNS
    assert not any(p.endswith((".bin", ".pth", ".gguf")) for p in call["allow_patterns"])
