"""sparseforge: make trained PyTorch models smaller and measurably faster."""

__version__ = "0.1.0"
