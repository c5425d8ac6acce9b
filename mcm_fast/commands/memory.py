"""`mcm-fast memory`: the GPU memory a distillation run of a pipeline's UNet or transformer takes, per part,
computed from its config files alone (mcm_fast.integrations.memory; no weights are read)."""
from __future__ import annotations

import json
from pathlib import Path

from mcm_fast.integrations.memory import sd3_inputs, training_memory, unet_inputs
from mcm_fast.integrations.pipelines import is_pipeline_folder, network_folder, pipeline_settings
from mcm_fast.models.diffusers_nets import import_diffusers


def memory(pipeline, batch: int, lora_rank: int | None = None, precision: str = "bf16", checkpointing: bool = False,
           echo=print) -> dict[str, float]:
    """GiB per part (and the parameter counts) of distilling the network of a pipeline folder at this batch per
    GPU: a UNet2DConditionModel (unet/, prompts of the tokenizer's length) or an SD3Transformer2DModel
    (transformer/, CLIP's and T5's tokens)."""
    folder, diffusers = Path(pipeline), import_diffusers()
    if not is_pipeline_folder(folder):
        raise FileNotFoundError(f"--pipeline: no {folder}/unet/config.json or transformer/config.json; expected a "
                                f"diffusers text-to-image pipeline folder")
    settings, info = pipeline_settings(folder)
    if "text" not in info:
        raise ValueError(f"--pipeline: {folder} holds a {settings['model']!r} network without prompts; expected a "
                         f"text-to-image pipeline")
    config = json.loads((network_folder(folder) / "config.json").read_text())
    model_class = getattr(diffusers, config["_class_name"])
    inputs = (sd3_inputs if settings["model"] == "diffusers-sd3" else unet_inputs)(config, info["text"][0])
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    parts = training_memory(model_class, config, inputs, batch, lora_rank, precision, checkpointing)
    student = f"LoRA rank {lora_rank}" if lora_rank else "full student (with a teacher and an EMA copy)"
    echo(f"{folder}: {model_class.__name__}, {student}, batch {batch} per GPU, {precision}"
         f"{', gradient checkpointing' if checkpointing else ''}")
    for name, value in parts.items():
        echo(f"  {name:<16} {value:10.2f}{'' if '(M)' in name else ' GiB'}")
    return parts
