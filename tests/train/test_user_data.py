"""A user's own data (issue 33): a run never scores against examples it trained on, the split holds through
train, resume and eval, and data errors name their dotted config key, at config time where they can."""
import json
import math
import re

import numpy as np
import pytest
import torch

import mcm_fast as mf
from mcm_fast.cli import main
from mcm_fast.data.splits import held_out, reference_data, training_data
from mcm_fast.train.config import ConfigError, describe, key_meanings, load_config, with_defaults
from mcm_fast.train.loop import Trainer, train

N = 45  # 45 images: 5 held out at the default fraction 0.1


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    """45 distinct 8x8 uint8 images (image i is filled with i) with labels i % 3."""
    file = tmp_path_factory.mktemp("npz") / "digits.npz"
    x = np.repeat(np.arange(N, dtype=np.uint8)[:, None, None] * 5, 64, axis=1).reshape(N, 8, 8)
    np.savez(file, x=x, y=np.arange(N) % 3)
    return file


def npz_config(npz_file, **changes):
    data = {"name": "npz", "path": str(npz_file), "resolution": None, **changes.pop("data", {})}
    return load_config({"preset": "tiny-teacher", "data": data, "optim": {"batch_size": 8, "warmup": 1}, "steps": 2,
                        "save_every": 1, "eval_samples": 5, "sample_steps": 2, "log_every": 1, **changes})


def ids(images: torch.Tensor) -> set[int]:
    """The index each image of the npz fixture was made from."""
    return {round((float(v) + 1) * 127.5 / 5) for v in images[:, 0, 0, 0]}


@pytest.mark.parametrize(("size", "fraction"), [(45, 0.1), (10, 0.5), (1001, 0.001), (7, 0.0)])
def test_held_out_indices_split_the_examples_the_same_way_every_time(size, fraction):
    train_part, held = held_out(size, fraction)
    assert len(held) == math.ceil(fraction * size)
    assert sorted(train_part.tolist() + held.tolist()) == list(range(size))
    assert torch.equal(held, held_out(size, fraction)[1])


@pytest.mark.parametrize(("size", "fraction"), [(1, 0.5), (10, 0.95)])
def test_a_fraction_that_leaves_nothing_to_train_on_is_refused(size, fraction):
    with pytest.raises(ValueError, match="^holdout: "):
        held_out(size, fraction)


def test_npz_data_trains_on_all_but_the_held_out_examples_which_score_it(npz_file):
    config = npz_config(npz_file)
    train_part = training_data(config.data, config.seed)
    reference, description = reference_data(config.data, config.seed)
    assert len(train_part) == N - 5 and len(reference) == 5
    assert ids(train_part.images.float() / 127.5 - 1).isdisjoint(ids(reference.batch(torch.arange(5))["x"]))
    assert description == f"0.1 of {npz_file} held out of training"
    other_seed = npz_config(npz_file, seed=7)  # the held-out examples do not depend on the run's seed
    assert torch.equal(reference_data(other_seed.data, 7)[0].images, reference.images)
    assert train_part.num_classes == 3


