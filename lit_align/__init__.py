"""lit-align: preference alignment of language models with PyTorch Lightning."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft when installed) warns at import, on CPUs with AVX512-BF16, that it could not fetch
# an optional hub kernel for its CPU 4-bit repacking, which lit-align turns off (models/quantization.py): a warning
# about nothing lit-align runs, printed by every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
