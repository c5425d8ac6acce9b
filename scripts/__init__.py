"""Tools that run beside the package: setup, the GPU check, the sm_90a compile report (`python -m
scripts.hopper_report`)."""
