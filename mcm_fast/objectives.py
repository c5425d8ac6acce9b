"""Training objectives: the diffusion (v-) loss of a teacher (math.md §1) and the multistep consistency
objective of Algorithm 1 (math.md §4), with the Direct CM target of Vouitsis et al. 2024 (math.md §6).

MCMObjective is composed of parts built once from its options, as EDM's loss classes: the teacher steps N(i),
a segment grid (SegmentGrid: edges uniform in t or logSNR, one S or several), a target (ConsistencyTarget: one
teacher step and the student's stop-gradient jump; DirectTarget: Direct CM's teacher solve) and a Distance (the
fused target, loss and weighting). Per loss a TeacherStep binds the teacher, its integrator (TEACHER_SOLVERS of
mcm_fast.integrators), aDDIM's x_var and guidance. per_sample is the numbered steps of Algorithm 1.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import NamedTuple

import torch

from mcm_fast._checks import MAX_STEPS, batch_view, check_batch, check_generator, check_int, inputs_checked
from mcm_fast.denoiser import Denoiser
from mcm_fast.guidance import guided_outputs
from mcm_fast.integrators import INTEGRATORS
from mcm_fast.losses import LOSSES, check_huber_eps, check_multiscale, robust_loss, squared_error
from mcm_fast.models.dropout import MaskTape, foreign_dropout
from mcm_fast.models.embeddings import check_student_steps
from mcm_fast.ops.mcm_loss import target_loss_unchecked, target_unchecked
from mcm_fast.schedules import SPACINGS, Schedule, alpha_sigma
from mcm_fast.solvers import analytic_x_var


def drop_condition(cond: dict, probability: float, null_cond: dict, generator=None) -> dict:
    """Classifier-free guidance training: with the given probability an example's condition becomes the null
    one: each key of null_cond in cond replaced in that example by its null value (a number, as the null class of
    "label", or a tensor broadcast like one example, as the empty prompt's encoder_hidden_states [1, L, D])."""
    if probability == 0:
        return cond
    values = {key: cond.get(key) for key in null_cond}
    for key, value in values.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 1:
            raise ValueError(f"{key}: expected a [B, ...] tensor per example when label_dropout > 0, got {value!r}")
    first = next(iter(values.values()))
    drop = torch.rand(first.shape[0], generator=generator, device=first.device) < probability
    dropped = {}
    for key, value in values.items():
        null = null_cond[key]
        null = null.to(value.device, value.dtype).expand_as(value) if isinstance(null, torch.Tensor) else \
            torch.full_like(value, null)
        dropped[key] = torch.where(drop.view(-1, *[1] * (value.dim() - 1)), null, value)
    return {**cond, **dropped}


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

    @classmethod
    def of(cls, value, student_steps: int) -> TeacherSteps:
        """TeacherSteps from (start, end, anneal) or one int (fixed), at least the student's largest S."""
        if isinstance(value, Integral) and not isinstance(value, bool):
            value = (value, value, 1)
        if not (isinstance(value, (tuple, list)) and len(value) == 3):
            raise ValueError(f"teacher_steps: expected an int or (start, end, anneal), got {value!r}")
        steps = cls(*value)
        if min(steps.start, steps.end) < student_steps:
            raise ValueError(f"teacher_steps: expected start and end >= student_steps={student_steps}, got {value!r}")
        return steps

    def __call__(self, step: int) -> float:
        frac = min(max(step / self.anneal, 0.0), 1.0)
        return math.exp(math.log(self.start) + frac * (math.log(self.end) - math.log(self.start)))


class GridPoints(NamedTuple):
    """The examples' places on the grid, [B] each: segment, n_rel, n_seg and S, the segment edges of each example's
    S ([B, max S + 1]; None for edges uniform in t, which need none); rounds, the largest n_seg (Direct CM's solve)."""

    segment: torch.Tensor
    n_rel: torch.Tensor
    n_seg: torch.Tensor
    steps: torch.Tensor
    edges: torch.Tensor | None
    rounds: int


class SegmentGrid:
    """S segments between edges uniform in t (the paper) or in logSNR, each split into n_seg teacher steps
    uniform in t (Algorithm 1, steps 1-2). For a student of several S (multi) each example draws its S first,
    with probabilities probs, then its segment and grid point on that S's grid."""

    def __init__(self, schedule: Schedule, steps: tuple, spacing: str = "t", probs=None, multi: bool = False):
        self.steps, self.spacing, self.probs, self.multi = steps, spacing, probs, multi
        # [len(steps), max S + 1], float64, on the CPU: row i the edges of steps[i] (padded with 0)
        self.edges = torch.zeros(len(steps), max(steps) + 1, dtype=torch.float64)
        for i, n in enumerate(steps):
            self.edges[i, :n + 1] = schedule.segment_edges(n, spacing)
        self._tables = {}  # {(device, n_segs): its tables}, the newest only

    def _tables_on(self, device, n_segs: tuple) -> tuple:
        """([len(steps)] S, [len(steps)] n_seg, the edges or None for edges uniform in t) on device, copied there
        once per device and n_segs (which changes only when the annealed N does), not on every training step."""
        key = (torch.device(device), n_segs)
        if key not in self._tables:
            edges = None if self.spacing == "t" else self.edges.to(device)
            self._tables = {key: (torch.tensor(self.steps, device=device), torch.tensor(n_segs, device=device), edges)}
        return self._tables[key]

    def draw(self, batch: int, n_segs: tuple, generator, device) -> GridPoints:
        """segment ~ U{0..S-1} and n_rel ~ U{1..n_seg} per example (n_segs: one n_seg per S). n_rel is drawn so that
        a compiled graph does not specialize on n_seg (as randint's bound would); float64 keeps u n_seg < n_seg."""
        if self.multi:
            row = torch.multinomial(self.probs.to(device), batch, replacement=True, generator=generator)
        else:
            row = torch.zeros(batch, dtype=torch.long, device=device)
        steps, n_seg, edges = self._tables_on(device, n_segs)
        steps, n_seg = steps[row], n_seg[row]
        if self.multi:
            segment = (torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * steps).long()
        else:
            segment = torch.randint(0, self.steps[0], (batch,), generator=generator, device=device)
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        return GridPoints(segment, (u * n_seg).long() + 1, n_seg, steps, None if edges is None else edges[row],
                          max(n_segs))

    def time(self, points: GridPoints, position: torch.Tensor) -> torch.Tensor:
        """The time (float64) of grid point `position` of each example's segment: exactly (segment n_seg +
        position) / (n_seg S) when the edges are uniform in t."""
        if self.spacing == "t":
            return (points.segment * points.n_seg + position).double() / (points.n_seg * points.steps)
        lo = points.edges.gather(1, points.segment[:, None])[:, 0]
        hi = points.edges.gather(1, points.segment[:, None] + 1)[:, 0]
        return lo + (hi - lo) * (position.double() / points.n_seg)


TEACHER_SOLVERS = ("addim", "ddim", "euler", "heun")  # Algorithm 1, step 5 (of mcm_fast.integrators)


class TeacherStep:
    """Algorithm 1, steps 4-5, bound once per loss: the teacher's x_hat at (z, t), guided at w ([B]) with one batched
    call on [cond, null] when guidance is distilled, and one step of its integrator to s (Heun's second call
    guided too). From data (no teacher) x_hat is x itself and aDDIM's x_var 0; from a teacher x_var is xvar_frac
    ||x_cond - x||^2 / d, x_cond the conditional output (the paper's rule), or the analytic value."""

    def __init__(self, teacher, x: torch.Tensor, w, objective):
        self.teacher, self.x, self.w = teacher, x, w
        self.solver, self.xvar_frac, self.backend = objective.teacher_solver, objective.xvar_frac, objective.backend
        self.null_cond, self.logsnr = objective.null_cond, objective.schedule.logsnr_unchecked

    def outputs(self, z, t, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat, x_cond): the teacher's (guided) output and its conditional one."""
        if self.teacher is None:
            return self.x, self.x
        if self.w is None:
            x_hat = self.teacher(z, t, **cond)
            return x_hat, x_hat
        return guided_outputs(self.teacher, z, t, self.w, self.null_cond, cond)

    def x_var(self, x_cond, logsnr_t) -> torch.Tensor:
        if self.teacher is None:
            return torch.zeros_like(logsnr_t)
        if self.xvar_frac == "analytic":
            return analytic_x_var(logsnr_t)
        return self.xvar_frac * (x_cond.double() - self.x.double()).flatten(1).square().mean(1)

    def __call__(self, z, t, s, cond) -> torch.Tensor:
        """z_s: one step of the teacher's integrator from (z, t) to s."""
        x_hat, x_cond = self.outputs(z, t, cond)
        model = self.teacher if self.w is None else (lambda z_, time, **c: self.outputs(z_, time, c)[0])
        logsnr_t = self.logsnr(t)
        return INTEGRATORS[self.solver](x_hat, z, s, logsnr_t, self.logsnr(s), model=model, cond=cond,
                                        x_var=lambda: self.x_var(x_cond, logsnr_t), backend=self.backend)


class Target:
    """Steps 4-6 of Algorithm 1 on a segment grid: (x_hat, x_ref, z_s, s) from the student, the teacher step, z_t,
    the times t and s and the examples' grid points."""

    def __init__(self, grid: SegmentGrid):
        self.grid = grid


class ConsistencyTarget(Target):
    """One teacher step t -> s, the stop-gradient student (the reference) at s and the student at t, both with the
    student's own inputs; the reference's dropout masks are replayed to the student (a forked RNG state covers
    other random layers in eager mode)."""

    def __call__(self, student, teacher_step: TeacherStep, z_t, t, s, points: GridPoints, inputs: dict, cond: dict):
        with torch.no_grad():
            z_s = teacher_step(z_t, t, s, cond)  # steps 4-5
        fork = contextlib.nullcontext() if torch.compiler.is_compiling() else torch.random.fork_rng(
            devices=[z_t.device] if z_t.device.type == "cuda" else [])
        with MaskTape() as tape:
            with torch.no_grad(), fork:
                x_ref = student(z_s, s, **cond, **inputs)  # step 6
            tape.replay()
            return student(z_t, t, **cond, **inputs), x_ref, z_s, s


class DirectTarget(Target):
    """Direct CM (Vouitsis et al. 2024): the teacher's integrator over every grid step from t down to t_step
    (n_rel per example; the batch runs the largest n_seg's rounds, so that no value is read back from the device).
    It lands on t_step itself, so the jump from s = t_step is the identity and x_ref is not read."""

    def __call__(self, student, teacher_step: TeacherStep, z_t, t, s, points: GridPoints, inputs: dict, cond: dict):
        z = z_t
        with torch.no_grad():
            for k in range(points.rounds):
                left = (points.n_rel - k).clamp(min=0)  # grid steps still to go; 0 = arrived (the step is the identity)
                z = teacher_step(z, self.grid.time(points, left), self.grid.time(points, (left - 1).clamp(min=0)),
                                 cond)
        t_step = self.grid.time(points, torch.zeros_like(points.n_rel))
        return student(z_t, t, **cond, **inputs), z, z, t_step


TARGETS = {"mcm": ConsistencyTarget, "direct": DirectTarget}
WEIGHTINGS = {"snr+1": lambda logsnr: torch.exp(logsnr) + 1,
              "sqrt(snr+1)": lambda logsnr: (torch.exp(logsnr) + 1).sqrt()}


class Distance:
    """Steps 6-8: weight(t) rho(||x_hat - sg(x_target)||^2) per example, x_target being x_ref's DDIM jump s -> t_step
    and invDDIM against z_t (the identity where s = t_step: x_ref unused, even if not finite); one fused pass
    unless the loss is multiscale."""

    def __init__(self, loss: str, huber_eps: float, weighting: str, multiscale: int, backend):
        check_huber_eps(huber_eps)
        self.loss, self.huber_eps = _choice("loss", loss, LOSSES), float(huber_eps)
        self.weighting = WEIGHTINGS[_choice("weighting", weighting, WEIGHTINGS)]
        self.multiscale, self.backend = check_multiscale(multiscale), backend

    def __call__(self, x_hat, x_ref, z_s, z_t, logsnrs) -> torch.Tensor:
        weight = self.weighting(logsnrs[0])
        if not self.multiscale:
            return target_loss_unchecked(x_hat, x_ref, z_s, z_t, *logsnrs, weight, self.loss, self.huber_eps,
                                         self.backend)
        with torch.no_grad():
            x_target = target_unchecked(x_ref, z_s, z_t, *logsnrs, backend=self.backend)
        dist_sq = squared_error(x_hat, x_target, self.multiscale)
        return weight.to(dist_sq.dtype) * robust_loss(dist_sq, self.loss, self.huber_eps)


class Losses(NamedTuple):
    """Algorithm 1's loss per example [B], with each example's time t and segment."""

    loss: torch.Tensor
    t: torch.Tensor
    segment: torch.Tensor


def _student_steps(student_steps) -> tuple[int, ...]:
    """The S a student serves as a tuple: one int, or a tuple of distinct ints (one student for each)."""
    multi = isinstance(student_steps, (tuple, list))
    steps = check_student_steps(student_steps) if multi else (check_int("student_steps", student_steps, 1),)
    for value in steps:
        check_int("student_steps", value, 1, MAX_STEPS)
    return steps


def _probabilities(probs, count: int) -> torch.Tensor:
    """The probabilities of the S of a multi-step student (uniform when probs is None) as a float64 tensor."""
    if probs is None:
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    if not (isinstance(probs, (tuple, list)) and len(probs) == count and all(
            isinstance(p, Real) and not isinstance(p, bool) and 0 <= p < math.inf for p in probs) and sum(probs) > 0):
        raise ValueError(f"steps_probs: expected {count} weights >= 0 (one per S) with a positive sum, got {probs!r}")
    probs = torch.tensor(probs, dtype=torch.float64)
    return probs / probs.sum()


def _guidance_range(guidance, null_cond):
    """The (lo, hi) range of the guidance scale drawn per example, or None (no guidance distilled)."""
    if guidance is None:
        return None
    if not (isinstance(guidance, (tuple, list)) and len(guidance) == 2 and all(
            isinstance(w, Real) and not isinstance(w, bool) and math.isfinite(w) for w in guidance)
            and 0 <= guidance[0] <= guidance[1]):
        raise ValueError(f"guidance: expected a range (lo, hi) with 0 <= lo <= hi, got {guidance!r}")
    if null_cond is None:
        raise ValueError("null_label: expected the null class index (or null_cond the null condition) of the guided "
                         "teacher's unconditional call when guidance is distilled, got None")
    return float(guidance[0]), float(guidance[1])


def _xvar_frac(xvar_frac):
    if xvar_frac != "analytic" and (isinstance(xvar_frac, bool) or not isinstance(xvar_frac, Real)
                                    or not 0 <= xvar_frac < math.inf):
        raise ValueError(f"xvar_frac: expected a finite number >= 0 or 'analytic', got {xvar_frac!r}")
    return xvar_frac


def _null_condition(null_label, null_cond) -> dict | None:
    """The null condition of classifier-free guidance: {"label": null_label}, or null_cond as given."""
    if null_label is not None:
        check_int("null_label", null_label, 0)
        if null_cond is not None:
            raise ValueError(f"null_cond: expected None beside null_label={null_label} (which is {{'label': "
                             f"{null_label}}}), got {null_cond!r:.60}")
        return {"label": null_label}
    if null_cond is not None and not (isinstance(null_cond, dict) and null_cond):
        raise ValueError(f"null_cond: expected a dict of the unconditional inputs (e.g. {{'encoder_hidden_states': "
                         f"the empty prompt's}}), got {null_cond!r:.60}")
    return null_cond


def _label_dropout(label_dropout, null_cond) -> float:
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, Real) or not 0 <= label_dropout <= 1:
        raise ValueError(f"label_dropout: expected a probability in [0, 1], got {label_dropout!r}")
    if label_dropout > 0 and null_cond is None:
        raise ValueError("null_label: expected the null class index (or null_cond the null condition) when "
                         "label_dropout > 0, got None")
    return float(label_dropout)


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")
    return value


