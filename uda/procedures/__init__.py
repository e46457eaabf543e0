"""Closure procedures: updates that re-evaluate the losses at other parameter values (plain PyTorch).

Unlike a harmonizer (a map from the Gram matrix of the gradients at θ to loss weights), a procedure calls a closure
that recomputes a loss after moving the parameters, so it needs the loss functions, not only their gradients.

* :func:`pga_backward`: PGA's step (Phan et al., NeurIPS 2024; official ``LA/main.py``), two perturbed
  re-evaluations, shared gradient Σ_i c_i h_i'.
"""

from uda.procedures.pga import EPS, check_pga_settings, pga_backward, running_stats_frozen

__all__ = ["EPS", "check_pga_settings", "pga_backward", "running_stats_frozen"]
