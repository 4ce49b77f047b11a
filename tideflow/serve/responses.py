"""Rendering `RequestOutput`s as OpenAI responses: whole (`completion` / `chat.completion`)
or as stream chunks (`text_completion` / `chat.completion.chunk`), with logprobs and usage.

Choice `index` is `prompt_index * n + completion_index`, as OpenAI numbers the choices of a
request with several prompts. A `Stream` remembers what each choice has sent, so each chunk
carries only the new text, tokens and logprobs.
"""

from __future__ import annotations

import math
import time
import uuid

from tideflow.outputs import CompletionOutput, RequestOutput
from tideflow.runtime.dataflow.collector import CompletionDelta, OutputDelta
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import Prepared
from tideflow.serve.tool_responses import ToolCallStream, tool_message


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prep: Prepared, outputs: list[RequestOutput | None]) -> dict:
    prompt = sum(len(o.prompt_token_ids) if o and o.prompt_token_ids else n
                 for o, n in zip(outputs, prep.num_prompt_tokens))
    return _usage(prompt, sum(len(c.token_ids) for o in outputs if o for c in o.outputs))


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _lp(value: float) -> float:
    """A logprob JSON can carry (-inf, which strict JSON cannot, becomes -9999.0 as in vLLM)."""
    return value if math.isfinite(value) else -9999.0


def _token(info: ModelInfo, token_id: int, as_ids: bool) -> str:
    return f"token_id:{token_id}" if as_ids else info.token_text(token_id)


def completion_logprobs(c: CompletionOutput | CompletionDelta, start: int, offset: int, top: int, info: ModelInfo, as_ids: bool) -> dict:
    """OpenAI's legacy logprobs object for tokens `start:` of a completion; text offsets
    count from `offset` (the characters of this choice sent before)."""
    return _legacy_logprobs(c.token_ids[start:], (c.logprobs or [])[start:], offset, top, info, as_ids)


def prompt_logprobs(prompt_token_ids: list[int], entries: list, top: int, info: ModelInfo, as_ids: bool) -> dict:
    """The legacy logprobs object of an echoed prompt (its first token's logprob and top
    logprobs are null, as vLLM's); text offsets count from 0."""
    return _legacy_logprobs(prompt_token_ids, entries, 0, top, info, as_ids)


def vllm_prompt_logprobs(entries: list, info: ModelInfo) -> list:
    """vLLM's `prompt_logprobs` field: per prompt token None (the first) or
    {token id: {logprob, rank, decoded_token}}."""
    return [None if e is None else {str(t): {"logprob": _lp(lp.logprob), "rank": lp.rank,
                                             "decoded_token": info.token_text(t)} for t, lp in e.items()}
            for e in entries]


def joined(first: dict, second: dict) -> dict:
    """Two legacy logprobs objects one after the other (the echoed prompt's, the completion's)."""
    return {key: first[key] + second[key] for key in first}


def _legacy_logprobs(token_ids: list[int], entries: list, offset: int, top: int, info: ModelInfo, as_ids: bool) -> dict:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token_id, entry in zip(token_ids, entries):
        text = _token(info, token_id, as_ids)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None:  # the prompt's first token: nothing predicts it
            token_logprobs.append(None)
            tops.append(None)
            continue
        token_logprobs.append(_lp(entry[token_id].logprob) if token_id in entry else None)
        ranked = sorted(entry.items(), key=lambda kv: kv[1].rank)[:top]
        best = {_token(info, t, as_ids): _lp(lp.logprob) for t, lp in ranked}
        if token_id in entry:
            best.setdefault(text, _lp(entry[token_id].logprob))
        tops.append(best)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(c: CompletionOutput | CompletionDelta, start: int, top: int, info: ModelInfo, as_ids: bool) -> dict:
    """The chat logprobs object (`{"content": [...]}`) for tokens `start:` of a completion."""

    def item(token_id: int, logprob: float) -> dict:
        text = _token(info, token_id, as_ids)
        return {"token": text, "logprob": _lp(logprob), "bytes": list(text.encode("utf-8"))}

    content = []
    for token_id, entry in zip(c.token_ids[start:], (c.logprobs or [])[start:]):
        ranked = sorted(entry.items(), key=lambda kv: kv[1].rank)[:top]
        chosen = entry.get(token_id)
        content.append({
            **item(token_id, chosen.logprob if chosen is not None else float("-inf")),
            "top_logprobs": [item(t, lp.logprob) for t, lp in ranked],
        })
    return {"content": content}


