"""The engine core (scheduler, KV blocks, model runner, sampler) and, later, the graph executor."""
