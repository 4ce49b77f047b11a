"""Train tideflow's embedded demo model: a small Llama on the Python standard library.

    nice -n 19 python tools/train_demo_model.py --output-dir tideflow/demo/demo_model

Everything runs on the CPU from text every Python install has, so the run needs no download:
1. the corpus is the interpreter's standard-library source (`tideflow.demo.corpus`), split by
   file into train and held-out parts;
2. a byte-level BPE tokenizer is trained on the train part;
3. a Llama-style causal LM is trained on random windows of the tokenized train part (AdamW,
   linear warmup then cosine decay, gradient clipping), seeded;
4. the model is saved in bfloat16 with its tokenizer and a model card (README.md) that records
   the command, the data, the steps, the wall time, the final train loss and the held-out
   perplexity of the saved (bfloat16) weights.

The learning-rate schedule runs on progress = max(step / steps, elapsed / time_budget), so a
busy machine ends the run early with a fully decayed learning rate instead of overrunning.
With a budget that does not bind, the same seed and threads give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tideflow.serve.demo import DEMO_PROMPTS  # noqa: E402
from tideflow.demo import corpus  # noqa: E402
from tideflow.testing.tiny_models import (  # noqa: E402
    BOS_ID,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_ID,
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    PAD_ID,
    PAD_TOKEN,
)

MODEL_NAME = "tideflow-demo-stdlib-llama"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=str(ROOT / "tideflow" / "models" / "demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (at most)")
    parser.add_argument("--time-budget", type=float, default=1800.0, help="seconds of training (at most)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per step")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary, special tokens included")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--max-position-embeddings", type=int, default=1024)
    parser.add_argument("--max-train-chars", type=int, default=None, help="cut the corpus (quick trial runs)")
    parser.add_argument("--eval-windows", type=int, default=64, help="held-out windows for the final perplexity")
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    for name in ("threads", "steps", "batch_size", "vocab_size", "layers", "eval_windows", "log_every"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.seq_len < 2 or args.time_budget <= 0 or args.lr <= 0:
        raise SystemExit("--seq-len must be at least 2, --time-budget and --lr positive")
    return args


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `docs`, built as the test models' tokenizer is
    (same special tokens, same ids)."""
    from tideflow.testing.tiny_models import train_bpe_tokenizer

    return train_bpe_tokenizer(docs, vocab_size)


def fast_tokenizer(tokenizer, model_max_length: int):
    """The `transformers` wrapper of a trained tokenizer, with the ChatML chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(args: argparse.Namespace, vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    return model, config


def learning_rate(args: argparse.Namespace, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from the peak to `min_lr_ratio` of it."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return args.lr * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


def train(args: argparse.Namespace, model, ids) -> dict[str, Any]:
    """Run the optimizer until `steps` or `time_budget`; return what the model card reports."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    offsets = torch.arange(args.seq_len + 1)
    while step < args.steps:
        elapsed = time.perf_counter() - start
        progress = max(step / args.steps, elapsed / args.time_budget)
        if progress >= 1.0:
            break
        lr = learning_rate(args, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch_size,), generator=generator)
        batch = data[starts[:, None] + offsets]
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % args.log_every == 0 or step == 1:
            recent = sum(losses[-args.log_every:]) / len(losses[-args.log_every:])
            elapsed = time.perf_counter() - start
            tokens = step * args.batch_size * args.seq_len
            print(f"step {step:5d}  loss {recent:.3f}  lr {lr:.2e}  {tokens / elapsed:6.0f} tok/s  "
                  f"{elapsed:6.0f} s", flush=True)
    model.eval()
    tail = losses[-min(len(losses), 50):]
    return {
        "steps": step,
        "train_seconds": time.perf_counter() - start,
        "train_tokens": step * args.batch_size * args.seq_len,
        "final_train_loss": sum(tail) / len(tail),
        "stopped_by": "steps" if step >= args.steps else "time budget",
    }


def greedy_samples(model, tokenizer, max_new_tokens: int = 40) -> dict[str, str]:
    """Greedy continuations of the demo's prompts with `model.generate`, for the model card."""
    import torch

    samples = {}
    for prompt in DEMO_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=PAD_ID)
        samples[prompt] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return samples


