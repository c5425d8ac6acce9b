"""Training configs: presets, YAML/JSON files and --set overrides, each checked against the dataclasses."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcm_fast.train.build import make_kind
from mcm_fast.train.config import (
    KIND_NAMES,
    PRESETS,
    ConfigError,
    TrainConfig,
    load_config,
    parse_overrides,
)
from mcm_fast.train.kinds import KINDS


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
    ring = {"name": "ring", "resolution": None, "n": 100}
    json_file.write_text(json.dumps({"kind": "ct", "data": ring, "model": "mlp"}))
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
    with pytest.raises(ConfigError, match="^teacher: kind 'cd' distills a teacher"):
        make_kind(load_config("tiny-cd", {"teacher": None}), 10)


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]", "f="]) == {
        "a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2], "f": ""}


# Each setting with values out of its range: the message must name the whole dotted key.
BAD_SETTINGS = {
    "optim.lr": ["0", "-1e-4", "inf", ".nan", "1e400", "true", "[1e-4]"],
    "optim.betas": ["[0.9]", "[0.9, 0.99, 0.999]", "[1.0, 0.9]", "[-0.1, 0.9]", "[0.9, .nan]", "0.9", "[a, b]"],
    "optim.weight_decay": ["-0.1", "inf", ".nan"],
    "optim.warmup": ["-1", "1.5", "true"],
    "optim.grad_clip": ["-1", "0", ".nan"],
    "optim.batch_size": ["0", "-8", "2.5"],
    "optim.accumulate": ["0", "3"],
    "optim.ema_decay": ["2", "-0.1", "1.0001", ".nan"],
    "objective.student_steps": ["0", "-4", "2.0"],
    "objective.teacher_steps": ["0", "[64, 1280]", "[0, 10, 10]", "[64, 1280, 0]", "[2, 2, 1]", "fast"],
    "objective.teacher_solver": ["rk4", "1"],
    "objective.xvar_frac": ["-0.5", "inf", "exact"],
    "objective.loss": ["l1"],
    "objective.huber_eps": ["0", "-1e-4", "inf"],
    "objective.weighting": ["snr"],
    "objective.label_dropout": ["1.5", "-0.1"],
    "objective.multiscale": ["-1", "1.5"],
    "objective.boundaries": ["sigma"],
    "song.mode": ["gan"],
    "song.steps": ["1", "0", "-3"],
    "song.solver": ["rk4"],
    "song.distance": ["l1"],
    "song.target_decay": ["1.5", "-1"],
    "data.name": ["cifar", "1"],
    "data.path": ["''"],
    "data.resolution": ["0", "-16", "100000", "16.5"],
    "data.split": ["''"],
    "data.n": ["0", "-5", "1e12"],
    "model": ["huge", "1"],
    "prediction": ["score"],
    "schedule_shift": ["[32]", "[0, 64]", "[-32, 64]", "32"],
    "steps": ["0", "-1", "1e3"],
    "cooldown": ["-1", "1.5", "true", "1000000"],  # the last: more than the run's steps
    "seed": ["-1", "4294967296"],
    "log_every": ["0"],
    "save_every": ["-1"],
    "keep": ["0"],
    "sample_every": ["-5"],
    "eval_every": ["-5"],
    "eval_samples": ["0", "3"],
    "sample_steps": ["0", "100000000", "1099511627776"],
    "device": ["tpu", "cuda:9x"],
    "precision": ["fp8"],
    "strategy": ["zero"],
    "init": ["pretrained"],
    "compile": ["maybe"],
}


@pytest.mark.parametrize("key, text", [(k, t) for k, texts in BAD_SETTINGS.items() for t in texts])
def test_a_setting_out_of_range_is_refused_naming_its_dotted_key(key, text):
    """When the config is read, or (the settings of the objective and of Song et al.'s loss) when the run binds
    its kind, before any work."""
    with pytest.raises(ConfigError) as error:
        config = load_config("tiny-cd", [f"{key}={text}", *(["kind=cm"] if key.startswith("song.") else [])])
        make_kind(config, 10)
    assert str(error.value).startswith(f"{key}: ") and "\n" not in str(error.value)


def test_a_kind_binds_its_settings_once():
    """The one mapping from a config to Algorithm 1's objective: the kind's, with the data's null class."""
    kind = make_kind(load_config("tiny-cd", ["objective.student_steps=[1, 2]", "objective.huber_eps=0.5"]), 10)
    assert kind.objective.steps == (1, 2) and kind.objective.distance.huber_eps == 0.5
    assert kind.objective.null_cond == {"label": 10} and kind.network_options() == {"student_steps": (1, 2)}
    assert make_kind(load_config("tiny-cd"), 0).objective.label_dropout == 0.0  # no labels: nothing to drop
    assert tuple(KINDS) == KIND_NAMES


def test_deeply_nested_files_and_values_are_one_line_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(str(deep))
    with pytest.raises(ConfigError, match="--set steps: cannot parse"):
        load_config("tiny-teacher", ["steps=" + "[" * 100_000])


@pytest.mark.parametrize("overrides, message", [
    (["steps=3", "steps.x=1"], "--set steps.x: steps was set to a value"),
    ([".=1"], "--set: expected key=value with a dotted key"),
    (["optim..lr=1"], "--set: expected key=value with a dotted key"),
])
def test_malformed_set_keys_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny-teacher", overrides)


def test_a_config_of_the_wrong_type_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="^name_or_file: expected a preset name"):
        load_config([1, 2])
    with pytest.raises(ConfigError, match="^preset: expected one of"):
        load_config({"preset": [1]})


def _dotted_keys(cls=TrainConfig, prefix=""):
    """Every settable dotted key of the config dataclasses."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _dotted_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


KEYS = sorted(_dotted_keys())
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.one_of(st.integers(-10, 2**40), st.floats(-2, 2)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_setting_is_accepted_in_range_or_refused_naming_its_key(key, value, tmp_path_factory):
    """A --set of any value gives a valid config or a ConfigError naming the dotted key (or, for a setting that
    conflicts with another, naming both), never another exception; the CLI: exit 1 and that one line."""
    pair = f"{key}={json.dumps(value)}"
    try:
        load_config("tiny-cd", [pair])
    except ConfigError as error:
        text = str(error)
        named = text.startswith((f"{key}: ", f"--set {key}: ")) or (
            text.split(":")[0] in KEYS and key.rsplit(".", 1)[-1] in text)
        assert named and "\n" not in text, (pair, text)
        out = tmp_path_factory.mktemp("never-written")
        result = _run_cli(["train", "--config", "tiny-cd", "--out", str(out / "run"), "--set", pair])
        assert result == (1, f"mcm-fast train: {text}\n"), (pair, result)
        assert not (out / "run").exists()


def _run_cli(argv):
    """(exit status, stderr) of the command in this process."""
    import contextlib
    import io

    from mcm_fast.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()
