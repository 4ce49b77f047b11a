"""Exactly once under faults: checkpoint store and input logs, barriers, the coordinator, the
replica hooks a stage host calls (a null object when recovery is off), fault injection, the
snapshot codec and recorded request logs."""