# -- whole responses --------------------------------------------------------------------------
def completion_response(prep: Prepared, info: ModelInfo, outputs: list[RequestOutput]) -> dict:
    choices = []
    for p, out in enumerate(outputs):
        for c in out.outputs:
            prefix = prep.prompt_texts[p] if prep.echo else ""
            logprobs = None
            if prep.top_logprobs is not None:
                logprobs = completion_logprobs(c, 0, len(prefix), prep.top_logprobs, info, prep.tokens_as_ids)
                if prep.echo:
                    echoed = prompt_logprobs(out.prompt_token_ids, out.prompt_logprobs or [], prep.top_logprobs, info,
                                             prep.tokens_as_ids)
                    logprobs = joined(echoed, logprobs)
            choice = {
                "index": p * prep.params.n + c.index,
                "text": prefix + c.text,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            if prep.params.prompt_logprobs is not None and not prep.echo:  # vLLM's own field
                choice["prompt_logprobs"] = vllm_prompt_logprobs(out.prompt_logprobs or [None], info)
            choices.append(choice)
    return {"id": new_id("completion"), "object": "text_completion", "created": int(time.time()), "model": info.name,
            "choices": choices, "usage": usage(prep, outputs)}


def without_generation(delta: OutputDelta) -> OutputDelta:
    """`delta` less its completions' generated tokens, text and logprobs (an echo with
    max_tokens 0 returns the prompt alone); finish reasons stay."""
    completions = [CompletionDelta(c.index, [], "", None if c.logprobs is None else [], c.cumulative_logprob,
                                   c.finish_reason, c.stop_reason) for c in delta.completions]
    return OutputDelta(delta.request_id, delta.finished, completions, delta.prompt_token_ids, delta.metrics,
                       delta.prompt_logprobs, delta.embedding)


def chat_response(prep: Prepared, info: ModelInfo, outputs: list[RequestOutput]) -> dict:
    (out,) = outputs
    choices = []
    for c in out.outputs:
        logprobs = None
        if prep.top_logprobs is not None:
            logprobs = chat_logprobs(c, 0, prep.top_logprobs, info, prep.tokens_as_ids)
        message, finish = {"role": "assistant", "content": c.text}, c.finish_reason
        if prep.tools is not None and prep.tools.reads_calls:
            message, finish = tool_message(prep.tools, c.text, c.finish_reason)
        choices.append({
            "index": c.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
            "stop_reason": c.stop_reason,
        })
    response = {"id": new_id("chat"), "object": "chat.completion", "created": int(time.time()), "model": info.name,
                "choices": choices, "usage": usage(prep, outputs)}
    if prep.params.prompt_logprobs is not None:  # vLLM's own field, on the response
        response["prompt_logprobs"] = vllm_prompt_logprobs(out.prompt_logprobs or [None], info)
    return response


# -- streams ----------------------------------------------------------------------------------
class Stream:
    """The chunks of one streamed request, from successive outputs of each of its prompts."""

    def __init__(self, kind: str, prep: Prepared, info: ModelInfo):
        self.kind = kind  # "completion" | "chat"
        self.prep = prep
        self.info = info
        self.id = new_id(kind)
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.sent: dict[int, tuple[int, int]] = {}  # choice index -> (characters, tokens) of the completion sent
        self.done: set[int] = set()  # choice indices whose finish_reason was sent
        self.prompt_tokens = list(prep.num_prompt_tokens)  # per prompt, as the graph counted them once known
        self.completion_tokens = 0  # over every choice
        # chat with tools: each choice's text goes through a tool parser (choice index -> its stream)
        self.reads_calls = kind == "chat" and prep.tools is not None and prep.tools.reads_calls
        self.tool_streams: dict[int, ToolCallStream] = {}

    def _chunk(self, choices: list[dict], usage_: dict | None = None) -> dict:
        chunk = {"id": self.id, "object": self.object, "created": self.created, "model": self.info.name,
                 "choices": choices}
        if self.prep.include_usage:
            chunk["usage"] = usage_
        return chunk

    def opening(self) -> list[dict]:
        """Chat streams open every choice with the assistant role; echoing completions with the prompt."""
        prep, n = self.prep, self.prep.params.n
        if self.kind == "chat":
            return [self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None} for i in range(n)])]
        if prep.echo and prep.top_logprobs is None:  # with logprobs, the prompt comes with its logprobs (`update`)
            choices = []
            for p, text in enumerate(prep.prompt_texts):
                for i in range(n):
                    choices.append({"index": p * n + i, "text": text, "logprobs": None, "finish_reason": None})
            return [self._chunk(choices)]
        return []

    def update(self, prompt_index: int, delta: OutputDelta) -> list[dict]:
        """Chunks for what prompt `prompt_index`'s output gained (the collector's delta, as it
        came: its new text, tokens and logprobs are what the chunks carry). With tools a choice
        may need several chunks (content, a call's opening, its arguments): chunk k carries the
        k-th entry of each choice that has one."""
        if delta.prompt_token_ids:
            self.prompt_tokens[prompt_index] = len(delta.prompt_token_ids)
        prep, n = self.prep, self.prep.params.n
        base = len(prep.prompt_texts[prompt_index]) if prep.echo else 0  # echoed characters before the text
        choices = []  # per choice: its entries, one per chunk
        if prep.echo and prep.top_logprobs is not None and delta.prompt_logprobs is not None:
            echoed = prompt_logprobs(prep.prompts[prompt_index]["prompt_token_ids"], delta.prompt_logprobs, prep.top_logprobs,
                                     self.info, prep.tokens_as_ids)
            choices += [[{"index": prompt_index * n + i, "text": prep.prompt_texts[prompt_index], "logprobs": echoed,
                          "finish_reason": None}] for i in range(n)]
        for c in delta.completions:
            index = prompt_index * n + c.index
            if index in self.done:
                continue
            chars, toks = self.sent.get(index, (0, 0))
            if not c.text and not c.token_ids and c.finish_reason is None:
                continue
            logprobs, top, as_ids = None, prep.top_logprobs, prep.tokens_as_ids
            if top is not None and self.kind == "chat":
                logprobs = chat_logprobs(c, 0, top, self.info, as_ids)
            elif top is not None:
                logprobs = completion_logprobs(c, 0, base + chars, top, self.info, as_ids)
            choice = {"index": index, "logprobs": logprobs, "finish_reason": c.finish_reason}
            if c.finish_reason is not None:
                choice["stop_reason"] = c.stop_reason
                self.done.add(index)
            self.sent[index] = (chars + len(c.text), toks + len(c.token_ids))
            self.completion_tokens += len(c.token_ids)
            if self.reads_calls:
                choices.append(self._tool_entries(index, c.text, choice))
                continue
            if self.kind == "chat":
                choice["delta"] = {"content": c.text} if c.text or c.finish_reason is None else {}
            else:
                choice["text"] = c.text
            choices.append([choice])
        rounds = max(map(len, choices), default=0)
        return [self._chunk([entries[k] for entries in choices if k < len(entries)]) for k in range(rounds)]

    def _tool_entries(self, index: int, text: str, choice: dict) -> list[dict]:
        """`choice` (a chunk's entry, without its delta) as one entry per delta that the
        choice's tool parser lets out of `text`: the logprobs on the first, the finish on the last."""
        stream = self.tool_streams.get(index)
        if stream is None:
            stream = self.tool_streams[index] = ToolCallStream(self.prep.tools)
        final = choice["finish_reason"] is not None
        deltas = stream.deltas(text, final)
        if not deltas and (final or choice["logprobs"] is not None):
            deltas = [{}]
        entries = [{"index": index, "logprobs": None, "finish_reason": None, "delta": d} for d in deltas]
        if entries:
            entries[0]["logprobs"] = choice["logprobs"]
            if final:
                entries[-1].update(finish_reason=stream.finish_reason(choice["finish_reason"]),
                                   stop_reason=choice["stop_reason"])
        return entries

    def closing(self) -> list[dict]:
        """The usage chunk, when the client asked for it."""
        if not self.prep.include_usage:
            return []
        return [self._chunk([], _usage(sum(self.prompt_tokens), self.completion_tokens))]
