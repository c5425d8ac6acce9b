"""Bridges to other libraries, each an optional extra: mcm_fast.integrations.diffusers."""
