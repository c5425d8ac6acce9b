"""The shipped MNIST classifier behind FD-MNIST (loads from the package, classifies MNIST's test digits at its
recorded accuracy, at every resolution the package samples), improved precision and recall against cases
worked by hand, and scoring with a feature extractor."""
import pytest
import torch

from mcm_fast.data import load_mnist
from mcm_fast.metrics.evaluate import score
from mcm_fast.metrics.features import CLASSIFIER_FILE, classifier_record, mnist_classifier, mnist_features
from mcm_fast.metrics.precision_recall import precision_recall


def test_classifier_ships_with_the_package():
    assert CLASSIFIER_FILE.is_file() and CLASSIFIER_FILE.stat().st_size < 2_000_000, CLASSIFIER_FILE
    record = classifier_record()
    assert record["test_accuracy"] >= 0.99 and record["command"].startswith("python "), record


@pytest.mark.parametrize("resolution,least", [(32, None), (28, 0.985), (16, 0.98), (8, 0.9)])
def test_classifier_accuracy_on_the_test_digits(resolution, least):
    """At 32x32 the recorded accuracy (to rounding across CPUs); at the other resolutions a floor."""
    test = load_mnist("test", resolution)
    batch = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        predicted = torch.cat([mnist_classifier()(x).argmax(1) for x in batch["x"].split(1000)])
    accuracy = (predicted == batch["label"]).double().mean().item()
    if least is None:
        assert accuracy == pytest.approx(classifier_record()["test_accuracy"], abs=5e-4)
    else:
        assert accuracy >= least, f"accuracy at {resolution}x{resolution}: {accuracy:.4f} < {least}"


def test_features_shape_and_errors():
    digits = load_mnist("test", 16).batch(torch.arange(7))["x"]
    features = mnist_features(digits)
    assert features.shape == (7, 128) and features.dtype == torch.float32
    with pytest.raises(ValueError, match=r"images: expected \[N, 1, H, W\] digits"):
        mnist_features(torch.zeros(2, 3, 16, 16))


def test_precision_recall_worked_by_hand():
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # k = 1: every radius is 1
    fake = torch.tensor([[0.5, 0.0], [10.0, 0.0]])  # radius of each: 9.5, the other fake
    result = precision_recall(real, fake, k=1)
    assert result == {"precision": 0.5, "recall": 1.0}


def test_precision_recall_separate_quality_from_coverage():
    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-10.0, 0.0], [10.0, 0.0]])
    real = torch.cat([m + torch.randn(500, 2, generator=g) for m in modes])
    one_mode = modes[0] + torch.randn(500, 2, generator=g)  # realistic, covers half the data
    result = precision_recall(real, one_mode)
    assert result["precision"] > 0.95 and 0.45 < result["recall"] < 0.55, result
    same = precision_recall(real, real)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}


@pytest.mark.parametrize("real,fake,k,match", [
    (torch.zeros(3, 2), torch.zeros(5, 2), 3, r"real: expected \[n, d\] features with n > k = 3"),
    (torch.zeros(5, 2), torch.zeros(5, 3), 3, r"fake: expected 2 features like real"),
    (torch.zeros(5, 2), torch.zeros(5, 2), 0, r"k: expected an integer >= 1"),
])
def test_precision_recall_errors(real, fake, k, match):
    with pytest.raises(ValueError, match=match):
        precision_recall(real, fake, k)


def test_score_uses_the_feature_extractor():
    digits = load_mnist("test", 16).batch(torch.arange(200))["x"]
    scores = score(digits[:100], digits[100:], mnist_features, "mnist")
    assert set(scores) == {"fd_mnist", "precision", "recall"} and scores["fd_mnist"] > 0
    assert score(digits, digits, mnist_features, "mnist")["fd_mnist"] == pytest.approx(0.0, abs=1e-6)
    assert "fd_pixels" in score(digits[:100], digits[100:])
