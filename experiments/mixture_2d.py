"""MCM on a 2-D mixture of Gaussians (the 8-mode ring): a diffusion teacher, its multistep consistency
students at S = 1, 2, 4, 8, and the sliced Wasserstein distance of every sampler to fresh true samples.

    python experiments/mixture_2d.py                 # the table of docs/results.md (3 seeds)
    python experiments/mixture_2d.py --seeds 0 --teacher-iters 2000 --student-iters 800   # quicker
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import mcm_fast as mf
from mcm_fast.data.toy import GaussianMixture
from mcm_fast.metrics import sliced_wasserstein
from mcm_fast.models import MLPNet
from mcm_fast.train.build import load_teacher_weights
from mcm_fast.train.ema import ema_update

MIXTURE = GaussianMixture.ring(modes=8, radius=1.0, std=0.05)
SCHEDULE = mf.CosineSchedule()
STEPS = (1, 2, 4, 8)


def fit(model: mf.Denoiser, loss_fn, iters: int, lr: float, batch: int, seed: int) -> mf.Denoiser:
    """AdamW with a cosine learning-rate decay; returns an EMA (0.995) of the weights."""
    generator = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    for i in range(iters):
        x = MIXTURE.sample(batch, generator).float()
        loss = loss_fn(model, x, i, generator)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss.item()} at iteration {i}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, 0.995)
    return ema.eval()


def train_teacher(iters: int = 4000, seed: int = 0, hidden: int = 256, batch: int = 1024) -> mf.Denoiser:
    """A v-prediction diffusion model trained with the v-loss."""
    torch.manual_seed(seed)
    model = mf.Denoiser(MLPNet(dim=2, hidden=hidden, depth=4), SCHEDULE, prediction="v")
    return fit(model, lambda m, x, i, g: mf.diffusion_loss(m, x, generator=g), iters, 2e-3, batch, seed)


def distill(teacher: mf.Denoiser, student_steps, iters: int = 1500, seed: int = 0, batch: int = 1024) -> mf.Denoiser:
    """Multistep consistency distillation (Algorithm 1, aDDIM teacher), the student initialized from the teacher;
    student_steps a tuple: one student for each of those S (the teacher's network with an S embedding)."""
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    if isinstance(student_steps, tuple):
        student.net = MLPNet(**student.net.options, student_steps=student_steps)
        load_teacher_weights(student.net, teacher.net)
    objective = mf.MCMObjective(SCHEDULE, student_steps=student_steps, teacher_steps=(64, 512, iters))
    return fit(student, lambda m, x, i, g: objective(m, x, teacher=teacher, step=i, generator=g), iters, 5e-4, batch,
               seed)


@torch.no_grad()
def distance(samples: torch.Tensor, seed: int) -> float:
    truth = MIXTURE.sample(len(samples), torch.Generator().manual_seed(10_000 + seed)).float()
    return sliced_wasserstein(samples.float(), truth, projections=512, generator=torch.Generator().manual_seed(seed))


def evaluate(teacher, students: dict, n: int = 50_000, seed: int = 0, steps=STEPS,
             reference_steps: int | None = 256) -> dict:
    """Sliced Wasserstein to fresh true samples, the same noise for every sampler: {(name, steps): SW}.
    reference_steps adds the teacher's many-step DDIM; the last row is the floor: fresh data against data."""
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(20_000 + seed))
    rows = {}
    for k in steps:
        rows["teacher DDIM", k] = distance(mf.sample_diffusion(teacher, k, "ddim", noise=noise), seed)
        rows["teacher aDDIM", k] = distance(mf.sample_diffusion(teacher, k, "addim", noise=noise), seed)
        if k in students:
            rows["MCM (CD)", k] = distance(mf.sample(students[k], k, noise=noise), seed)
    if reference_steps:
        rows["teacher DDIM",
             reference_steps] = distance(mf.sample_diffusion(teacher, reference_steps, "ddim", noise=noise), seed)
    rows["data (fresh samples)", 0] = distance(MIXTURE.sample(n, torch.Generator().manual_seed(seed)).float(), seed)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--teacher-iters", type=int, default=4000)
    parser.add_argument("--student-iters", type=int, default=1500)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for seed in seeds:
        start = time.time()
        teacher = train_teacher(args.teacher_iters, seed)
        students = {steps: distill(teacher, steps, args.student_iters, seed) for steps in STEPS}
        results.append(evaluate(teacher, students, seed=seed))
        print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
    keys = list(results[0])
    print("\n| sampler | steps | sliced W2 (mean +- std over seeds) |\n|---|---|---|")
    for name, steps in keys:
        values = torch.tensor([r[name, steps] for r in results])
        spread = values.std().item() if len(values) > 1 else 0.0
        print(f"| {name} | {steps if steps else '-'} | {values.mean().item():.4f} +- {spread:.4f} |")


if __name__ == "__main__":
    main()
