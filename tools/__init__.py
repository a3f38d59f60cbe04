"""lit-align's tools: benchmarks, the frontier sweep, SAE training, LoRA merging, and their shared helpers."""
