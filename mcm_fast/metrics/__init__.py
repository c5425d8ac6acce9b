"""Distances between sample sets and models: sliced Wasserstein for low-dimensional data, the ODE error."""
from mcm_fast.metrics.distances import sliced_wasserstein
from mcm_fast.metrics.ode_error import ode_error

__all__ = ["ode_error", "sliced_wasserstein"]
