"""The kinds of run: teacher (v-loss), cd and ct (Algorithm 1, distilled or from data), direct (Direct CM) and
cm (Song et al.'s consistency models), each one object holding what differs between them.

A kind says whether it needs a teacher, how the network is wrapped into a model, its loss, the extra networks
it keeps (Song et al.'s EMA target), how its models sample and at how many steps. The training loop, bench
and the commands ask the kind; none branches on it. Adding a kind is one class here and a config preset.
"""
from __future__ import annotations

import copy

import torch

from mcm_fast.consistency import ConsistencyLoss, EDMConsistency, KarrasGrid, VEDenoiser, cm_ema_decay, cm_sample
from mcm_fast.denoiser import Denoiser
from mcm_fast.objectives import MCMObjective, diffusion_loss, drop_labels
from mcm_fast.sampling import sample, sample_diffusion
from mcm_fast.train.ema import ema_update

TEACHER_SAMPLERS = ("addim", "ddim")


class Kind:
    """A kind of run: what a diffusion-parameterized model x_hat(z_t, t) trained from data needs (a teacher's
    kind); the others override what they change."""

    def needs_teacher(self, config) -> bool:
        """Whether the run distills a teacher (config.teacher must name its checkpoint)."""
        return False

    def uses_teacher(self, config) -> bool:
        """Whether the run loads config.teacher when given: to distill it or to start from its weights."""
        return self.needs_teacher(config)

    same_network_as_teacher = True  # a student's network is its teacher's (and starts from its weights with init)

    def wrap(self, net: torch.nn.Module, config, schedule) -> torch.nn.Module:
        """The model the kind trains and samples, around the raw network."""
        return Denoiser(net, schedule, prediction=config.prediction, time_input=config.time_input)

    def network_options(self, config) -> dict:
        """Options the kind adds to the network's: the inputs a student takes beyond (z_t, t, label)."""
        return {}

    def extra_state(self, net: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Networks besides the online and EMA ones that the run keeps and checkpoints, by name."""
        return {}

    def after_step(self, extra: dict, online: torch.nn.Module, step: int, config) -> None:
        """Updates the extra networks after the optimizer step `step`."""

    def default_steps(self, config) -> int:
        """The step count of grids and evaluation when config.sample_steps is None."""
        return config.sample_steps if config.sample_steps is not None else self.sample_steps(config)


class Teacher(Kind):
    """A diffusion model trained with the v-loss; samples with aDDIM or DDIM."""

    loss_name = "v-loss"

    def uses_teacher(self, config) -> bool:
        return False

    def loss(self, config, model, teacher, extra, null_label, compiled):
        """loss(cond, x, step): the v-loss, labels dropped for classifier-free guidance."""
        v_loss, obj = compiled(diffusion_loss), config.objective

        def teacher_loss(cond, x, step):
            cond = drop_labels(cond, obj.label_dropout if null_label else 0.0, null_label)
            return v_loss(model, x, multiscale=obj.multiscale, **cond)
        return teacher_loss

    def sample(self, model, config, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0,
               null_cond=None, **cond):
        if teacher_sampler not in TEACHER_SAMPLERS:
            raise ValueError(f"teacher_sampler: expected one of {TEACHER_SAMPLERS}, got {teacher_sampler!r}")
        return sample_diffusion(model, n_steps, teacher_sampler, noise=noise, generator=generator, guidance=guidance,
                                null_cond=null_cond, **cond)

    def sample_steps(self, config) -> int:
        return 64


class MultistepConsistency(Kind):
    """Algorithm 1: distilled from a teacher ("cd"), trained from data ("ct", started from a teacher's weights
    when given) or Direct CM ("direct"); samples with Algorithm 2 at the student's S steps."""

    loss_name = "Algorithm 1"

    def __init__(self, distill: bool, target: str = "mcm"):
        self.distill, self.target = distill, target

    def needs_teacher(self, config) -> bool:
        return self.distill

    def uses_teacher(self, config) -> bool:
        return self.distill or config.init == "teacher"

    def objective(self, config, schedule, null_label) -> MCMObjective:
        obj = config.objective
        teacher_steps = obj.teacher_steps if isinstance(obj.teacher_steps, int) else tuple(obj.teacher_steps)
        return MCMObjective(schedule, student_steps=obj.student_steps, teacher_steps=teacher_steps,
                            teacher_solver=obj.teacher_solver, xvar_frac=obj.xvar_frac, loss=obj.loss,
                            huber_eps=obj.huber_eps, weighting=obj.weighting, target=self.target,
                            label_dropout=obj.label_dropout if null_label else 0.0, null_label=null_label,
                            multiscale=obj.multiscale, boundaries=obj.boundaries, steps_probs=obj.steps_probs,
                            guidance=obj.guidance)

    def network_options(self, config) -> dict:
        """student_steps (a tuple of S) for one student of several S; guidance_distilled when guidance is."""
        obj, options = config.objective, {}
        if isinstance(obj.student_steps, (list, tuple)):
            options["student_steps"] = tuple(obj.student_steps)
        if obj.guidance is not None:
            options["guidance_distilled"] = True
        return options

    def loss(self, config, model, teacher, extra, null_label, compiled):
        """loss(cond, x, step): Algorithm 1 with the teacher steps of iteration `step`."""
        objective = self.objective(config, model.schedule, null_label)
        loss_at, teacher = compiled(objective.loss_at), teacher if self.distill else None
        return lambda cond, x, step: loss_at(model, x, objective.segment_steps(step), teacher=teacher, **cond)

    def sample(self, model, config, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0,
               null_cond=None, **cond):
        return sample(model, n_steps, noise=noise, generator=generator, boundaries=config.objective.boundaries,
                      guidance=guidance, null_cond=null_cond, **cond)

    def sample_steps(self, config) -> int:
        steps = config.objective.student_steps
        return max(steps) if isinstance(steps, (list, tuple)) else steps


class SongConsistency(Kind):
    """Song et al. 2023 in their EDM form: distilled (song.mode "cd") or from data ("ct"), against an EMA target
    network; samples with their multistep sampling on the Karras grid, one step by default."""

    def needs_teacher(self, config) -> bool:
        return config.song.mode == "cd"

    loss_name = "consistency loss of Song et al."
    same_network_as_teacher = False  # c_skip/c_out parameterize another network than the teacher's

    def wrap(self, net, config, schedule):
        return EDMConsistency(net)

    def extra_state(self, net):
        return {"target": copy.deepcopy(net).requires_grad_(False)}

    def after_step(self, extra, online, step, config):
        song = config.song
        decay = song.target_decay if song.target_decay is not None else (
            0.95 if song.mode == "cd" else cm_ema_decay(step, config.steps))
        ema_update(extra["target"], online, decay)

    def loss(self, config, model, teacher, extra, null_label, compiled):
        """loss(cond, x, step): the consistency loss against the EMA target, a teacher's Heun step for cd."""
        song = config.song
        loss = compiled(ConsistencyLoss(kind=song.mode, solver=song.solver, distance=song.distance, steps=song.steps,
                                        total_steps=config.steps))
        teacher = VEDenoiser(teacher, teacher.schedule) if teacher is not None else None
        target = self.wrap(extra["target"], config, None)
        return lambda cond, x, step: loss(model, target, x, step=step, teacher=teacher, **cond)

    def sample(self, model, config, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0,
               null_cond=None, **cond):
        if guidance != 0:
            raise ValueError(f"guidance: Song et al.'s consistency models sample without guidance here, got "
                             f"{guidance!r}")
        sigmas = KarrasGrid().sigmas(n_steps + 1).flip(0)[:n_steps]  # n_steps levels from sigma_max down
        return cm_sample(model, sigmas.tolist(), noise, generator=generator, **cond)

    def sample_steps(self, config) -> int:
        return 1


KINDS = {"teacher": Teacher(), "cd": MultistepConsistency(distill=True), "ct": MultistepConsistency(distill=False),
         "direct": MultistepConsistency(distill=True, target="direct"), "cm": SongConsistency()}
