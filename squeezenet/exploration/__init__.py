"""Design-space exploration (paper sections 5 and 6): sweeps, plots and a report."""
from .sweep import SWEEPS, run_sweep

__all__ = ["SWEEPS", "run_sweep"]
