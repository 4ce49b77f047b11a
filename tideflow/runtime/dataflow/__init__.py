"""Running a compiled graph: the stage role contract, the stage host (a Ray actor per replica)
and its sender, the router, ingress, the collector, the graph handle and deploy, and the
in-process runner."""
