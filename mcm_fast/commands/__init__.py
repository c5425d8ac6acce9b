"""The commands above the library: sample, eval and bench (and mcm_fast.demo). They load checkpoints and
configs through train/ and score through metrics/; neither of those imports them."""
