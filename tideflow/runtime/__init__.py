"""The runtime under the graphs and roles: engine/ (the in-process engine, torch-free core/ at its
bottom), parallel/, edges/, recovery/ and dataflow/ (see docs/architecture.md)."""
