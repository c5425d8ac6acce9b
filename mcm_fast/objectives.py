"""Training objectives: the diffusion (v-) loss of a teacher (math.md §1) and the multistep consistency
objective of Algorithm 1 (math.md §4), with the Direct CM target of Vouitsis et al. 2024 (math.md §6).

MCMObjective is composed of parts chosen once from its options: a segment grid (edges uniform in t or logSNR),
a teacher integrator (TEACHER_INTEGRATORS), a target (TARGETS: one teacher step and the student's stop-gradient
jump, or Direct CM's teacher solve), a weighting and a loss; loss_at is the numbered steps of Algorithm 1.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from mcm_fast._checks import MAX_STEPS, batch_view, check_batch, check_generator, check_int, inputs_checked
from mcm_fast.denoiser import Denoiser
from mcm_fast.losses import LOSSES, check_huber_eps, check_multiscale, robust_loss, squared_error
from mcm_fast.models.dropout import MaskTape, foreign_dropout
from mcm_fast.ops.losses import target_loss_unchecked, target_unchecked
from mcm_fast.ops.steps import addim_unchecked, ddim_unchecked
from mcm_fast.schedules import SPACINGS, CosineSchedule, alpha_sigma
from mcm_fast.solvers import analytic_x_var, endpoint_x_var, euler_step_reference, heun_step_reference

REFERENCES = ("online", "ema")


def drop_labels(cond: dict, probability: float, null_label: int, key: str = "label", generator=None) -> dict:
    """Classifier-free guidance training: each cond[key] becomes null_label with the given probability."""
    if probability == 0:
        return cond
    labels = cond.get(key)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{key}: expected a [B] tensor of labels when label_dropout > 0, got {labels!r}")
    drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < probability
    return {**cond, key: torch.where(drop, torch.full_like(labels, null_label), labels)}


def diffusion_loss(denoiser: Denoiser, x: torch.Tensor, generator: torch.Generator | None = None,
                   multiscale: int = 0, **cond) -> torch.Tensor:
    """v-loss: mean over the batch of w(t) ||x_hat - x||^2, w(t) = SNR(t) + 1, t ~ U(0, 1) (math.md §1).

    With w = 1 / sigma_t^2 this is ||v_hat - v||^2 for any parameterization of the network.
    """
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser: expected a Denoiser, got {type(denoiser).__name__}")
    check_batch("x", x)
    check_multiscale(multiscale, x)
    check_generator("generator", generator)
    t = torch.rand(x.shape[0], generator=generator, device=x.device)  # [B]
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    logsnr = denoiser.schedule.logsnr(t)
    alpha_t, sigma_t = (batch_view(v, x) for v in alpha_sigma(logsnr))
    z_t = (alpha_t * x + sigma_t * eps).to(x.dtype)  # math.md §1
    x_hat = denoiser(z_t, t, **cond)
    weight = torch.exp(logsnr) + 1  # SNR + 1
    return (weight * squared_error(x_hat, x, multiscale)).mean()


@dataclass(frozen=True)
class TeacherSteps:
    """N(i) = exp(log start + clip(i / anneal, 0, 1) (log end - log start)), the teacher steps at iteration i
    (math.md §4); fixed when start == end."""

    start: int = 64
    end: int = 1280
    anneal: int = 100_000

    def __post_init__(self):
        for name in ("start", "end", "anneal"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"teacher_steps: expected positive integers (start, end, anneal), got "
                                 f"{name}={value!r}")
        if max(self.start, self.end) > MAX_STEPS:
            raise ValueError(f"teacher_steps: expected start and end <= {MAX_STEPS}, got {self.start} and {self.end}")

    def __call__(self, step: int) -> float:
        frac = min(max(step / self.anneal, 0.0), 1.0)
        return math.exp(math.log(self.start) + frac * (math.log(self.end) - math.log(self.start)))


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


class SegmentGrid:
    """S segments between edges uniform in t (the paper) or in logSNR, each split into n_seg teacher steps
    uniform in t (Algorithm 1, steps 1-2)."""

    def __init__(self, schedule: CosineSchedule, segments: int, spacing: str = "t"):
        self.segments, self.spacing = segments, spacing
        self.edges = schedule.segment_edges(segments, spacing)  # [S + 1], float64, on the CPU

    def draw(self, batch: int, n_seg: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment, n_rel) per example: segment ~ U{0..S-1}, n_rel ~ U{1..n_seg}. n_rel is drawn so that a
        compiled graph does not specialize on n_seg (as randint's bound would); float64 keeps u n_seg < n_seg."""
        segment = torch.randint(0, self.segments, (batch,), generator=generator, device=device)
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return segment, (u * n_seg).long() + 1

    def time(self, segment: torch.Tensor, position: torch.Tensor, n_seg: int) -> torch.Tensor:
        """The time (float64) of grid point `position` of each segment: exactly (segment n_seg + position) /
        (n_seg S) when the edges are uniform in t."""
        if self.spacing == "t":
            return (segment * n_seg + position).double() / (n_seg * self.segments)
        edges = self.edges.to(segment.device)
        lo, hi = edges[segment], edges[segment + 1]
        return lo + (hi - lo) * (position.double() / n_seg)


