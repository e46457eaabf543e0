"""uda: unsupervised domain adaptation with gradient harmonization (GH / GH++).

The harmonizer core (:mod:`uda.harmonizers`) is plain PyTorch; Lightning and Hydra only wrap it.
"""

__version__ = "0.1.0"
