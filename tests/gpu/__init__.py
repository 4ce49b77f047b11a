"""CUDA-only tests: each module skips cleanly when torch sees no GPU."""
