"""Orbax model checkpoints: round trip, atomic replacement, refusal of foreign directories."""

import json

import jax
import numpy as np
import pytest

from binarybert_jax import model as M, checkpoints, workdirs

TINY = M.BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, head_dim=8,
                    intermediate_size=32, max_position=32)


def _params(spec, seed=0):
    return spec.build().init(jax.random.key(seed), np.ones((1, 8), np.int32))["params"]


def test_model_roundtrip_and_replace(tmp_path):
    spec = M.ModelSpec(TINY, M.QuantConfig(2, 2, 4, act_method="lsq"), num_labels=3)
    p0, p1 = _params(spec, 0), _params(spec, 1)
    target = tmp_path / "ckpt"
    checkpoints.save_model(target, p0, spec, {"stage": "ternary"})
    checkpoints.save_model(target, p1, spec, {"stage": "ternary", "epoch": 2})
    params, spec2, info = checkpoints.load_model(target)
    assert spec2 == spec and info == {"stage": "ternary", "epoch": 2}
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.tree_util.tree_map(np.asarray, p1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_updating_a_models_info_leaves_its_parameters_alone(tmp_path):
    spec = M.ModelSpec(TINY, M.QuantConfig(2, 2, 8), num_labels=2)
    p0 = _params(spec)
    target = tmp_path / "best"
    checkpoints.save_model(target, p0, spec, {"step": 3})
    files = {p: p.stat().st_mtime_ns for p in (target / "params").rglob("*") if p.is_file()}
    checkpoints.update_model_info(target, {"dev": {"accuracy": 0.75}})
    params, spec2, info = checkpoints.load_model(target)
    assert info == {"step": 3, "dev": {"accuracy": 0.75}} and spec2 == spec  # the other keys kept
    assert {p: p.stat().st_mtime_ns for p in files} == files  # not rewritten
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.tree_util.tree_map(np.asarray, p0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    # A copy an interrupted save left is put back first, then updated.
    target.rename(tmp_path / "best.tmp")
    checkpoints.update_model_info(target, {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert checkpoints.load_model(target)[2] == {"step": 4, "dev": {"accuracy": 0.75}}
    with pytest.raises(FileNotFoundError, match="not a binarybert-jax model checkpoint"):
        checkpoints.update_model_info(tmp_path / "none", {})


def test_a_save_cut_short_between_its_renames_loses_nothing(tmp_path, monkeypatch):
    """Locally the new model is written to ``ckpt.tmp``, the old one renamed to ``ckpt.old``, then
    the new one to ``ckpt``. A crash between the renames leaves no ``ckpt``: readers take the new
    copy, and the next save puts it back before replacing it."""
    spec = M.ModelSpec(TINY, num_labels=2)
    p0, p1, p2 = (_params(spec, seed) for seed in range(3))
    target = tmp_path / "best"
    checkpoints.save_model(target, p0, spec, {"step": 0})
    path_type = type(workdirs.absolute(target))
    replace = path_type.replace

    def crash_before_the_second_rename(self, dst):
        if self.name == "best.tmp":
            raise KeyboardInterrupt("killed between the renames")
        return replace(self, dst)

    monkeypatch.setattr(path_type, "replace", crash_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_model(target, p1, spec, {"step": 1})
    monkeypatch.setattr(path_type, "replace", replace)
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["best.old", "best.tmp"]
    assert checkpoints.is_model_checkpoint(target)
    resolved = []  # load_model resolves the copy once: metadata and parameters come from one copy
    resolve = checkpoints.complete_copy
    monkeypatch.setattr(checkpoints, "complete_copy", lambda d: resolved.append(d) or resolve(d))
    params, _, info = checkpoints.load_model(target)
    monkeypatch.setattr(checkpoints, "complete_copy", resolve)
    assert len(resolved) == 1
    assert info == {"step": 1}  # the newer of the two complete copies
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.tree_util.tree_map(np.asarray, p1))

    checkpoints.save_model(target, p2, spec, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert checkpoints.load_model(target)[2] == {"step": 2}
    # Only a copy left behind as .old (the rename of the new one never began) is read too.
    (tmp_path / "best").rename(tmp_path / "best.old")
    assert checkpoints.read_model_meta(target)["info"] == {"step": 2}
    with pytest.raises(FileNotFoundError, match="not a binarybert-jax model checkpoint"):
        checkpoints.read_model_meta(tmp_path / "other")


def test_params_roundtrip(tmp_path):
    p = _params(M.ModelSpec(TINY))
    checkpoints.save_params(tmp_path / "p", p)
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoints.restore_params(tmp_path / "p"),
                           jax.tree_util.tree_map(np.asarray, p))


def test_refuses_foreign_or_future_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a binarybert-jax model checkpoint"):
        checkpoints.load_model(tmp_path)
    spec = M.ModelSpec(TINY)
    checkpoints.save_model(tmp_path / "m", _params(spec), spec)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(ValueError, match="version 99"):
        checkpoints.load_model(tmp_path / "m")
