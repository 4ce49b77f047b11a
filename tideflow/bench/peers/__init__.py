"""Scripts that run inside a peer system's own environment (e.g. `.venv-vllm`), never imported by
tideflow: the peer's dependencies (its torch among them) stay out of tideflow's process."""
