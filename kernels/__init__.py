"""Triton kernels of mcm_fast, installed as mcm_fast.kernels (the fused update, target and loss, attention).

Import them through mcm_fast.ops, which registers each as a backend; TRITON_INTERPRET=1 must be set before
this package is imported to run them on CPU tensors.
"""
