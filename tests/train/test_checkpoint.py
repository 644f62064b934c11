"""Checkpoints: atomic writes (a failed save leaves the previous one intact), keep-last-K, latest/resolve, contents."""

import json
import shutil

import pytest
import torch

from lmforge.model import ModelConfig, Transformer
from lmforge.model.hf import load_pretrained, save_pretrained
from lmforge.train import checkpoint as ckpt


def _model():
    return Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2))


def _save(run_dir, step, model, keep_last=0, tokenizer_dir=None):
    return ckpt.save_checkpoint(
        run_dir, step, lambda d: save_pretrained(model, d), {"step": step, "x": torch.arange(3)},
        {"step": step, "recipe": {"name": "t"}}, tokenizer_dir=tokenizer_dir, keep_last=keep_last,
    )


def test_save_layout_latest_and_resolve(tmp_path):
    model = _model()
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "notes.txt").write_text("not a tokenizer file")
    path = _save(tmp_path / "run", 5, model, tokenizer_dir=tok)
    assert path == tmp_path / "run" / "checkpoints" / "step_00000005"
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "trainer_state.pt", "lmforge.json"} <= names
    assert "notes.txt" not in names
    assert json.loads((path / "lmforge.json").read_text())["format"] == ckpt.META_FORMAT
    assert torch.equal(ckpt.load_trainer_state(path)["x"], torch.arange(3))
    later = _save(tmp_path / "run", 12, model)
    assert ckpt.latest_checkpoint(tmp_path / "run") == later
    assert ckpt.resolve_checkpoint(tmp_path / "run") == later
    assert ckpt.resolve_checkpoint(tmp_path / "run" / "checkpoints") == later
    assert ckpt.resolve_checkpoint(path) == path
    assert ckpt.latest_checkpoint(tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "missing")
    torch.testing.assert_close(load_pretrained(later).state_dict(), model.state_dict())


def test_keep_last(tmp_path):
    model = _model()
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, model, keep_last=2)
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)] == [30, 40]
    _save(tmp_path, 50, model, keep_last=0)  # 0 keeps everything
    assert len(ckpt.list_checkpoints(tmp_path)) == 3


def test_failure_mid_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _model()
    good = _save(tmp_path, 100, model, keep_last=1)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def crash(*args, **kwargs):  # the disk fills up / the process dies while writing the state
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        _save(tmp_path, 200, model, keep_last=1)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before  # keep_last did not prune it
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000100"]  # temp dir cleaned up


def test_a_killed_save_leaves_only_a_hidden_temp_dir_that_is_ignored_then_swept(tmp_path):
    model = _model()
    good = _save(tmp_path, 1, model)
    # What SIGKILL in the middle of save_checkpoint leaves: a hidden, incomplete directory.
    partial = tmp_path / "checkpoints" / ".tmp-step_00000002-999"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    # and a step directory without lmforge.json (e.g. copied by hand) is not complete either
    (tmp_path / "checkpoints" / "step_00000003").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    _save(tmp_path, 2, model)
    assert not partial.exists()
    assert ckpt.checkpoint_step(ckpt.latest_checkpoint(tmp_path)) == 2


def test_saving_the_same_step_again_replaces_it(tmp_path):
    model = _model()
    _save(tmp_path, 7, model)
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)
    path = _save(tmp_path, 7, model)
    assert torch.equal(load_pretrained(path).model.norm.weight, torch.full((32,), 2.0))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]


def test_pruning_renames_aside_first_so_a_kill_mid_delete_leaves_no_complete_looking_dir(tmp_path, monkeypatch):
    model = _model()
    for step in (1, 2):
        _save(tmp_path, step, model)
    deleted = []

    def killed_rmtree(path, ignore_errors=False):  # SIGKILL right as the delete starts
        deleted.append(path.name)
        (path / "model.safetensors").unlink()  # it got as far as the weights
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 3, model, keep_last=2)
    monkeypatch.undo()
    assert deleted and deleted[0].startswith(".old-step_00000001-")
    # the half-deleted checkpoint is no longer listed, and its lmforge.json went first
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    assert not (tmp_path / "checkpoints" / deleted[0] / ckpt.META).exists()
    ckpt.remove_stale_temp_dirs(tmp_path)  # the sweep deletes it rather than restoring it
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


def test_a_kill_between_the_renames_of_a_resave_is_recovered_by_the_sweep(tmp_path):
    model = _model()
    good = _save(tmp_path, 7, model)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    # What a kill between `step_N -> .old-step_N-pid` and `.tmp-step_N -> step_N` leaves:
    aside = tmp_path / "checkpoints" / ".old-step_00000007-4242"
    good.rename(aside)
    (tmp_path / "checkpoints" / ".tmp-step_00000007-4242").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) is None
    ckpt.remove_stale_temp_dirs(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]
    # when step_N is there after all, an .old- copy is just deleted
    shutil.copytree(good, aside)
    _save(tmp_path, 8, model)
    assert not aside.exists()
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)] == [7, 8]
