"""Hot-path kernels, each beside its torch reference and a wrapper that checks shapes,
strides and dtypes before launching. Nothing outside this package imports numba or cupy."""