def _addim(obj, teacher, x_teacher, x, z_t, s, logsnr_t, logsnr_s, cond):
    """aDDIM with x_var 0 from data, else xvar_frac ||x_teacher - x||^2 / d (or the analytic value), and 0 into
    s = 0 (solvers.endpoint_x_var)."""
    if teacher is None:
        x_var = torch.zeros_like(s)
    elif obj.xvar_frac == "analytic":
        x_var = endpoint_x_var(analytic_x_var(logsnr_t), s)
    else:
        x_var = endpoint_x_var(obj.xvar_frac * (x_teacher.double() - x.double()).flatten(1).square().mean(1), s)
    return addim_unchecked(x_teacher, z_t, logsnr_t, logsnr_s, x_var, obj.backend)


TEACHER_INTEGRATORS = {  # Algorithm 1, step 5: z_s from x_teacher = teacher(z_t, t) (x from data)
    "addim": _addim,
    "ddim": lambda obj, teacher, x_teacher, x, z_t, s, lt, ls, cond: ddim_unchecked(
        x_teacher, z_t, lt, ls, obj.backend),
    "euler": lambda obj, teacher, x_teacher, x, z_t, s, lt, ls, cond: euler_step_reference(x_teacher, z_t, lt, ls),
    "heun": lambda obj, teacher, x_teacher, x, z_t, s, lt, ls, cond: heun_step_reference(
        teacher, x_teacher, z_t, s, lt, ls, **cond),
}


def _consistency_target(obj, student, reference, teacher, x, z_t, t, s, grid_point, cond):
    """Steps 4-6 of Algorithm 1: one teacher step t -> s, the stop-gradient reference at s and the student at t,
    the reference's dropout masks replayed to the student (a forked RNG state covers other random layers in
    eager mode). Returns (x_hat, x_ref, z_s, s)."""
    with torch.no_grad():
        x_teacher = x if teacher is None else teacher(z_t, t, **cond)  # step 4
        z_s = obj.teacher_step(teacher, x_teacher, x, z_t, t, s, cond)  # step 5
    fork = contextlib.nullcontext() if torch.compiler.is_compiling() else torch.random.fork_rng(
        devices=[x.device] if x.device.type == "cuda" else [])
    with MaskTape() as tape:
        with torch.no_grad(), fork:
            x_ref = reference(z_s, s, **cond)  # step 6
        tape.replay()
        return student(z_t, t, **cond), x_ref, z_s, s


def _direct_target(obj, student, reference, teacher, x, z_t, t, s, grid_point, cond):
    """Direct CM (Vouitsis et al. 2024): the teacher's integrator over every grid step from t down to t_step
    (n_rel per sample; n_seg rounds for the batch, so that no value is read back from the device). It lands on
    t_step itself, so the jump from s = t_step is the identity and x_ref is not read."""
    segment, n_rel, n_seg = grid_point
    z = z_t
    with torch.no_grad():
        for k in range(n_seg):
            left = (n_rel - k).clamp(min=0)  # grid steps still to go; 0 = arrived (the step is the identity)
            t_k = obj.grid.time(segment, left, n_seg)
            s_k = obj.grid.time(segment, (left - 1).clamp(min=0), n_seg)
            x_teacher = x if teacher is None else teacher(z, t_k, **cond)
            z = obj.teacher_step(teacher, x_teacher, x, z, t_k, s_k, cond)
    t_step = obj.grid.time(segment, torch.zeros_like(n_rel), n_seg)
    return student(z_t, t, **cond), z, z, t_step


TARGETS = {"mcm": _consistency_target, "direct": _direct_target}
WEIGHTINGS = {"snr+1": lambda logsnr: torch.exp(logsnr) + 1,
              "sqrt(snr+1)": lambda logsnr: (torch.exp(logsnr) + 1).sqrt()}


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")
    return value


