"""`mcm-fast memory`: the GPU memory a distillation run of a pipeline's UNet or transformer takes, per part,
computed from its config files alone (mcm_fast.integrations.memory; no weights are read)."""
from __future__ import annotations

import json
from pathlib import Path

from mcm_fast.integrations.memory import sd3_inputs, training_memory, unet_inputs
from mcm_fast.models.diffusers_nets import import_diffusers

T5_LENGTH = 256  # SD3's pipeline default max_sequence_length: its prompt is CLIP's 77 tokens and T5's 256


def memory(pipeline, batch: int, lora_rank: int | None = None, precision: str = "bf16", checkpointing: bool = False,
           echo=print) -> dict[str, float]:
    """GiB per part (and the parameter counts) of distilling the network of a pipeline folder at this batch per
    GPU: a UNet2DConditionModel (unet/, prompts of the tokenizer's length) or an SD3Transformer2DModel
    (transformer/, CLIP's and T5's tokens)."""
    folder, diffusers = Path(pipeline), import_diffusers()
    if (folder / "unet" / "config.json").is_file():
        config = json.loads((folder / "unet" / "config.json").read_text())
        length = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
        model_class, inputs = getattr(diffusers, config["_class_name"]), unet_inputs(config, length)
    elif (folder / "transformer" / "config.json").is_file():
        config = json.loads((folder / "transformer" / "config.json").read_text())
        model_class, inputs = diffusers.SD3Transformer2DModel, sd3_inputs(config, 77 + T5_LENGTH)
    else:
        raise FileNotFoundError(f"--pipeline: no {folder}/unet/config.json or transformer/config.json; expected a "
                                f"diffusers text-to-image pipeline folder")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    parts = training_memory(model_class, config, inputs, batch, lora_rank, precision, checkpointing)
    student = f"LoRA rank {lora_rank}" if lora_rank else "full student (with a teacher and an EMA copy)"
    echo(f"{folder}: {model_class.__name__}, {student}, batch {batch} per GPU, {precision}"
         f"{', gradient checkpointing' if checkpointing else ''}")
    for name, value in parts.items():
        echo(f"  {name:<16} {value:10.2f}{'' if '(M)' in name else ' GiB'}")
    return parts
