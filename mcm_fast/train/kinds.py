"""The kinds of run: teacher (v-loss), cd and ct (Algorithm 1, distilled or from data), direct (Direct CM) and
cm (Song et al.'s consistency models), each one class holding what differs between them.

A kind is bound to its run: KINDS[config.kind](config, schedule, num_classes, null_cond) builds what the run trains once
(Algorithm 1's objective, Song et al.'s loss), which is also the check of the config's settings of it (an error
names the dotted key). It says whether the run needs a teacher, how the network is wrapped into a model, its
loss, the extra networks it keeps (Song et al.'s EMA target), how its models sample and at how many steps. The
training loop, bench and the commands ask the kind; none branches on it. Adding a kind is one class here, its
name in train.config.KIND_NAMES and a config preset.
"""
from __future__ import annotations

import copy
import functools

import torch

from mcm_fast.consistency import ConsistencyLoss, EDMConsistency, KarrasGrid, VEDenoiser, cm_ema_decay, cm_sample
from mcm_fast.denoiser import Denoiser
from mcm_fast.objectives import MCMObjective, diffusion_loss, drop_condition
from mcm_fast.sampling import sample, sample_diffusion
from mcm_fast.schedules import Schedule
from mcm_fast.train.config import ConfigError, TrainConfig, as_config_error
from mcm_fast.train.ema import ema_update

TEACHER_SAMPLERS = ("addim", "ddim")


