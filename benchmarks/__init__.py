"""Benchmarks (pytest-benchmark suites; `python -m pytest benchmarks/`) and the workloads and roofline that
scripts/ share with them."""
