"""The shipped pretrained MNIST models: listed, loaded with their attributes, sampled with no training into
digits of the asked class, and scoring what their model card says; bad names listed in one line."""
import pytest
import torch

import mcm_fast as mf
from mcm_fast.cli import main
from mcm_fast.commands.evaluate import score_budgets
from mcm_fast.metrics.features import mnist_classifier
from mcm_fast.pretrained import PRETRAINED_DIR, pretrained_path

NAMES = ["mnist-mcm1", "mnist-mcm2", "mnist-mcm4", "mnist-mcm8", "mnist-teacher"]
STUDENTS = [("mnist-mcm1", 1), ("mnist-mcm2", 2), ("mnist-mcm4", 4), ("mnist-mcm8", 8)]


def test_every_shipped_model_is_listed():
    assert mf.pretrained_models() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_load_pretrained_gives_a_frozen_model_with_its_attributes(name):
    model = mf.load_pretrained(name)
    assert model.sample_shape == (1, 16, 16) and model.num_classes == 10
    assert isinstance(model.schedule, mf.CosineSchedule) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.card["name"] == name and model.card["scores"]


@pytest.mark.parametrize("name, steps, floor", [("mnist-mcm1", 1, 0.9), ("mnist-mcm1", 8, 0.9), ("mnist-mcm2", 2, 0.8),
                                               ("mnist-mcm4", 4, 0.85), ("mnist-mcm8", 8, 0.9)])
def test_students_sample_digits_of_the_asked_class_with_no_training(name, steps, floor):
    """mf.sample right after install: the shipped MNIST classifier reads most samples as their label (measured:
    0.925 and 0.92 for mnist-mcm1, one student for S = 1, 2, 4 and 8; 0.85, 0.895 and 0.9+ for the others; 0.92 of
    2000 samples for mnist-mcm4)."""
    model = mf.load_pretrained(name)
    label = torch.arange(200) % 10
    x = mf.sample(model, n_steps=steps, shape=(200, *model.sample_shape), label=label,
                  generator=torch.Generator().manual_seed(0))
    assert x.shape == (200, 1, 16, 16) and torch.isfinite(x).all()
    accuracy = (mnist_classifier()(x.clamp(-1, 1)).argmax(1) == label).float().mean().item()
    assert accuracy > floor, f"{name}: {accuracy:.3f} of the samples are read as their label"


@pytest.mark.parametrize("name, steps", [*STUDENTS, ("mnist-mcm1", 4), ("mnist-teacher", 4), ("mnist-teacher", 8)])
def test_the_model_card_scores_are_what_the_shipped_weights_give(name, steps):
    """Recomputes the card's FD-MNIST, precision and recall (same noises, labels and test digits)."""
    card = mf.load_pretrained(name).card
    rows = [row for row in card["scores"] if row["steps"] == steps]
    assert rows, f"{name}: no score at {steps} steps in its card"
    got = score_budgets(pretrained_path(name), [(steps, row["sampler"]) for row in rows], card["eval_n"],
                        card["eval_seed"])
    for row, new in zip(rows, got):
        for key in ("fd_mnist", "precision", "recall"):
            assert new[key] == pytest.approx(row[key], rel=1e-3, abs=1e-3), (name, row["sampler"], key)


def test_the_model_card_is_what_the_training_script_writes_from_the_shipped_checkpoints():
    from experiments.pretrained import model_card, shipped

    assert (PRETRAINED_DIR / "README.md").read_text() == model_card(shipped())


def test_cli_samples_a_pretrained_model(tmp_path):
    out = tmp_path / "digits.png"
    assert main(["sample", "--pretrained", "mnist-mcm4", "--n", "20", "--out", str(out)]) == 0
    assert out.is_file()


def test_a_bad_name_lists_the_shipped_models(capsys):
    with pytest.raises(ValueError, match="mnist-mcm4"):
        mf.load_pretrained("mnist-mcm3")
    assert main(["sample", "--pretrained", "mnist-mcm3", "--out", "x.png"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pretrained" in err and "mnist-teacher" in err
