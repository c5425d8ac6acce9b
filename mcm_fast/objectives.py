"""Training objectives: the diffusion (v-) loss of a teacher (math.md §1) and the multistep consistency
objective of Algorithm 1 (math.md §4), with the Direct CM target of Vouitsis et al. 2024 (math.md §6)."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch

from mcm_fast._checks import MAX_STEPS, batch_view, check_batch, check_generator, check_int
from mcm_fast.denoiser import Denoiser
from mcm_fast.losses import (
    LOSSES,
    check_huber_eps,
    check_multiscale,
    mcm_target,
    mcm_target_loss,
    robust_loss,
    squared_error,
)
from mcm_fast.models.dropout import MaskTape, foreign_dropout
from mcm_fast.models.embeddings import check_student_steps
from mcm_fast.sampling import guided_outputs
from mcm_fast.schedules import SPACINGS, Schedule, alpha_sigma
from mcm_fast.solvers import (
    addim_step,
    analytic_x_var,
    ddim_step,
    endpoint_x_var,
    euler_step,
    heun_step,
)

TEACHER_SOLVERS = ("addim", "ddim", "euler", "heun")
WEIGHTINGS = ("snr+1", "sqrt(snr+1)")
TARGETS = ("mcm", "direct")
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
                raise ValueError(f"teacher_steps: expected positive integers (start, end, anneal), got {name}={value!r}")
        if max(self.start, self.end) > MAX_STEPS:
            raise ValueError(f"teacher_steps: expected start and end <= {MAX_STEPS}, got {self.start} and {self.end}")

    def __call__(self, step: int) -> float:
        frac = min(max(step / self.anneal, 0.0), 1.0)
        return math.exp(math.log(self.start) + frac * (math.log(self.end) - math.log(self.start)))


def _probabilities(probs, count: int) -> torch.Tensor:
    """The probabilities of the S of a multi-step student (uniform when probs is None) as a float64 tensor."""
    if probs is None:
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    if not (isinstance(probs, (tuple, list)) and len(probs) == count and all(
            isinstance(p, Real) and not isinstance(p, bool) and 0 <= p < math.inf for p in probs) and sum(probs) > 0):
        raise ValueError(f"steps_probs: expected {count} weights >= 0 (one per S) with a positive sum, got {probs!r}")
    probs = torch.tensor(probs, dtype=torch.float64)
    return probs / probs.sum()


def _guidance_range(guidance):
    """The (lo, hi) range of the guidance scale drawn per example, or None (no guidance distilled)."""
    if guidance is None:
        return None
    if not (isinstance(guidance, (tuple, list)) and len(guidance) == 2 and all(
            isinstance(w, Real) and not isinstance(w, bool) and math.isfinite(w) for w in guidance)
            and 0 <= guidance[0] <= guidance[1]):
        raise ValueError(f"guidance: expected a range (lo, hi) with 0 <= lo <= hi, got {guidance!r}")
    return float(guidance[0]), float(guidance[1])


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


class MCMObjective:
    """Algorithm 1: multistep consistency training (teacher=None) and distillation (math.md §4).

    student(z_t, t, **cond) -> x_hat is trained so that its DDIM jump to the segment start t_step agrees with
    one teacher step t -> s followed by its own stop-gradient jump s -> t_step. Options: student_steps S, or a
    tuple of S for one student serving each (every example draws its S, with probabilities steps_probs or
    uniformly, and the student and reference get student_steps= [B]); guidance (lo, hi): classifier-free
    guidance distilled into the student (every example draws w ~ U(lo, hi); the teacher is guided at w with two
    calls, its aDDIM x_var comes from the conditional output, and the student and reference get guidance= [B]);
    teacher_steps (start, end, anneal) or one int; teacher_solver; xvar_frac (a float, or "analytic");
    loss and huber_eps; weighting; target "mcm" or "direct" (regress onto the teacher's many-step solve to
    t_step); reference "online" (the student under stop-gradient, the paper) or "ema" (a model passed at each
    call); label_dropout with null_label for classifier-free guidance (cond[label_key] is dropped per sample);
    multiscale, the number of 2x2 poolings in simple diffusion's multiscale loss (see squared_error);
    boundaries, the segment edges uniform in "t" (the paper) or in "logsnr" (sample with the same).
    """

    def __init__(self, schedule: Schedule, student_steps: int = 4, teacher_steps=(64, 1280, 100_000),
                 teacher_solver: str = "addim", xvar_frac=0.75, loss: str = "pseudo_huber", huber_eps: float = 1e-4,
                 weighting: str = "sqrt(snr+1)", target: str = "mcm", reference: str = "online", label_dropout: float = 0.0,
                 null_label: int | None = None, label_key: str = "label", multiscale: int = 0,
                 boundaries: str = "t", steps_probs=None, guidance=None, backend: str | None = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
        if isinstance(student_steps, (tuple, list)):
            steps = check_student_steps(student_steps)
            for value in steps:
                check_int("student_steps", value, 1, MAX_STEPS)
        else:
            steps = (check_int("student_steps", student_steps, 1, MAX_STEPS),)
        self.steps_probs = _probabilities(steps_probs, len(steps))
        self.guidance = _guidance_range(guidance)
        if self.guidance is not None and null_label is None:
            raise ValueError("null_label: expected the null class index of the guided teacher's unconditional call "
                             "when guidance is distilled, got None")
        if isinstance(teacher_steps, Integral) and not isinstance(teacher_steps, bool):
            teacher_steps = (teacher_steps, teacher_steps, 1)
        if not (isinstance(teacher_steps, (tuple, list)) and len(teacher_steps) == 3):
            raise ValueError(f"teacher_steps: expected an int or (start, end, anneal), got {teacher_steps!r}")
        self.teacher_steps = TeacherSteps(*teacher_steps)
        if min(self.teacher_steps.start, self.teacher_steps.end) < max(steps):
            raise ValueError(f"teacher_steps: expected start and end >= student_steps={max(steps)}, got {teacher_steps!r}")
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
        self.steps = steps  # the S this student serves; student_steps is the one S, or the tuple
        self.student_steps = steps if isinstance(student_steps, (tuple, list)) else steps[0]
        self.teacher_solver = _choice("teacher_solver", teacher_solver, TEACHER_SOLVERS)
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
        # [len(steps), max S + 1] float64 on the CPU: row i the segment edges of steps[i] (padded with 0)
        self.edges = torch.zeros(len(steps), max(steps) + 1, dtype=torch.float64)
        for i, n in enumerate(steps):
            self.edges[i, :n + 1] = schedule.segment_edges(n, self.boundaries)
        self.backend = backend

    def segment_steps(self, step: int):
        """n_seg = round(N(step) / S): teacher steps per segment at training iteration `step` (Algorithm 1, step 1);
        a tuple (one per S) for a student of several S."""
        check_int("step", step, 0)
        n_seg = tuple(max(1, round(self.teacher_steps(step) / n)) for n in self.steps)
        return n_seg if isinstance(self.student_steps, tuple) else n_seg[0]

    def __call__(self, student, x: torch.Tensor, teacher=None, step: int = 0, generator: torch.Generator | None = None,
                 reference_model=None, diagnostics: bool = False, **cond):
        """The mean loss over the batch at training iteration `step`; with diagnostics=True also {"t", "segment",
        "loss"} per sample."""
        return self.loss_at(student, x, self.segment_steps(step), teacher, generator, reference_model, diagnostics, **cond)

    def loss_at(self, student, x: torch.Tensor, n_seg, teacher=None, generator: torch.Generator | None = None,
             reference_model=None, diagnostics: bool = False, **cond):
        """The loss with n_seg teacher steps per segment (a tuple, one per S, for a student of several S): the part
        of a training step that torch.compile takes as one graph (n_seg is an input, so the annealed schedule
        does not recompile at every change)."""
        check_batch("x", x)
        multi = isinstance(self.student_steps, tuple)
        n_segs = n_seg if multi and isinstance(n_seg, (tuple, list)) else (n_seg,)
        if multi and len(n_segs) != len(self.steps):
            raise ValueError(f"n_seg: expected a tuple of {len(self.steps)} (one per S in {self.steps}), got {n_seg!r}")
        if not torch.compiler.is_compiling():  # a symbolic int while compiling
            for value in n_segs:
                check_int("n_seg", value, 1, MAX_STEPS)
        if self.guidance is not None and teacher is None:
            raise ValueError("teacher: distilling guidance (guidance=(lo, hi)) needs a teacher model")
        check_multiscale(self.multiscale, x)
        check_generator("generator", generator)
        for name, model in (("student", student), ("teacher", teacher), ("reference_model", reference_model)):
            if (model is not None or name == "student") and not callable(model):
                raise TypeError(f"{name}: expected a callable model(z_t, t, **cond) -> x_hat, got {type(model).__name__}")
        if teacher is None and self.teacher_solver == "heun":
            raise ValueError("teacher: teacher_solver='heun' needs a teacher model (training from data has none)")
        if (self.reference == "ema") != (reference_model is not None):
            raise ValueError(f"reference_model: expected a model exactly when reference='ema', got reference="
                             f"{self.reference!r} and reference_model={type(reference_model).__name__}")
        reference = student if reference_model is None else reference_model
        unshared = foreign_dropout(reference) if torch.compiler.is_compiling() and self.target == "mcm" else []
        if unshared:
            raise TypeError(f"reference: compiled, only mcm_fast.models.Dropout layers share their masks with the student; "
                            f"replace the torch.nn dropout layers {unshared}")
        batch, device = x.shape[0], x.device

        # Algorithm 1, steps 1-2: (for a student of several S, an S per example first) a segment and a position in
        # it per example, on the segment's teacher grid
        if multi:
            row = torch.multinomial(self.steps_probs.to(device), batch, replacement=True, generator=generator)
            n_steps = torch.tensor(self.steps, device=device)[row]
            n_seg = torch.tensor(n_segs, device=device)[row]
            segment = (torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * n_steps).long()
        else:
            row, n_steps = torch.zeros(batch, dtype=torch.long, device=device), self.student_steps
            segment = torch.randint(0, n_steps, (batch,), generator=generator, device=device)
        # n_rel uniform on 1..n_seg, drawn so that a compiled graph does not specialize on n_seg (as randint's
        # bound would); float64 keeps u * n_seg below n_seg for every u < 1
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        n_rel = (u * n_seg).long() + 1
        edges = self.edges.to(device)[row]  # [B, max S + 1]
        t_step = self._grid_time(segment, torch.zeros_like(n_rel), n_seg, n_steps, edges)
        t = self._grid_time(segment, n_rel, n_seg, n_steps, edges)
        s = self._grid_time(segment, n_rel - 1, n_seg, n_steps, edges)

        # step 3
        eps = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        logsnr_t = self.schedule.logsnr(t)
        alpha_t, sigma_t = (batch_view(v, x) for v in alpha_sigma(logsnr_t))
        z_t = (alpha_t * x + sigma_t * eps).to(x.dtype)
        cond = drop_labels(cond, self.label_dropout, self.null_label, self.label_key, generator)
        w = None if self.guidance is None else self.guidance[0] + (self.guidance[1] - self.guidance[0]) * torch.rand(
            batch, generator=generator, device=device)
        student_inputs = ({"student_steps": n_steps} if multi else {}) | ({} if w is None else {"guidance": w})

        with torch.no_grad():
            if self.target == "mcm":
                x_teacher, x_cond = self._teacher_call(teacher, x, z_t, t, w, cond)  # step 4
                z_s = self._teacher_step(teacher, x_teacher, x_cond, x, z_t, t, s, w, cond)  # step 5
            else:  # Direct CM: the teacher's solve lands on t_step itself, so the jump from s = t_step is the identity
                z_s = self._teacher_solve(teacher, x, z_t, segment, n_rel, n_seg, max(n_segs), n_steps, edges, w, cond)
        if self.target == "mcm":
            # step 6: the reference sees the student's dropout masks (replayed from a tape; a forked RNG state
            # covers other random layers in eager mode)
            fork = contextlib.nullcontext() if torch.compiler.is_compiling() else torch.random.fork_rng(
                devices=[device] if device.type == "cuda" else [])
            with MaskTape() as tape:
                with torch.no_grad(), fork:
                    x_ref = reference(z_s, s, **cond, **student_inputs)
                tape.replay()
                x_hat = student(z_t, t, **cond, **student_inputs)
        else:
            x_ref, s = z_s, t_step  # x_ref is not read where s = t_step
            x_hat = student(z_t, t, **cond, **student_inputs)

        # steps 6-8: x_ref's DDIM jump to t_step (the identity where n_rel = 1: x_ref unused, even if not finite),
        # invDDIM against z_t, and the weighted pseudo-Huber distance, fused unless the loss is multiscale
        weight = torch.exp(logsnr_t) + 1
        weight = weight if self.weighting == "snr+1" else weight.sqrt()
        if self.multiscale:
            with torch.no_grad():
                x_target = mcm_target(x_ref, z_s, z_t, t, s, t_step, self.schedule, backend=self.backend)
            dist_sq = squared_error(x_hat, x_target, self.multiscale)
            per_sample = weight.to(dist_sq.dtype) * robust_loss(dist_sq, self.loss, self.huber_eps)
        else:
            per_sample = mcm_target_loss(x_hat, x_ref, z_s, z_t, t, s, t_step, self.schedule, weight, self.loss,
                                         self.huber_eps, backend=self.backend)
        loss = per_sample.mean()
        if diagnostics:
            return loss, {"t": t, "segment": segment, "loss": per_sample.detach()}
        return loss

    def _grid_time(self, segment: torch.Tensor, position: torch.Tensor, n_seg, n_steps, edges) -> torch.Tensor:
        """The time (float64) of point `position` of n_seg teacher steps uniform in t over each segment of an
        n_steps-segment grid with edges [B, max S + 1]: exactly (segment n_seg + position) / (n_seg S) when the
        edges are uniform in t. n_seg and n_steps are ints or [B] tensors."""
        if self.boundaries == "t":
            return (segment * n_seg + position).double() / (n_seg * n_steps)
        lo, hi = edges.gather(1, segment[:, None])[:, 0], edges.gather(1, segment[:, None] + 1)[:, 0]
        return lo + (hi - lo) * (position.double() / n_seg)

    def _x_var(self, x_teacher, x, t):
        """Per-sample x_var for aDDIM: xvar_frac ||x_teacher - x||^2 / d, or the analytic value (math.md §3-4)."""
        if self.xvar_frac == "analytic":
            return analytic_x_var(self.schedule.logsnr(t))
        return self.xvar_frac * (x_teacher.double() - x.double()).flatten(1).square().mean(1)

    def _teacher_call(self, teacher, x, z_t, t, w, cond):
        """(x_teacher, x_cond): the teacher's x_hat, guided at w ([B]) when guidance is distilled, and its
        conditional x_hat, which aDDIM's x_var reads (the paper's rule for guided teachers); x itself from data."""
        if teacher is None:
            return x, x
        if w is None:
            x_teacher = teacher(z_t, t, **cond)
            return x_teacher, x_teacher
        return guided_outputs(teacher, z_t, t, w, {self.label_key: self.null_label}, cond)

    def _teacher_step(self, teacher, x_teacher, x_cond, x, z_t, t, s, w, cond):
        """One step of the teacher's integrator from t to s (Algorithm 1, step 5); from data x_var is 0, and a
        step into s = 0 is a DDIM step (solvers.endpoint_x_var)."""
        if self.teacher_solver == "addim":
            x_var = 0.0 if teacher is None else endpoint_x_var(self._x_var(x_cond, x, t), s)
            return addim_step(x_teacher, z_t, t, s, self.schedule, x_var, backend=self.backend)
        if self.teacher_solver == "ddim":
            return ddim_step(x_teacher, z_t, t, s, self.schedule, backend=self.backend)
        if self.teacher_solver == "euler":
            return euler_step(x_teacher, z_t, t, s, self.schedule)
        model = teacher if w is None else (lambda z, time, **c: self._teacher_call(teacher, x, z, time, w, c)[0])
        return heun_step(model, z_t, t, s, self.schedule, x_hat=x_teacher, **cond)

    def _teacher_solve(self, teacher, x, z_t, segment, n_rel, n_seg, rounds, n_steps, edges, w, cond):
        """Direct CM: the teacher's integrator over every grid step from t down to t_step (n_rel per sample; the
        batch runs the largest n_seg's rounds, so that no value is read back from the device)."""
        z = z_t
        for k in range(rounds):
            left = (n_rel - k).clamp(min=0)  # grid steps still to go; 0 = arrived (the step is the identity)
            t_k = self._grid_time(segment, left, n_seg, n_steps, edges)
            s_k = self._grid_time(segment, (left - 1).clamp(min=0), n_seg, n_steps, edges)
            x_teacher, x_cond = self._teacher_call(teacher, x, z, t_k, w, cond)
            z = self._teacher_step(teacher, x_teacher, x_cond, x, z, t_k, s_k, w, cond)
        return z