def test_the_split_holds_through_train_resume_and_eval(npz_file, tmp_path, capsys):
    out = tmp_path / "run"
    train(npz_config(npz_file, steps=1), out, progress=False)
    trainer = Trainer(npz_config(npz_file), out, progress=False)  # resumed: the same 40 examples
    assert trainer.step == 1 and len(trainer.data) == N - 5
    trainer.train()
    saved = json.loads(next(out.glob("step-*/checkpoint.json")).read_text())["config"]
    assert saved["data"]["holdout"] == 0.1 and saved["data"]["test_path"] is None
    assert main(["eval", "--ckpt", str(out), "--steps", "2", "--n", "5", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert f"5 samples against 5 examples of 0.1 of {npz_file} held out of training" in printed
    rows = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert rows[0]["reference"] == f"0.1 of {npz_file} held out of training"


def test_a_test_path_is_the_reference_and_nothing_is_held_out(npz_file, tmp_path):
    test_file = tmp_path / "test.npz"
    np.savez(test_file, x=np.full((6, 8, 8), 255, np.uint8), y=np.zeros(6, np.int64))
    config = npz_config(npz_file, data={"test_path": str(test_file)})
    assert len(training_data(config.data, 0)) == N
    reference, description = reference_data(config.data, 0)
    assert len(reference) == 6 and description == f"data.test_path {test_file}"


def test_mnist_is_scored_against_the_split_it_did_not_train_on():
    for split, other in (("train", "test"), ("test", "train")):
        config = load_config("tiny-teacher", {"data": {"split": split}})
        assert reference_data(config.data, 0)[1] == f"MNIST's {other} split"


def test_a_run_saved_before_holdout_existed_resumes_on_all_its_examples():
    saved = npz_config("unused.npz").to_dict()
    del saved["data"]["holdout"]
    assert with_defaults(saved)["data"]["holdout"] == 0.0
    assert with_defaults({"data": {"holdout": 0.2}})["data"]["holdout"] == 0.2


def test_an_mnist_run_saved_before_holdout_existed_resumes_under_the_default():
    """MNIST holds nothing out (it is scored against its other split), so the key never changed what it trained."""
    saved = load_config("tiny-teacher").to_dict()
    del saved["data"]["holdout"]
    assert with_defaults(saved) == load_config("tiny-teacher").to_dict()


def test_nothing_held_out_and_no_test_path_cannot_be_scored(npz_file):
    config = npz_config(npz_file, data={"holdout": 0.0})
    assert len(training_data(config.data, 0)) == N
    with pytest.raises(ValueError, match="^data.holdout: is 0 and data.test_path is not set"):
        reference_data(config.data, 0)


@pytest.mark.parametrize(("n", "message"), [("99", "--n: expected at most 5 (the examples of 0.1 of"),
                                            ("1", "--n: expected an integer >= 4")])
def test_eval_names_n_when_it_does_not_fit(npz_file, tmp_path, n, message, capsys):
    train(npz_config(npz_file, steps=1), tmp_path / "run", progress=False)
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--n", n]) == 1
    assert capsys.readouterr().err.startswith(f"mcm-fast eval: {message}")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data": {"resolution": 13}}, "data.resolution: expected one of 32, 28, 16, 8 for MNIST, got 13"),
    ({"data": {"split": "validation"}}, "data.split: expected 'train' or 'test' for MNIST"),
    ({"data": {"name": "npz"}}, "data.path: data set 'npz' needs a path"),
    ({"data": {"name": "folder", "path": "x", "resolution": None}}, "data.resolution: data set 'folder' needs a"),
    ({"data": {"name": "ring", "resolution": None}}, "data.n: data set 'ring' needs the number of points"),
    ({"data": {"holdout": 1.0}}, "data.holdout: expected a fraction in [0, 1)"),
])
def test_data_errors_name_the_dotted_key_at_config_time(overrides, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_config("tiny-teacher", overrides)


def test_data_errors_found_when_reading_name_the_dotted_key(npz_file, tmp_path):
    with pytest.raises(ValueError, match="^data.resolution: the npz images in .* are 8x8"):
        Trainer(npz_config(npz_file, data={"resolution": 16}), tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="^data.path: no file"):
        Trainer(npz_config(tmp_path / "missing.npz"), tmp_path / "run", progress=False)


def test_every_config_key_has_a_meaning_and_the_config_command_prints_them(capsys):
    meanings = key_meanings()
    lines = describe(load_config("tiny-cd")).splitlines()
    keys = [line.split(" = ")[0] for line in lines]
    assert len(keys) == len(set(keys)) > 50 and set(keys) == set(meanings)
    assert all(meanings[key] for key in keys)
    assert main(["config", "--config", "tiny-cd", "--set", "data.resolution=8"]) == 0
    printed = capsys.readouterr().out
    assert "data.resolution = 8" in printed and "objective.student_steps = 4" in printed
    assert "# the image side" in printed
    assert main(["config", "--config", "tiny-cd", "--set", "objective.huber_eps=0"]) == 1  # as train would refuse it
    assert capsys.readouterr().err.startswith("mcm-fast config: objective.huber_eps: expected")


@pytest.mark.parametrize("x_var", [-1.0, float("nan"), float("inf")])
def test_sample_diffusion_refuses_a_bad_x_var_like_addim_step(x_var):
    model = mf.Denoiser(lambda z, logsnr: torch.zeros_like(z), mf.CosineSchedule())
    with pytest.raises(ValueError, match="^x_var: expected (a )?finite value"):
        mf.sample_diffusion(model, 2, "addim", shape=(2, 3), x_var=x_var)
    with pytest.raises(ValueError, match="^x_var: expected (a )?finite value"):
        mf.addim_step(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, 0.2, mf.CosineSchedule(), x_var)
