"""The torch-free engine core: requests and sequences, the paged KV block manager, the
scheduler, and the records that cross its boundaries (`ScheduledBatch`, `EngineOutput`)."""