class Kind:
    """A kind of run bound to its config, schedule and classes (num_classes, the null class of classifier-free
    guidance; 0 for unconditional data) or null_cond, the null condition of other data (the empty prompt's
    embedding for text). The base is a diffusion-parameterized model x_hat(z_t, t)."""

    loss_name = "v-loss"
    same_network_as_teacher = True  # a student's network is its teacher's (and starts from its weights with init)
    needs_teacher = False  # whether the run distills a teacher (config.teacher must name its checkpoint)

    def __init__(self, config: TrainConfig, schedule: Schedule, num_classes: int, null_cond: dict | None = None):
        self.config, self.schedule = config, schedule
        self.null_cond = null_cond if null_cond is not None else {"label": num_classes} if num_classes else None
        as_config_error("", lambda: self.wrap(lambda z, time: z))
        if self.needs_teacher and config.teacher is None:
            raise ConfigError(f"teacher: kind {config.kind!r} distills a teacher: expected its checkpoint directory")

    @property
    def uses_teacher(self) -> bool:
        """Whether the run loads config.teacher when given: to distill it or to start from its weights."""
        return self.needs_teacher

    def wrap(self, net) -> torch.nn.Module:
        """The model the kind trains and samples, around the raw network."""
        return Denoiser(net, self.schedule, prediction=self.config.prediction, time_input=self.config.time_input)

    def network_options(self) -> dict:
        """Options the kind adds to the network's: the inputs a student takes beyond (z_t, t, label)."""
        return {}

    def extra_state(self, net: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Networks besides the online and EMA ones that the run keeps and checkpoints, by name."""
        return {}

    def after_step(self, extra: dict, online: torch.nn.Module, step: int) -> None:
        """Updates the extra networks after the optimizer step `step`."""

    def loss(self, model, teacher, extra: dict, compiled):
        """loss(cond, x, step) -> the mean loss of a batch; compiled wraps what torch.compile takes."""
        raise NotImplementedError

    def sample(self, model, n_steps: int, noise, teacher_sampler: str = "addim", generator=None,
               guidance: float = 0.0, null_cond: dict | None = None, **cond) -> torch.Tensor:
        """Samples from noise with n_steps model calls, the way this kind's models sample."""
        raise NotImplementedError

    def guidance_inputs(self, guidance: float) -> dict:
        """sample's guidance arguments at scale w: w and the null condition (the null class, or null_cond)."""
        if guidance == 0:
            return {}
        if self.null_cond is None:
            raise ValueError(f"guidance: the model is unconditional, so it cannot be guided; expected 0, got "
                             f"{guidance!r}")
        return {"guidance": guidance, "null_cond": self.null_cond}

    def sample_steps(self) -> int:
        """The kind's own step count of grids and evaluation."""
        raise NotImplementedError

    def default_steps(self) -> int:
        """The step count of grids and evaluation: config.sample_steps, else the kind's own."""
        return self.config.sample_steps if self.config.sample_steps is not None else self.sample_steps()


class Teacher(Kind):
    """A diffusion model trained with the v-loss; samples with aDDIM or DDIM."""

    def loss(self, model, teacher, extra, compiled):
        """The v-loss, labels dropped for classifier-free guidance."""
        v_loss, obj = compiled(diffusion_loss), self.config.objective

        def teacher_loss(cond, x, step):
            cond = drop_condition(cond, obj.label_dropout, self.null_cond) if self.null_cond else cond
            return v_loss(model, x, multiscale=obj.multiscale, **cond)
        return teacher_loss

    def sample(self, model, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0, null_cond=None,
               **cond):
        if teacher_sampler not in TEACHER_SAMPLERS:
            raise ValueError(f"teacher_sampler: expected one of {TEACHER_SAMPLERS}, got {teacher_sampler!r}")
        return sample_diffusion(model, n_steps, teacher_sampler, noise=noise, generator=generator, guidance=guidance,
                                null_cond=null_cond, **cond)

    def sample_steps(self) -> int:
        return 64


class MultistepConsistency(Kind):
    """Algorithm 1: distilled from a teacher ("cd"), trained from data ("ct", started from a teacher's weights
    when given) or Direct CM ("direct"); samples with Algorithm 2 at the student's S steps. Its objective is
    built here, the one mapping from the config to MCMObjective."""

    loss_name = "Algorithm 1"

    def __init__(self, config, schedule, num_classes, null_cond=None, *, distill: bool, target: str = "mcm"):
        self.needs_teacher, obj = distill, config.objective
        super().__init__(config, schedule, num_classes, null_cond)
        self.objective = as_config_error("objective.", lambda: MCMObjective(
            schedule, student_steps=obj.student_steps, teacher_steps=obj.teacher_steps,
            teacher_solver=obj.teacher_solver, xvar_frac=obj.xvar_frac, loss=obj.loss, huber_eps=obj.huber_eps,
            weighting=obj.weighting, target=target,
            label_dropout=obj.label_dropout if self.null_cond else 0.0, null_cond=self.null_cond,
            multiscale=obj.multiscale, boundaries=obj.boundaries, steps_probs=obj.steps_probs,
            guidance=obj.guidance))

    @property
    def uses_teacher(self) -> bool:
        return self.needs_teacher or self.config.init == "teacher"

    def network_options(self) -> dict:
        """student_steps (a tuple of S) for one student of several S; guidance_distilled when guidance is."""
        obj, options = self.config.objective, {}
        if isinstance(obj.student_steps, (list, tuple)):
            options["student_steps"] = tuple(obj.student_steps)
        if obj.guidance is not None:
            options["guidance_distilled"] = True
        return options

    def loss(self, model, teacher, extra, compiled):
        """Algorithm 1 with the teacher steps of iteration `step`."""
        loss_at, teacher = compiled(self.objective.loss_at), teacher if self.needs_teacher else None
        return lambda cond, x, step: loss_at(model, x, self.objective.segment_steps(step), teacher=teacher, **cond)

    def sample(self, model, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0, null_cond=None,
               **cond):
        return sample(model, n_steps, noise=noise, generator=generator, boundaries=self.config.objective.boundaries,
                      guidance=guidance, null_cond=null_cond, **cond)

    def sample_steps(self) -> int:
        return max(self.objective.steps)


class SongConsistency(Kind):
    """Song et al. 2023 in their EDM form: distilled (song.mode "cd") or from data ("ct"), against an EMA target
    network; samples with their multistep sampling on the Karras grid, one step by default."""

    loss_name = "consistency loss of Song et al."
    same_network_as_teacher = False  # c_skip/c_out parameterize another network than the teacher's

    def __init__(self, config, schedule, num_classes, null_cond=None):
        song = config.song
        self.needs_teacher = song.mode == "cd"
        super().__init__(config, schedule, num_classes, null_cond)
        self.consistency_loss = as_config_error("song.", lambda: ConsistencyLoss(
            kind=song.mode, solver=song.solver, distance=song.distance, steps=song.steps, total_steps=config.steps),
            {"kind": "mode"})

    def wrap(self, net):
        return EDMConsistency(net)

    def extra_state(self, net):
        return {"target": copy.deepcopy(net).requires_grad_(False)}

    def after_step(self, extra, online, step):
        song = self.config.song
        decay = song.target_decay if song.target_decay is not None else (
            0.95 if song.mode == "cd" else cm_ema_decay(step, self.config.steps))
        ema_update(extra["target"], online, decay)

    def loss(self, model, teacher, extra, compiled):
        """The consistency loss against the EMA target, a teacher's Heun step for cd."""
        loss = compiled(self.consistency_loss)
        teacher = VEDenoiser(teacher, teacher.schedule) if teacher is not None else None
        target = self.wrap(extra["target"])
        return lambda cond, x, step: loss(model, target, x, step=step, teacher=teacher, **cond)

    def sample(self, model, n_steps, noise, teacher_sampler="addim", generator=None, guidance=0.0, null_cond=None,
               **cond):
        if guidance != 0:
            raise ValueError(f"guidance: Song et al.'s consistency models sample without guidance here, got "
                             f"{guidance!r}")
        sigmas = KarrasGrid().sigmas(n_steps + 1).flip(0)[:n_steps]  # n_steps levels from sigma_max down
        return cm_sample(model, sigmas.tolist(), noise, generator=generator, **cond)

    def sample_steps(self) -> int:
        return 1


KINDS = {"teacher": Teacher, "cd": functools.partial(MultistepConsistency, distill=True),
         "ct": functools.partial(MultistepConsistency, distill=False),
         "direct": functools.partial(MultistepConsistency, distill=True, target="direct"), "cm": SongConsistency}
