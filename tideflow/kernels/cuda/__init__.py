"""numba.cuda kernels, one module per kernel family, each launched by the checked entry point of
its CPU sibling in `tideflow.kernels` when the tensors live on a CUDA device.

Importing these modules needs no GPU: their `launch_*` functions take any array numba.cuda
accepts, so tests run them in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