class MCMObjective:
    """Algorithm 1: multistep consistency training (teacher=None) and distillation (math.md §4).

    student(z_t, t, **cond) -> x_hat is trained so that its DDIM jump to the segment start t_step agrees with
    one teacher step t -> s followed by its own stop-gradient jump s -> t_step. Options: student_steps S;
    teacher_steps (start, end, anneal) or one int; teacher_solver; xvar_frac (a float, or "analytic");
    loss and huber_eps; weighting; target "mcm" or "direct" (regress onto the teacher's many-step solve to
    t_step); reference "online" (the student under stop-gradient, the paper) or "ema" (a model passed at each
    call); label_dropout with null_label for classifier-free guidance (cond[label_key] is dropped per sample);
    multiscale, the number of 2x2 poolings in simple diffusion's multiscale loss (see squared_error);
    boundaries, the segment edges uniform in "t" (the paper) or in "logsnr" (sample with the same).
    """

    def __init__(self, schedule: CosineSchedule, student_steps: int = 4, teacher_steps=(64, 1280, 100_000),
                 teacher_solver: str = "addim", xvar_frac=0.75, loss: str = "pseudo_huber", huber_eps: float = 1e-4,
                 weighting: str = "sqrt(snr+1)", target: str = "mcm", reference: str = "online",
                 label_dropout: float = 0.0, null_label: int | None = None, label_key: str = "label",
                 multiscale: int = 0, boundaries: str = "t", backend: str | None = None):
        if not isinstance(schedule, CosineSchedule):
            raise TypeError(f"schedule: expected a CosineSchedule, got {type(schedule).__name__}")
        check_int("student_steps", student_steps, 1, MAX_STEPS)
        if isinstance(teacher_steps, Integral) and not isinstance(teacher_steps, bool):
            teacher_steps = (teacher_steps, teacher_steps, 1)
        if not (isinstance(teacher_steps, (tuple, list)) and len(teacher_steps) == 3):
            raise ValueError(f"teacher_steps: expected an int or (start, end, anneal), got {teacher_steps!r}")
        self.teacher_steps = TeacherSteps(*teacher_steps)
        if min(self.teacher_steps.start, self.teacher_steps.end) < student_steps:
            raise ValueError(f"teacher_steps: expected start and end >= student_steps={student_steps}, "
                             f"got {teacher_steps!r}")
        if xvar_frac != "analytic" and (isinstance(xvar_frac, bool) or not isinstance(xvar_frac, Real)
                                        or not 0 <= xvar_frac < math.inf):
            raise ValueError(f"xvar_frac: expected a finite number >= 0 or 'analytic', got {xvar_frac!r}")
        check_huber_eps(huber_eps)
        if isinstance(label_dropout, bool) or not isinstance(label_dropout, Real) or not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout: expected a probability in [0, 1], got {label_dropout!r}")
        if null_label is not None:
            check_int("null_label", null_label, 0)
        if label_dropout > 0 and null_label is None:
            raise ValueError("null_label: expected the null class index when label_dropout > 0, got None")
        self.schedule = schedule
        self.student_steps = int(student_steps)
        self.teacher_solver = _choice("teacher_solver", teacher_solver, TEACHER_INTEGRATORS)
        self.xvar_frac = xvar_frac
        self.loss = _choice("loss", loss, LOSSES)
        self.huber_eps = float(huber_eps)
        self.weighting = _choice("weighting", weighting, WEIGHTINGS)
        self.target = _choice("target", target, TARGETS)
        self.reference = _choice("reference", reference, REFERENCES)
        self.label_dropout = float(label_dropout)
        self.null_label = null_label
        self.label_key = label_key
        self.multiscale = check_multiscale(multiscale)
        self.boundaries = _choice("boundaries", boundaries, SPACINGS)
        self.grid = SegmentGrid(schedule, self.student_steps, self.boundaries)
        self.edges = self.grid.edges
        self.backend = backend

    def segment_steps(self, step: int) -> int:
        """n_seg = round(N(step) / S): teacher steps per segment at training iteration `step` (Algorithm 1, step 1)."""
        check_int("step", step, 0)
        return max(1, round(self.teacher_steps(step) / self.student_steps))

    def __call__(self, student, x: torch.Tensor, teacher=None, step: int = 0, generator: torch.Generator | None = None,
                 reference_model=None, diagnostics: bool = False, **cond):
        """The mean loss over the batch at training iteration `step`; with diagnostics=True also {"t", "segment",
        "loss"} per sample."""
        return self.loss_at(student, x, self.segment_steps(step), teacher, generator, reference_model, diagnostics,
                            **cond)

    def loss_at(self, student, x: torch.Tensor, n_seg: int, teacher=None, generator: torch.Generator | None = None,
                reference_model=None, diagnostics: bool = False, **cond):
        """The loss with n_seg teacher steps per segment: the part of a training step that torch.compile takes
        as one graph (n_seg is an input, so the annealed schedule does not recompile at every change). The
        inputs are checked here once; the steps below read no value back from the device."""
        reference = self._check_call(student, x, n_seg, teacher, generator, reference_model)
        logsnr = self.schedule.logsnr_unchecked
        with contextlib.nullcontext() if torch.compiler.is_compiling() else inputs_checked():
            # 1-2. a segment and a grid point in it per example; t_step, then s and t one teacher step apart
            segment, n_rel = self.grid.draw(x.shape[0], n_seg, generator, x.device)
            t_step, t, s = (self.grid.time(segment, k, n_seg) for k in (torch.zeros_like(n_rel), n_rel, n_rel - 1))
            # 3. z_t = alpha_t x + sigma_t eps
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            logsnr_t = logsnr(t)
            alpha_t, sigma_t = (batch_view(v, x) for v in alpha_sigma(logsnr_t))
            z_t = (alpha_t * x + sigma_t * eps).to(x.dtype)
            cond = drop_labels(cond, self.label_dropout, self.null_label, self.label_key, generator)
            # 4-6. the teacher's z_s, the stop-gradient reference x_ref at s, the student's x_hat at t
            x_hat, x_ref, z_s, s = TARGETS[self.target](self, student, reference, teacher, x, z_t, t, s,
                                                        (segment, n_rel, n_seg), cond)
            # 6-8. x_ref's DDIM jump to t_step (the identity where s = t_step: x_ref unused, even if not finite),
            # invDDIM against z_t, and the weighted pseudo-Huber distance, fused unless the loss is multiscale
            weight = WEIGHTINGS[self.weighting](logsnr_t)
            per_sample = self._distance(x_hat, x_ref, z_s, z_t, (logsnr_t, logsnr(s), logsnr(t_step)), weight)
        loss = per_sample.mean()
        if diagnostics:
            return loss, {"t": t, "segment": segment, "loss": per_sample.detach()}
        return loss

    def _check_call(self, student, x, n_seg, teacher, generator, reference_model):
        """Checks loss_at's arguments (reading no tensor's values); returns the reference model of step 6."""
        check_batch("x", x)
        if not torch.compiler.is_compiling():  # a symbolic int while compiling
            check_int("n_seg", n_seg, 1, MAX_STEPS)
        check_multiscale(self.multiscale, x)
        check_generator("generator", generator)
        for name, model in (("student", student), ("teacher", teacher), ("reference_model", reference_model)):
            if (model is not None or name == "student") and not callable(model):
                raise TypeError(f"{name}: expected a callable model(z_t, t, **cond) -> x_hat, got "
                                f"{type(model).__name__}")
        if teacher is None and self.teacher_solver == "heun":
            raise ValueError("teacher: teacher_solver='heun' needs a teacher model (training from data has none)")
        if (self.reference == "ema") != (reference_model is not None):
            raise ValueError(f"reference_model: expected a model exactly when reference='ema', got reference="
                             f"{self.reference!r} and reference_model={type(reference_model).__name__}")
        reference = student if reference_model is None else reference_model
        unshared = foreign_dropout(reference) if torch.compiler.is_compiling() and self.target == "mcm" else []
        if unshared:
            raise TypeError(f"reference: compiled, only mcm_fast.models.Dropout layers share their masks with the "
                            f"student; replace the torch.nn dropout layers {unshared}")
        return reference

    def teacher_step(self, teacher, x_teacher, x, z_t, t, s, cond):
        """One step of the teacher's integrator from t to s (Algorithm 1, step 5)."""
        logsnr = self.schedule.logsnr_unchecked
        return TEACHER_INTEGRATORS[self.teacher_solver](self, teacher, x_teacher, x, z_t, s, logsnr(t), logsnr(s),
                                                        cond)

    def _distance(self, x_hat, x_ref, z_s, z_t, logsnrs, weight):
        """Steps 6-8: weight * rho(||x_hat - sg(x_target)||^2) per sample, in one fused pass unless multiscale."""
        if not self.multiscale:
            return target_loss_unchecked(x_hat, x_ref, z_s, z_t, *logsnrs, weight, self.loss, self.huber_eps,
                                         self.backend)
        with torch.no_grad():
            x_target = target_unchecked(x_ref, z_s, z_t, *logsnrs, backend=self.backend)
        dist_sq = squared_error(x_hat, x_target, self.multiscale)
        return weight.to(dist_sq.dtype) * robust_loss(dist_sq, self.loss, self.huber_eps)
