"""Training configs: presets, YAML/JSON files and --set overrides, each checked against the dataclasses."""
import json

import pytest

from mcm_fast.train.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    load_config,
    parse_overrides,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips_through_a_dict(name):
    config = load_config(name)
    assert isinstance(config, TrainConfig)
    assert load_config(config.to_dict()) == config


def test_overrides_parse_to_the_field_types():
    config = load_config("tiny-teacher", ["optim.lr=1e-4", "steps=7", "data.resolution=8", "compile=true",
                                          "objective.teacher_steps=[16, 32, 100]", "model_options.dropout=0.1"])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.steps == 7 and config.data.resolution == 8 and config.compile is True
    assert config.objective.teacher_steps == [16, 32, 100]
    assert config.model_options == {"dropout": 0.1}
    assert load_config("tiny-teacher", ["objective.teacher_steps=64"]).objective.teacher_steps == 64
    assert load_config("tiny-teacher", ["optim.lr=1"]).optim.lr == 1.0  # an int is a valid float


def test_yaml_and_json_files_with_a_preset(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("preset: tiny-teacher\nsteps: 12\noptim:\n  batch_size: 32\n")
    config = load_config(str(yaml_file), ["seed=3"])
    assert (config.steps, config.optim.batch_size, config.seed, config.model) == (12, 32, 3, "tiny")
    assert config.optim.lr == PRESETS["tiny-teacher"]().optim.lr  # nested keys merge, not replace
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"kind": "ct", "data": {"name": "ring", "resolution": None}, "model": "mlp"}))
    config = load_config(str(json_file))
    assert (config.kind, config.data.name, config.model) == ("ct", "ring", "mlp")


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "optim.lrr: unknown key"),
    (["nope=1"], "nope: unknown key"),
    (["steps=ten"], "steps: expected int"),
    (["optim.lr=fast"], "optim.lr: expected float"),
    (["compile=3"], "compile: expected bool"),
    (["kind=gan"], "kind: expected one of"),
    (["steps=0"], "steps: expected an integer >= 1"),
    (["data=3"], "data: expected a mapping"),
    (["steps"], "--set: expected key=value"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("tiny-teacher", overrides)


def test_bad_files_and_names_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected a preset"):
        load_config("no-such-preset")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse") as error:
        load_config(str(bad))
    assert "\n" not in str(error.value)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(tmp_path / "list.json"))
    (tmp_path / "preset.yaml").write_text("preset: huge\n")
    with pytest.raises(ConfigError, match="preset: expected one of"):
        load_config(str(tmp_path / "preset.yaml"))


def test_distillation_needs_a_teacher():
    with pytest.raises(ConfigError, match="teacher:"):
        load_config("tiny-cd", {"teacher": None})


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]", "f="]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2], "f": ""}
