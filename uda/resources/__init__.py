"""Data files shipped with the package (read with :mod:`importlib.resources`).

- ``paper_results.csv``: target accuracies (%) reported in "Gradient Harmonization in Unsupervised Domain
  Adaptation" (TPAMI), Tables 1-5, used by :mod:`uda.report` to put the paper's number beside ours.
"""
