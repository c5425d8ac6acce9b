#!/usr/bin/env bash
# Creates .venv (Python 3.11), installs pinned torch (CPU build here) and triton, builds and installs
# mcm_fast with its C++ extension against that torch, and the optional diffusers extra (so that its tests run).
# Safe to rerun: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
pip install torch==2.13.0 triton==3.6.0 "setuptools>=70" wheel ninja
pip install --no-build-isolation -e ".[test]"
# the diffusers extra, pinned, with torch pinned beside it so that pip never replaces the build above
pip install diffusers==0.42.1 torch==2.13.0
# the text-to-image extras (text encoders, LoRA students), pinned the same way
pip install transformers==5.23.0 peft==0.21.2 accelerate==1.15.0 torch==2.13.0
