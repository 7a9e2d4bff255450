"""lineqc: edge vision quality control."""

__version__ = "0.1.0"
