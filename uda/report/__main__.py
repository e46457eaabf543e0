"""Entry point of ``python -m uda.report`` (see :mod:`uda.report.cli`)."""

from uda.report.cli import main

if __name__ == "__main__":
    main()
