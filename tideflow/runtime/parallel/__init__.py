"""Where replicas run and how one engine spans processes: placement groups, tensor-parallel
shard workers and runner (`create_engine`), MoE experts on their own actors."""
