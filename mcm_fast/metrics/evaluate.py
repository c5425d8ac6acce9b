"""Sample quality of a training run: held-out reference data, the scores against it and the pipeline (Scorer)
that samples and scores; the commands that load checkpoints are in mcm_fast.commands.

Images are scored by the Frechet distance and improved precision and recall in the features of a feature
extractor: the shipped MNIST classifier for MNIST (FD-MNIST), raw pixels for other data unless you pass your
own extractor; 2-D points by the sliced Wasserstein distance to fresh draws of the true distribution.
"""
from __future__ import annotations

import torch

from mcm_fast.data.splits import reference_data
from mcm_fast.metrics.distances import sliced_wasserstein
from mcm_fast.metrics.features import mnist_features, pixel_features
from mcm_fast.metrics.frechet import frechet_distance
from mcm_fast.metrics.precision_recall import precision_recall

MIN_SAMPLES = 4  # precision and recall need more than their 3 neighbours


def reference_set(config, n: int, what: str = "eval_samples") -> tuple[dict, str]:
    """(a batch of n examples, what they are) that a run is scored against: never data it trained on (data.splits);
    the batch holds "x" and their condition (text: "encoder_hidden_states"). what names n in errors: the config
    key, or --n for the command line."""
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_SAMPLES:
        raise ValueError(f"{what}: expected an integer >= {MIN_SAMPLES} (precision and recall compare each sample "
                         f"with its {MIN_SAMPLES - 1} nearest neighbours), got {n!r}")
    held_out, description = reference_data(config.data, config.seed)
    if n > len(held_out):
        raise ValueError(f"{what}: expected at most {len(held_out)} (the examples of {description}), got {n}")
    generator = torch.Generator().manual_seed(config.seed)
    return held_out.batch(torch.randperm(len(held_out), generator=generator)[:n]), description


def prompts_of(batch: dict) -> dict[str, torch.Tensor] | None:
    """The prompt embeddings in a batch of a latent cache (its network's text inputs), None for other data."""
    from mcm_fast.data.latents import CONDITIONS

    return {k: batch[k] for k in CONDITIONS if k in batch} or None


def decoder(config):
    """latents -> images in [-1, 1] for a run on a latent cache (its pipeline's VAE), else None."""
    if config.data.name != "latents":
        return None
    from mcm_fast.integrations.text_to_image import latent_decoder

    decode = latent_decoder(config.data.path)
    return lambda z: decode(z).clamp(-1, 1)


def default_features(config):
    """(name, extractor) a run's images are scored with: ("mnist", FD-MNIST features) for MNIST (and latents
    encoded from it, decoded by their VAE first), else pixels."""
    decode = decoder(config)
    if decode is None:
        return ("mnist", mnist_features) if config.data.name == "mnist" else ("pixels", pixel_features)
    from mcm_fast.data.latents import read_manifest

    name, features = ("mnist", mnist_features) if read_manifest(config.data.path).get("source") == "mnist" else \
        ("pixels", pixel_features)
    return name, lambda z: features(decode(z))


def score(samples: torch.Tensor, reference: torch.Tensor, features=pixel_features, name: str = "pixels") -> dict:
    """{"fd_<name>", "precision", "recall"} for images in the space of `features` (any callable images ->
    [N, F]), {"sliced_w2"} for vectors."""
    if samples.dim() == 2:
        return {"sliced_w2": sliced_wasserstein(samples.cpu(), reference.cpu(),
                                                generator=torch.Generator().manual_seed(0))}
    fake, real = features(samples).cpu(), features(reference).cpu()
    return {f"fd_{name}": frechet_distance(fake, real), **precision_recall(real, fake)}


def sample_inputs(info: dict, n: int, seed: int, device="cpu", label: int | None = None,
                  prompts: dict[str, torch.Tensor] | None = None):
    """(noise [n, *shape], cond, generator) from a seed: for class-conditional models cond holds the labels
    0, 1, 2, ... (or `label` for all), so 10-wide grids show a column per class; for text-conditioned ones
    (info["text"]) the prompt embeddings of m prompts in turn (prompts: {"encoder_hidden_states": [m, L, D], and
    "pooled_projections": [m, P] where the model takes them})."""
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((n, *info["shape"]), generator=generator, device=device)
    if "text" in info:
        if not isinstance(prompts, dict) or "encoder_hidden_states" not in prompts or label is not None:
            raise ValueError(f"prompts: a text-conditioned model samples for prompt embeddings "
                             f"{{'encoder_hidden_states': [m, {info['text'][0]}, {info['text'][1]}], ...}} and no "
                             f"label; got prompts {prompts!r:.40} and label {label!r}")
        index = torch.arange(n) % len(prompts["encoder_hidden_states"])
        return noise, {k: v[index].to(device) for k, v in prompts.items()}, generator
    classes = info["num_classes"]
    if not classes:
        if label is not None:
            raise ValueError("label: the model is unconditional, expected no label")
        return noise, {}, generator
    if label is not None and not 0 <= label < classes:
        raise ValueError(f"label: expected a class in [0, {classes - 1}], got {label}")
    labels = torch.full((n,), label, device=device) if label is not None else torch.arange(n, device=device) % classes
    return noise, {"label": labels}, generator


class Scorer:
    """The one scoring pipeline of demo, eval, the trainer and the experiments: n samples from the noise and
    labels of sample_inputs(seed), their features, FD, precision and recall against n held-out examples
    (self.reference, described by self.reference_name; `what` names n in errors)."""

    def __init__(self, config, info: dict, n: int, seed: int, device="cpu", what: str = "eval_samples"):
        self.info, self.n, self.seed, self.device = info, n, seed, device
        reference, self.reference_name = reference_set(config, n, what)
        self.reference = reference.pop("x")
        self.prompts = prompts_of(reference)  # text: a sample per held-out example's prompt
        self.name, self.features = default_features(config)

    def __call__(self, generate) -> tuple[dict, torch.Tensor]:
        """(scores, samples) of generate(noise, generator, **cond) -> samples; every call draws the same noise,
        labels and generator state, so that budgets compare on equal inputs."""
        noise, cond, generator = sample_inputs(self.info, self.n, self.seed, self.device, prompts=self.prompts)
        samples = generate(noise, generator, **cond)
        return score(samples, self.reference, self.features, self.name), samples
