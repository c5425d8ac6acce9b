"""experiments/text_to_image.py (issue 34's proof at MNIST size): its configs are valid runs of the package on a
latent cache, the teacher's on the pipeline's betas and timesteps (what `mcm-fast export` needs), and its table
reads ledger rows."""
from pathlib import Path

import pytest

from experiments import text_to_image as study
from mcm_fast.train.config import load_config


def test_the_configs_are_a_text_teacher_on_the_pipelines_betas_and_a_lora_student():
    scale = study.SCALES["full"]
    teacher = load_config(study.teacher_config(Path("cache"), scale))
    assert (teacher.kind, teacher.model, teacher.schedule, teacher.time_input) == (
        "teacher", "diffusers-unet2d-cond", "discrete", "native")
    assert teacher.schedule_options["beta_schedule"] == "scaled_linear" and teacher.data.name == "latents"
    student = load_config(study.student_config(Path("cache"), Path("teacher-pipeline"), scale))
    assert student.kind == "cd" and student.lora_rank == 16 and student.teacher == "teacher-pipeline"
    assert student.objective.student_steps == study.STUDENT_S and "conv1" in student.lora_targets


def test_the_table_names_each_sampler_and_arm_and_skips_the_periodic_evaluations():
    rows = [{"run": "teacher", "sampler": "ddim", "steps": 4, "fd_mnist": 20.0, "precision": 0.7, "recall": 0.6},
            {"run": "student", "sampler": "mcm-lora", "steps": 4, "fd_mnist": 10.0, "precision": 0.8, "recall": 0.7},
            {"run": "floor", "sampler": "vae", "steps": None, "fd_mnist": 1.5, "precision": 0.9, "recall": 0.9},
            {"run": "student", "sampler": "eval", "steps": 4, "fd_mnist": 99.0, "precision": 0.1, "recall": 0.1},
            {"run": "sd3/teacher", "sampler": "flow-euler", "steps": 4, "fd_mnist": 30.0, "precision": 0.6,
             "recall": 0.5}]
    lines = study.table(rows).splitlines()
    assert lines[2:] == ["| SD 1.x | MCM LoRA student (MCMScheduler) | 4 | 10.0 | 0.800 | 0.700 |",
                         "| SD 1.x | teacher, DDIMScheduler | 4 | 20.0 | 0.700 | 0.600 |",
                         "| SD 1.x | their VAE reconstructions (the VAE's floor) | - | 1.5 | 0.900 | 0.900 |",
                         "| SD3 | teacher, FlowMatchEulerDiscreteScheduler | 4 | 30.0 | 0.600 | 0.500 |"]


def test_the_sd3_arm_trains_the_transformer_on_the_shifted_flow_and_adapts_both_streams():
    scale = study.SCALES["full"]
    teacher = load_config(study.teacher_config(Path("cache"), scale, "sd3"))
    assert (teacher.model, teacher.schedule, teacher.prediction) == ("diffusers-sd3", "flow", "flow")
    assert teacher.schedule_options == {"shift": 3.0, "time_scale": 1000.0}
    student = load_config(study.student_config(Path("cache"), Path("t"), scale, "sd3"))
    assert "add_q_proj" in student.lora_targets and "conv1" not in student.lora_targets


@pytest.mark.parametrize("name", list(study.SCALES))
def test_every_scale_scores_the_student_against_the_teacher_at_its_steps(name):
    assert study.STUDENT_S in study.SCALES[name].teacher_budgets
