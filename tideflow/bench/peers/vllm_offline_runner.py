"""Offline vLLM for `tideflow bench offline`, run as `.venv-vllm/bin/python vllm_offline_runner.py
CMD_FD REPLY_FD MODEL_DIR DTYPE` by `tideflow.bench.peer_vllm`.

Standalone on purpose: it runs under vLLM's interpreter and must not import tideflow. vLLM
prints its logs to stdout/stderr, so the protocol has pipes of its own: one JSON object per
line, commands on CMD_FD, replies on REPLY_FD. After loading and warming up it replies
`{"ready": true, "load_s": ...}`; then each `{"cmd": "generate", "trace": [{"prompt_token_ids",
"max_tokens"}, ...]}` gets `{"token_ids": [[...], ...], "wall_s": ...}` where `wall_s` times
`llm.generate` alone (no pipe, no JSON); `{"cmd": "exit"}` or EOF ends it. A failure is
replied as `{"error": traceback}`. The main guard matters: vLLM spawns its engine process.
"""

import json
import os
import sys
import time
import traceback

MAX_NUM_SEQS = 64  # tideflow.bench.systems.MAX_SEQS
MAX_NUM_BATCHED_TOKENS = 2048  # tideflow.bench.systems.MAX_BATCH_TOKENS


def _generate(llm, trace):
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": list(r["prompt_token_ids"])} for r in trace]
    params = [SamplingParams(temperature=0, max_tokens=r["max_tokens"], ignore_eos=True, detokenize=False)
              for r in trace]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    return {"token_ids": [list(o.outputs[0].token_ids) for o in outputs], "wall_s": wall}


def main(argv):
    cmd_fd, reply_fd, model_dir, dtype = int(argv[1]), int(argv[2]), argv[3], argv[4]
    commands = os.fdopen(cmd_fd, "r", encoding="utf-8")
    replies = os.fdopen(reply_fd, "w", encoding="utf-8")

    def reply(obj):
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    try:
        from vllm import LLM

        start = time.perf_counter()
        llm = LLM(model=model_dir, dtype=dtype, max_num_seqs=MAX_NUM_SEQS,
                  max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, seed=0)
        load_s = time.perf_counter() - start
        _generate(llm, [{"prompt_token_ids": [5 + i] * 8, "max_tokens": 4} for i in range(2)])  # warm-up
    except Exception:
        reply({"error": traceback.format_exc()})
        return 1
    reply({"ready": True, "load_s": load_s, "vllm_version": _version()})
    for line in commands:
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        try:
            if msg.get("cmd") != "generate":
                raise ValueError(f"unknown command {msg.get('cmd')!r}")
            reply(_generate(llm, msg["trace"]))
        except Exception:
            reply({"error": traceback.format_exc()})
    return 0


def _version():
    import vllm

    return getattr(vllm, "__version__", None)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