def model_card(args: argparse.Namespace, argv: list[str], facts: dict[str, Any], samples: dict[str, str]) -> str:
    """The model card (README.md): what the model is for and how this run (`argv`) trained it."""
    command = "nice -n 19 python tools/train_demo_model.py " + shlex.join(argv)
    if facts["stopped_by"] == "time budget":
        rerun = ("The time budget ended this run, so a rerun on an idler or faster machine takes more steps and "
                 "gives other weights; with `--steps` below what the budget allows, the same seed and threads "
                 "give the same weights.")
    else:
        rerun = "The step count ended this run: the same command, seed and threads give the same weights."
    sample_text = "\n\n".join(f"Prompt `{p!r}`:\n\n```text\n{p}{c}\n```" for p, c in samples.items())
    return f"""# {MODEL_NAME}

tideflow's embedded default model: what `tideflow demo`, `make demo` and `tideflow serve` run
when no model is named. It is a {facts['params'] / 1e6:.1f}M-parameter Llama-style causal LM
trained for {facts['train_seconds'] / 60:.0f} minutes on a CPU from the Python standard library's source, so that a
newcomer sees text that reads like Python code and docstrings, not noise. It is a smoke test of
the runtime, not a useful assistant: it knows nothing but the shape of stdlib code, repeats
itself under greedy decoding, and answers chat prompts with code-like text.

## How it was trained

- Script: `tools/train_demo_model.py` (in the tideflow repository), command:
  `{command}`
- Corpus: the `*.py` files of the CPython {facts['python']} standard library (`sysconfig`'s
  `stdlib` path) without test suites, `encodings/` and `site-packages`
  (`tideflow.demo.corpus`). Files are split by the SHA-256 of their relative path:
  {facts['train_files']} train files ({facts['train_chars'] / 1e6:.1f}M characters,
  {facts['train_corpus_tokens'] / 1e6:.2f}M tokens), {facts['heldout_files']} held-out files.
- Tokenizer: byte-level BPE trained on the train files, {facts['vocab_size']} ids; ids 0-4 are
  `<s> </s> <pad> <|im_start|> <|im_end|>` (a ChatML chat template is included). No BOS is added.
- Model: Llama, hidden {args.hidden_size}, {args.layers} layers, {args.heads} heads
  ({args.kv_heads} KV heads), MLP {args.intermediate_size}, tied embeddings, trained at a
  context of {args.seq_len} tokens (`max_position_embeddings` {args.max_position_embeddings}).
- Optimization: AdamW (betas 0.9/0.95, weight decay {args.weight_decay}), peak lr {args.lr},
  {args.warmup_steps} warmup steps then cosine decay to {args.min_lr_ratio:g} of the peak,
  gradient clipping at 1.0, {args.batch_size} random windows of {args.seq_len} tokens per step,
  seed {args.seed}, {args.threads} torch thread(s).
- Run: {facts['steps']} steps ({facts['train_tokens'] / 1e6:.2f}M tokens seen), stopped by
  {facts['stopped_by']}, {facts['train_seconds'] / 60:.1f} min of training
  ({facts['total_seconds'] / 60:.1f} min in all; {facts['train_tokens'] / facts['train_seconds']:.0f} tokens/s on a
  {facts['cpu_count']}-core machine shared with other work, under `nice -n 19`).
  {rerun}
- Final train loss (mean of the last 50 steps): {facts['final_train_loss']:.3f} nats/token.
- Held-out perplexity of the saved bfloat16 weights: {facts['heldout_ppl']:.2f} per token over
  {facts['heldout_tokens']} tokens ({args.eval_windows} windows of {args.seq_len}); the same
  architecture with random weights scores {facts['random_ppl']:.0f}.
- Weights: `model.safetensors`, bfloat16 ({facts['weights_bytes'] / 1e6:.1f} MB); loaded as
  float32 on a CPU with `dtype="auto"`.

## Greedy samples (`tideflow demo`'s prompts, `model.generate`, 40 new tokens)

{sample_text}
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import platform

    import torch
    from transformers import GenerationConfig

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train_files = corpus.stdlib_files("train")
    heldout_files = corpus.stdlib_files("heldout")
    docs = corpus.read_documents(train_files, args.max_train_chars)
    print(f"corpus: {len(train_files)} train files ({sum(map(len, docs)) / 1e6:.1f}M chars), "
          f"{len(heldout_files)} held out", flush=True)
    tokenizer = fast_tokenizer(train_tokenizer(docs, args.vocab_size), args.max_position_embeddings)
    ids = corpus.token_stream(tokenizer, docs, EOS_ID)
    heldout_ids = corpus.token_stream(tokenizer, corpus.read_documents(heldout_files), EOS_ID)
    vocab_size = len(tokenizer)
    print(f"tokenizer: {vocab_size} ids; {len(ids) / 1e6:.2f}M train tokens, {len(heldout_ids)} held-out tokens "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    model, config = build_model(args, vocab_size)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters", flush=True)
    facts = train(args, model, ids)

    model = model.to(torch.bfloat16).to(torch.float32)  # score exactly what ships
    random_model, _ = build_model(args, vocab_size)
    facts.update(
        params=params,
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        train_files=len(train_files),
        heldout_files=len(heldout_files),
        train_chars=sum(map(len, docs)),
        train_corpus_tokens=len(ids),
        vocab_size=vocab_size,
        heldout_ppl=corpus.perplexity(model, heldout_ids, args.seq_len, args.eval_windows),
        random_ppl=corpus.perplexity(random_model.eval(), heldout_ids, args.seq_len, args.eval_windows),
        heldout_tokens=min(len(heldout_ids) // args.seq_len, args.eval_windows) * args.seq_len,
    )
    print(f"held-out perplexity {facts['heldout_ppl']:.2f} (random weights: {facts['random_ppl']:.0f})", flush=True)
    samples = greedy_samples(model, tokenizer)
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{prompt}{text}", flush=True)

    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    facts["weights_bytes"] = (out / "model.safetensors").stat().st_size
    facts["total_seconds"] = time.perf_counter() - t0
    argv = sys.argv[1:] if argv is None else argv
    (out / "README.md").write_text(model_card(args, argv, facts, samples), encoding="utf-8")
    print(json.dumps({k: v for k, v in facts.items()}, indent=1, default=str), flush=True)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