class MCMObjective:
    """Algorithm 1: multistep consistency training (teacher=None) and distillation (math.md §4).

    student(z_t, t, **cond) -> x_hat is trained so that its DDIM jump to the segment start t_step agrees with
    one teacher step t -> s followed by its own stop-gradient jump s -> t_step. Options: student_steps S, or a
    tuple of S for one student serving each (every example draws its S, with probabilities steps_probs or
    uniformly, and the student gets student_steps= [B]); guidance (lo, hi): classifier-free guidance distilled
    into the student (every example draws w ~ U(lo, hi); the teacher is guided at w, and the student gets
    guidance= [B]); teacher_steps (start, end, anneal) or one int; teacher_solver; xvar_frac (a float, or
    "analytic"); loss and huber_eps; weighting; target "mcm" or "direct" (regress onto the teacher's many-step
    solve to t_step); label_dropout with null_label for classifier-free guidance (cond["label"] is dropped per
    example), or with null_cond, the null value of each condition (e.g. {"encoder_hidden_states": the empty
    prompt's embedding}); multiscale, the number of 2x2 poolings in simple diffusion's multiscale loss (see
    squared_error); boundaries, the segment edges uniform in "t" (the paper) or in "logsnr" (sample with the same).
    """

    def __init__(self, schedule: Schedule, student_steps: int = 4, teacher_steps=(64, 1280, 100_000),
                 teacher_solver: str = "addim", xvar_frac=0.75, loss: str = "pseudo_huber", huber_eps: float = 1e-4,
                 weighting: str = "sqrt(snr+1)", target: str = "mcm", label_dropout: float = 0.0,
                 null_label: int | None = None, multiscale: int = 0, boundaries: str = "t", steps_probs=None,
                 guidance=None, backend: str | None = None, null_cond: dict | None = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
        self.schedule, self.backend = schedule, backend
        self.steps = _student_steps(student_steps)  # the S this student serves
        self.null_cond = _null_condition(null_label, null_cond)
        self.guidance = _guidance_range(guidance, self.null_cond)
        self.teacher_steps = TeacherSteps.of(teacher_steps, max(self.steps))
        self.xvar_frac = _xvar_frac(xvar_frac)
        self.label_dropout = _label_dropout(label_dropout, self.null_cond)
        self.teacher_solver = _choice("teacher_solver", teacher_solver, TEACHER_SOLVERS)
        self.distance = Distance(loss, huber_eps, weighting, multiscale, backend)
        self.grid = SegmentGrid(schedule, self.steps, _choice("boundaries", boundaries, SPACINGS),
                                _probabilities(steps_probs, len(self.steps)), isinstance(student_steps, (tuple, list)))
        self.target = TARGETS[_choice("target", target, TARGETS)](self.grid)

    def segment_steps(self, step: int):
        """n_seg = round(N(step) / S): teacher steps per segment at training iteration `step` (Algorithm 1, step 1);
        a tuple (one per S) for a student of several S."""
        check_int("step", step, 0)
        n_segs = tuple(max(1, round(self.teacher_steps(step) / n)) for n in self.steps)
        return n_segs if self.grid.multi else n_segs[0]

    def __call__(self, student, x: torch.Tensor, teacher=None, step: int = 0, generator: torch.Generator | None = None,
                 **cond) -> torch.Tensor:
        """The mean loss over the batch at training iteration `step`."""
        return self.loss_at(student, x, self.segment_steps(step), teacher, generator, **cond)

    def loss_at(self, student, x: torch.Tensor, n_seg, teacher=None, generator: torch.Generator | None = None,
                **cond) -> torch.Tensor:
        """The mean loss with n_seg teacher steps per segment (a tuple, one per S, for a student of several S): the
        part of a training step that torch.compile takes as one graph (n_seg is an input, so the annealed
        schedule does not recompile at every change)."""
        return self.per_sample(student, x, n_seg, teacher, generator, **cond).loss.mean()

    def per_sample(self, student, x: torch.Tensor, n_seg, teacher=None, generator: torch.Generator | None = None,
                   **cond) -> Losses:
        """Algorithm 1's loss per example, with its t and segment. The inputs are checked here once; the steps
        below read no value back from the device."""
        n_segs = self._check_call(student, x, n_seg, teacher, generator)
        logsnr = self.schedule.logsnr_unchecked
        with contextlib.nullcontext() if torch.compiler.is_compiling() else inputs_checked():
            # 1-2. (for a student of several S, an S per example first) a segment and a grid point in it per
            # example; t_step, then s and t one teacher step apart
            points = self.grid.draw(x.shape[0], n_segs, generator, x.device)
            t_step, t, s = (self.grid.time(points, k) for k in (torch.zeros_like(points.n_rel), points.n_rel,
                                                                 points.n_rel - 1))
            # 3. z_t = alpha_t x + sigma_t eps
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            logsnr_t = logsnr(t)
            alpha_t, sigma_t = (batch_view(v, x) for v in alpha_sigma(logsnr_t))
            z_t = (alpha_t * x + sigma_t * eps).to(x.dtype)
            cond = drop_condition(cond, self.label_dropout, self.null_cond, generator=generator)
            inputs = self._student_inputs(points, x.shape[0], generator, x.device)
            # 4-6. the teacher's z_s, the stop-gradient reference x_ref at s, the student's x_hat at t
            teacher_step = TeacherStep(teacher, x, inputs.get("guidance"), self)
            x_hat, x_ref, z_s, s = self.target(student, teacher_step, z_t, t, s, points, inputs, cond)
            # 6-8. x_ref's DDIM jump to t_step, invDDIM against z_t, the weighted pseudo-Huber distance
            loss = self.distance(x_hat, x_ref, z_s, z_t, (logsnr_t, logsnr(s), logsnr(t_step)))
        return Losses(loss, t, points.segment)

    def _student_inputs(self, points: GridPoints, batch: int, generator, device) -> dict:
        """What the student gets beyond (z_t, t, cond): each example's S (a student of several S) and its guidance
        scale w ~ U(lo, hi) (guidance distilled)."""
        inputs = {"student_steps": points.steps} if self.grid.multi else {}
        if self.guidance is not None:
            lo, hi = self.guidance
            inputs["guidance"] = lo + (hi - lo) * torch.rand(batch, generator=generator, device=device)
        return inputs

    def _check_call(self, student, x, n_seg, teacher, generator) -> tuple:
        """Checks per_sample's arguments (reading no tensor's values); returns n_seg as a tuple, one per S."""
        check_batch("x", x)
        n_segs = tuple(n_seg) if self.grid.multi and isinstance(n_seg, (tuple, list)) else (n_seg,)
        if len(n_segs) != len(self.steps):
            raise ValueError(f"n_seg: expected a tuple of {len(self.steps)} (one per S in {self.steps}), got "
                             f"{n_seg!r}")
        if not torch.compiler.is_compiling():  # a symbolic int while compiling
            for value in n_segs:
                check_int("n_seg", value, 1, MAX_STEPS)
        if self.guidance is not None and teacher is None:
            raise ValueError("teacher: distilling guidance (guidance=(lo, hi)) needs a teacher model")
        check_multiscale(self.distance.multiscale, x)
        check_generator("generator", generator)
        for name, model in (("student", student), ("teacher", teacher)):
            if (model is not None or name == "student") and not callable(model):
                raise TypeError(f"{name}: expected a callable model(z_t, t, **cond) -> x_hat, got "
                                f"{type(model).__name__}")
        if teacher is None and self.teacher_solver == "heun":
            raise ValueError("teacher: teacher_solver='heun' needs a teacher model (training from data has none)")
        compiled = torch.compiler.is_compiling() and isinstance(self.target, ConsistencyTarget)
        unshared = foreign_dropout(student) if compiled else []
        if unshared:
            raise TypeError(f"reference: compiled, only mcm_fast.models.Dropout layers share their masks with the "
                            f"student; replace the torch.nn dropout layers {unshared}")
        return n_segs
