"""Run by tests/cluster/test_multinode.py in a subprocess of its own (the test session keeps
one Ray instance; this one is a separate three-node cluster on the same machine).

Starts a head node with no resources for model stages and two worker nodes that offer the
custom resources `prefill_node` and `decode_node`, deploys the disaggregated graph with each
pool pinned to its node, runs a seeded mixed batch, and prints one JSON line: the generated
tokens, the node each replica ran on, and each worker node's id.
"""

from __future__ import annotations

import json
import sys


def main(model_dir: str, count: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from tests.graphs.parity import mixed_requests
    from tideflow.graphs.builtin import disaggregated

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        prefill_node = cluster.add_node(num_cpus=2, resources={"prefill_node": 2})
        decode_node = cluster.add_node(num_cpus=2, resources={"decode_node": 2})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="tideflow", log_to_driver=False)
        vocab = json.load(open(f"{model_dir}/config.json"))["vocab_size"]
        prompts, params = mixed_requests(vocab, count=count, seed=3)
        graph = disaggregated(
            model_dir, prefill=1, decode=2, prefill_resources={"prefill_node": 1}, decode_resources={"decode_node": 1},
            dtype="float64", name="multinode",
        )
        with graph.deploy(recovery=False) as handle:
            outputs = handle.generate(prompts, params)
            stats = handle.stats()
        print(json.dumps({
            "tokens": [o.outputs[0].token_ids for o in outputs],
            "nodes": {stage: [r["node_id"] for r in stats[stage]] for stage in ("prefill", "decode")},
            "prefill_node": prefill_node.node_id,
            "decode_node": decode_node.node_id,
            "head_node": cluster.head_node.node_id,
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
