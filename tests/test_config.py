"""Typed settings at run time: a loaded config is a Config of section dataclasses, YAML round-trips it, each
method names the sections it reads, and a trainer leaves the config it was given as it was."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.errors import UserError
from svldrl.methods import METHODS, get_method, section_owners
from svldrl.settings import RL, SECTIONS, Config, Data, Nets
from tests.conftest import TINY

#: Sections every method reads: no method names them.
COMMON = {"data", "nets", "train", "loss", "infer"}


def test_load_config_returns_typed_sections_and_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = C.load_config(overrides=["method=svldrl", "rl.t_max=5", "nets.features=[4,8.0]", "data.fold=all"])
    assert isinstance(cfg, Config)
    assert {name: type(getattr(cfg, name)) for name in SECTIONS} == SECTIONS
    assert isinstance(cfg.rl, RL) and isinstance(cfg.data, Data) and isinstance(cfg.nets, Nets)
    assert cfg.rl.t_max == 5 and cfg.nets.features == [4, 8] and cfg.data.fold == "all"
    # config.yaml: the nested dict of plain values in the schema's key order, read back to an equal Config
    text = C.dump_config(cfg)
    assert list(C.flatten(cfg)) == list(C.SCHEMA) and text.startswith(
        "method: svldrl\nlabels: clean\nseed: 0\n"
    )
    (tmp_path / "config.yaml").write_text(text)
    again = C.load_config([tmp_path / "config.yaml"])
    assert again == cfg and C.dump_config(again) == text
    assert Config.from_dict(cfg.as_dict()) == cfg and cfg.as_dict() == C.load_config(base=cfg).as_dict()
    assert C.differences(again, cfg) == [] and C.differences(cfg.as_dict(), again) == []


def test_each_method_declares_its_sections_and_another_methods_key_is_refused() -> None:
    assert get_method("mtcl").sections == ("mtcl",) and get_method("supervised").sections == ()
    owners = section_owners()
    assert {s: set(m) for s, m in owners.items()} == {
        "rl": {
            "svldrl",
            "supervised_confident",
            "supervised_band",
            "supervised_shift",
            "supervised_agents",
            "tloss_band",
        },
        "coteaching": {"coteaching"},
        "adele": {"adele"},
        "mtcl": {"mtcl"},
        "tloss": {"tloss", "tloss_band", "svldrl"},
    }
    assert owners["tloss"][0] == "tloss"  # the method of the section's name first
    # every section is every method's or some method's, and every method's own sections exist
    assert set(SECTIONS) == COMMON | set(owners)
    assert all(set(get_method(m).sections) <= set(SECTIONS) - COMMON for m in METHODS)

    with pytest.raises(UserError) as info:
        C.load_config(overrides=["mtcl.ema=0.5"], owners=owners)
    assert str(info.value) == (
        "config key 'mtcl.ema' is a setting of mtcl; this run's method is supervised, which would ignore it"
    )
    assert "\n" not in str(info.value)
    with pytest.raises(
        UserError, match="config key 'rl.t_max' is a setting of .*svldrl.*; this run's method is mtcl"
    ):
        C.load_config(overrides=["method=mtcl", "rl.t_max=5"], owners=owners)
    # the method's own section, a key left at its default, and the common sections are accepted
    assert C.load_config(overrides=["method=mtcl", "mtcl.ema=0.5"], owners=owners).mtcl.ema == 0.5
    assert C.load_config(overrides=["rl.t_max=3", "train.patch=32"], owners=owners).train.patch == 32
    # the config layer knows no method: without owners only the values are checked
    assert C.load_config(overrides=["mtcl.ema=0.5"]).mtcl.ema == 0.5


def test_the_trainer_leaves_the_callers_config_as_given(dataset: Path, tmp_path: Path) -> None:
    cfg = C.load_config(overrides=[*TINY, "train.iterations=2"])
    before = copy.deepcopy(cfg)
    trainer = get_method("supervised")(cfg, load_dataset(dataset), tmp_path / "run")
    assert cfg == before and cfg.data.modality == "auto"
    assert trainer.cfg is not cfg and trainer.cfg.data is not cfg.data
    assert trainer.cfg.data.modality == load_dataset(dataset).modality != "auto"
    assert dataclasses.replace(trainer.cfg, data=cfg.data) == cfg  # only what the data decide differs
