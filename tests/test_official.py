"""Importing official state dicts: round trips and one clear error per bad parameter."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest
from helpers import tiny_config, tiny_model

from trm.models.official import (
    StateDictError,
    config_from_official,
    from_official_state_dict,
    load_state_dict_file,
    official_names,
    to_official_state_dict,
)


@pytest.mark.parametrize("overrides", [{}, {"mlp_t": True, "pos_encodings": "none"},
                                       {"pos_encodings": "learned"}])
def test_round_trip(overrides):
    config = tiny_config(**overrides)
    model = tiny_model(config)
    sd = to_official_state_dict(model)
    assert sorted(sd) == sorted(official_names(config))
    back = from_official_state_dict({"_orig_mod.model." + k: v for k, v in sd.items()}, config)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)


def _drop_layer_1_mlp_down(sd):
    del sd["inner.L_level.layers.1.mlp.down_proj.weight"]


def _add_layer_2(sd):
    sd["inner.L_level.layers.2.mlp.down_proj.weight"] = np.zeros((32, 256), np.float32)


def _shrink_lm_head(sd):
    sd["inner.lm_head.weight"] = np.zeros((3, 32), np.float32)


@pytest.mark.parametrize("corrupt,message", [
    (_drop_layer_1_mlp_down, r"lacks parameter 'inner\.L_level\.layers\.1\.mlp\.down_proj"),
    (_add_layer_2, r"layers\.2\.mlp\.down_proj.*does not use"),
    (_shrink_lm_head, r"'inner\.lm_head\.weight' has shape \(3, 32\)"),
])
def test_bad_parameter_is_named(corrupt, message):
    config = tiny_config()
    sd = to_official_state_dict(tiny_model(config))
    corrupt(sd)
    with pytest.raises(StateDictError, match=message):
        from_official_state_dict(sd, config)


def test_config_from_official_dict():
    cfg = config_from_official({"seq_len": 81, "vocab_size": 11, "num_puzzle_identifiers": 5,
                                "hidden_size": 64, "num_heads": 4, "expansion": 4,
                                "H_layers": 0, "batch_size": 8, "puzzle_emb_ndim": 64},
                               "softmax_cross_entropy")
    assert cfg.expansion == 4.0 and isinstance(cfg.expansion, float)
    assert cfg.loss_type == "softmax" and cfg.hidden_size == 64
    for not_arch in ({}, {"model": {"hidden_size": 64, "num_heads": 4, "expansion": 4}}):
        with pytest.raises(ValueError, match="lacks hidden_size, num_heads, expansion"):
            config_from_official(not_arch)


def test_config_values_are_converted_as_the_official_pydantic_configs_do():
    arch = {"hidden_size": "64", "num_heads": 4.0, "expansion": "4", "mlp_t": "true",
            "puzzle_emb_ndim": None}
    cfg = config_from_official(arch)
    assert (cfg.hidden_size, cfg.num_heads, cfg.expansion, cfg.mlp_t) == (64, 4, 4.0, True)
    assert cfg.puzzle_emb_ndim is None and isinstance(cfg.num_heads, int)
    for key, value, kind in [("hidden_size", "wide", "an integer"),
                             ("num_heads", 2.5, "an integer"), ("hidden_size", True, "an integer"),
                             ("mlp_t", "maybe", "true or false"), ("expansion", [4], "a number"),
                             ("pos_encodings", "foo", "one of 'rope', 'learned', 'none'"),
                             ("forward_dtype", "float8", "one of 'float32', 'bfloat16'")]:
        with pytest.raises(ValueError, match=f"config's {key} is .*, not {kind}"):
            config_from_official({**arch, key: value})
    with pytest.raises(ValueError, match="config's arch is 'foo', not one of 'trm'"):
        config_from_official({**arch, "name": "recursive_reasoning.foo@Foo"})
    with pytest.raises(ValueError, match="config's loss_type is 'foo_cross_entropy'"):
        config_from_official(arch, "foo_cross_entropy")


def test_npz_loader_and_missing_torch(tmp_path):
    config = tiny_config()
    sd = to_official_state_dict(tiny_model(config))
    path = tmp_path / "w.npz"
    np.savez(path, **{"param/" + k: v for k, v in sd.items()}, other=np.zeros(2))
    assert sorted(load_state_dict_file(path)) == sorted(sd)
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(StateDictError, match="needs torch"):
            load_state_dict_file(tmp_path / "w.pt")
