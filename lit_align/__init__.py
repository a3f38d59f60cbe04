"""lit-align: preference alignment of language models with PyTorch Lightning."""

__version__ = "0.1.0"
