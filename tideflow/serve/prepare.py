"""From a parsed request body to what the graph runs: prompts and one `SamplingParams`.

Everything a client can get wrong is checked here, before anything is submitted, so a bad
request is a 400 that leaves no trace in the graph: the model name, ranges of the sampling
fields, token ids against the vocabulary, prompt + max_tokens against the context length, and
the grammar of `response_format` / `structured_outputs` (`tideflow.serve.response_format`).

A sampling field the request leaves unset takes the model's generation-config default
(`ModelInfo.generation`: temperature, top_p, top_k, min_p, repetition_penalty, max_tokens),
else the API's own default, as vLLM's server does; a field the request sets, `"temperature": 0`
included, is taken as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from tideflow.sampling_params import SamplingParams
from tideflow.serve.errors import APIError, bad_request, model_not_found
from tideflow.serve.images import image_from_url
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.protocol import ChatCompletionRequest, CompletionRequest
from tideflow.serve.response_format import request_constraint
from tideflow.serve.tools import ToolPlan, template_tool_calls, tool_plan

MAX_N = 128  # completions per prompt
MAX_LOGPROBS = 20  # top logprobs per token
_INT32 = (1 << 31) - 1
_INT64 = (1 << 63) - 1


@dataclass(slots=True)
class Prepared:
    """One validated request: the graph prompts and how to sample and render them."""

    prompts: list  # graph prompt per input prompt: {"prompt_token_ids": [...], "prompt": text or absent}
    # (chat: also "messages"; with images "multi_modal_data": {"image": [encoded bytes]})
    prompt_texts: list[str]  # the prompt's text per input prompt (for echo; "" for chat)
    num_prompt_tokens: list[int]  # per input prompt
    params: SamplingParams  # the same for every prompt
    stream: bool
    include_usage: bool  # streams: a last chunk with the usage
    top_logprobs: int | None  # logprobs to render per token; None -> no logprobs
    echo: bool  # completions: the prompt's text before each completion
    tokens_as_ids: bool  # logprob tokens rendered as "token_id:N"
    # completions with echo and max_tokens 0: only the prompt (and, with logprobs, its logprobs)
    # comes back; the one token the graph generates is dropped, as vLLM does
    echo_only: bool = False
    tools: ToolPlan | None = None  # chat with tools: how the output is constrained and read as tool calls

    def tokens_reserved(self, max_model_len: int) -> int:
        """The most tokens the request may use (what a key's tokens-per-minute limit reserves):
        each prompt's tokens plus max_tokens for every completion sampled for it (best_of of
        them; the rest of the context when max_tokens is null)."""
        sampled = self.params.sampled_params()
        total = 0
        for prompt_tokens in self.num_prompt_tokens:
            room = sampled.max_tokens if sampled.max_tokens is not None else max_model_len - prompt_tokens
            total += prompt_tokens + sampled.n * room
        return total


def check_model(name: str | None, info: ModelInfo) -> None:
    if name is not None and name != info.name:
        raise model_not_found(name)


def prepare_completion(req: CompletionRequest, info: ModelInfo) -> Prepared:
    check_model(req.model, info)
    if req.suffix is not None:
        raise bad_request("'suffix' is not supported", "suffix", code="unsupported_parameter")
    if req.best_of is not None:
        if not req.n <= req.best_of <= MAX_N:
            raise bad_request(f"'best_of' must be in [n, {MAX_N}], got {req.best_of}", "best_of")
        if req.stream and req.best_of > req.n:  # the best are known only at the end (vLLM refuses it too)
            raise bad_request("'best_of' greater than n cannot stream", "best_of", code="unsupported_parameter")
    prompts, texts, lengths = completion_prompts(req.prompt, info)
    # unset, not null: an explicit null asks for the whole context, as it always has
    unset = "max_tokens" not in req.model_fields_set
    echo_only = req.echo and req.max_tokens == 0  # scoring a prompt (lm-evaluation-harness)
    max_tokens = 1 if echo_only else req.max_tokens
    params = _sampling(req, info, lengths, max_tokens, "max_tokens", req.logprobs, "logprobs", "prompt", unset)
    if req.echo and req.logprobs is not None:  # the prompt's tokens come back with their logprobs too
        params = params.replace(prompt_logprobs=req.logprobs)
    if req.best_of is not None:
        params = params.replace(best_of=req.best_of)
    return Prepared(prompts, texts, lengths, params, req.stream, _include_usage(req), req.logprobs, req.echo,
                    req.return_tokens_as_token_ids, echo_only)


def prepare_chat(req: ChatCompletionRequest, info: ModelInfo, tool_parser: str | None = None) -> Prepared:
    """`tool_parser`: the server's --tool-call-parser (what tool_choice "auto" reads calls with)."""
    check_model(req.model, info)
    tools = tool_plan(req, tool_parser)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    check_text_size(sum(_text_bytes(m) for m in req.messages), info, "messages")
    images: list[bytes] = []
    messages = [chat_message(i, m, info, images) for i, m in enumerate(req.messages)]
    if not messages:
        raise bad_request("'messages' must not be empty", "messages")
    try:
        text, ids = info.prompts.encode_chat(messages, tools=list(tools.tools) if tools else None)
    except Exception as exc:  # noqa: BLE001  (a template that rejects the conversation)
        raise bad_request(f"the chat template rejected the messages: {exc}", "messages") from None
    num_tokens = len(ids) + len(images) * (info.tokens_per_image - 1)  # each placeholder expands
    top = (req.top_logprobs or 0) if req.logprobs else None
    param, max_tokens = "max_completion_tokens", req.max_completion_tokens
    if max_tokens is None:
        param, max_tokens = "max_tokens", req.max_tokens
    params = _sampling(req, info, [num_tokens], max_tokens, param, top, "top_logprobs", "messages", max_tokens is None)
    if tools is not None:
        params = tools.sampling(params)
    # templated and tokenized here, once: the graph's tokenizer stage passes the ids through
    prompt = {"messages": messages, "prompt": text, "prompt_token_ids": ids}
    if images:
        prompt["multi_modal_data"] = {"image": images}
    return Prepared([prompt], [""], [num_tokens], params, req.stream, _include_usage(req), top,
                    False, req.return_tokens_as_token_ids, tools=tools)


# -- prompts ----------------------------------------------------------------------------------
def completion_prompts(prompt, info: ModelInfo, param: str = "prompt") -> tuple[list, list[str], list[int]]:
    """Graph prompts, texts and lengths of a completions `prompt` (or an embeddings `input`:
    `param` names it in errors)."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise bad_request(f"'{param}' must not be empty", param)
    prompts, texts, lengths = [], [], []
    for p in prompt:
        if isinstance(p, str):
            if not p:
                raise bad_request(f"'{param}' must not be empty", param)
            check_text_size(utf8_size(p), info, param)
            ids = info.encode(p)
            if not ids:
                raise bad_request(f"'{param}' encodes to no tokens", param)
            prompts.append({"prompt": p, "prompt_token_ids": ids})  # tokenized once, here
            texts.append(p)
        else:
            if not p:
                raise bad_request(f"'{param}' must not be empty", param)
            bad = next((t for t in p if t < 0 or t >= info.vocab_size), None)
            if bad is not None:
                raise bad_request(f"token id {bad} is outside the vocabulary [0, {info.vocab_size})", param,
                                  code="invalid_token_id")
            ids = list(p)
            prompts.append({"prompt_token_ids": ids})
            texts.append(info.decode(ids))
        lengths.append(len(ids))
    return prompts, texts, lengths


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_text_size(size: int, info: ModelInfo, param: str) -> None:
    """A 400 for text of `size` UTF-8 bytes that cannot fit in the context whatever it says
    (more than max_model_len of the vocabulary's longest tokens hold), found before the
    tokenizer spends seconds on it (a 10 MB prompt took 16 s)."""
    limit = info.max_model_len * info.max_token_bytes
    if size > limit:
        raise bad_request(
            f"This model's maximum context length is {info.max_model_len} tokens. However, '{param}' holds {size} "
            f"bytes of text, more than that many tokens can hold (at most {limit} bytes). Please reduce its length.",
            param, code="context_length_exceeded")


def _text_bytes(m) -> int:
    """The UTF-8 size of a chat message's text: its content (text parts) and its calls' arguments."""
    content = m.content
    if isinstance(content, str):
        size = utf8_size(content)
    else:
        size = sum(utf8_size(part.text) for part in content or () if part.text is not None)
    return size + sum(utf8_size(call.function.arguments) for call in m.tool_calls or ())


def chat_message(i: int, m, info: ModelInfo, images: list[bytes]) -> dict:
    """One message with string content: text parts joined by newlines, each `image_url` part
    replaced by the model's image placeholder (its image appended to `images`); an assistant's
    `tool_calls` and a tool reply's `tool_call_id` kept for the template."""
    content = m.content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if part.type == "text" and part.text is not None:
                parts.append(part.text)
            elif part.type == "image_url" and part.image_url is not None:
                field = f"messages[{i}].content[{j}].image_url"
                if info.image_token is None:
                    raise bad_request(f"'{field}': the model {info.name} takes no images", "messages",
                                      code="unsupported_parameter")
                images.append(image_from_url(part.image_url.url, f"{field}.url"))
                parts.append(info.image_token)
            else:
                raise bad_request(
                    f"messages[{i}].content[{j}]: only content parts of type 'text' (with 'text') and 'image_url' "
                    "(with 'image_url') are supported", "messages", code="unsupported_parameter",
                )
        content = "\n".join(parts)
    if content is None:
        if m.role != "assistant":
            raise bad_request(f"messages[{i}]: 'content' is required", "messages", code="missing_required_parameter")
        content = ""
    message = {"role": m.role, "content": content}
    if m.tool_calls is not None:
        if m.role != "assistant":
            raise bad_request(f"messages[{i}]: only assistant messages carry 'tool_calls'", "messages")
        message["tool_calls"] = template_tool_calls(i, m.tool_calls)
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


# -- sampling ---------------------------------------------------------------------------------
def _include_usage(req) -> bool:
    if req.stream_options is not None and not req.stream:
        raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return bool(req.stream_options and req.stream_options.include_usage)


def _sampling(req, info: ModelInfo, lengths: list[int], max_tokens: int | None, max_tokens_param: str,
              logprobs: int | None, logprobs_param: str, prompt_param: str, max_tokens_unset: bool) -> SamplingParams:
    """The request's SamplingParams: the fields it sets, the model's defaults for those it
    leaves unset, the API's defaults for the rest."""
    if not 1 <= req.n <= MAX_N:
        raise bad_request(f"'n' must be in [1, {MAX_N}], got {req.n}", "n")
    logit_bias = _logit_bias(req.logit_bias, info)
    for t in req.allowed_token_ids or ():
        if not 0 <= t < info.vocab_size:
            raise bad_request(f"allowed token id {t} is outside the vocabulary [0, {info.vocab_size})",
                              "allowed_token_ids")
    if req.prompt_logprobs is not None and not 0 <= req.prompt_logprobs <= MAX_LOGPROBS:
        raise bad_request(f"'prompt_logprobs' must be in [0, {MAX_LOGPROBS}], got {req.prompt_logprobs}",
                          "prompt_logprobs")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        raise bad_request(f"'{logprobs_param}' must be in [0, {MAX_LOGPROBS}], got {logprobs}", logprobs_param)
    if req.seed is not None and not -_INT64 - 1 <= req.seed <= _INT64:
        raise bad_request("'seed' must fit in 64 bits", "seed")
    if not 0 <= req.min_tokens <= _INT32:
        raise bad_request(f"'min_tokens' must be >= 0, got {req.min_tokens}", "min_tokens")
    for t in req.stop_token_ids or ():
        if not 0 <= t < info.vocab_size:
            raise bad_request(f"stop token id {t} is outside the vocabulary [0, {info.vocab_size})", "stop_token_ids")
    defaults = info.generation.fields  # the model's generation-config defaults
    longest = max(lengths)
    if longest >= info.max_model_len:
        raise _too_long(info, longest, max_tokens, prompt_param)
    if max_tokens_unset and "max_tokens" in defaults:
        # the model's default, cut to the room the prompt leaves (vLLM takes the smaller too)
        max_tokens = min(defaults["max_tokens"], info.max_model_len - longest)
    if max_tokens is not None:
        if max_tokens <= 0:
            raise bad_request(f"'{max_tokens_param}' must be at least 1, got {max_tokens}", max_tokens_param)
        if longest + max_tokens > info.max_model_len:
            raise _too_long(info, longest, max_tokens, max_tokens_param)

    def unset_or(value, name: str, api_default):
        return value if value is not None else defaults.get(name, api_default)

    top_k = unset_or(req.top_k, "top_k", 0)
    if top_k > info.vocab_size:
        top_k = info.vocab_size  # the same as no cut, and it fits the engine's int32
    fields = dict(
        n=req.n,
        temperature=unset_or(req.temperature, "temperature", 1.0),
        top_p=unset_or(req.top_p, "top_p", 1.0),
        top_k=top_k,
        min_p=unset_or(req.min_p, "min_p", 0.0),
        repetition_penalty=unset_or(req.repetition_penalty, "repetition_penalty", 1.0),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        stop=req.stop or (),
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        include_stop_str_in_output=req.include_stop_str_in_output,
        logprobs=logprobs,
        skip_special_tokens=req.skip_special_tokens,
        prompt_logprobs=req.prompt_logprobs,
        logit_bias=logit_bias,
        allowed_token_ids=req.allowed_token_ids,
        bad_words=tuple(req.bad_words or ()),
        structured_outputs=request_constraint(req.response_format, req.structured_outputs),
    )
    try:
        return SamplingParams(**fields)
    except ValueError as exc:  # "temperature must be non-negative, got -1"
        field = str(exc).split()[0]
        param = {"max_tokens": max_tokens_param, "logprobs": logprobs_param}.get(field, field)
        raise bad_request(f"'{param}' {str(exc).split(' ', 1)[1]}", param) from None


def _logit_bias(bias: dict[str, float] | None, info: ModelInfo) -> dict[int, float] | None:
    """OpenAI's logit_bias (string token ids) as token id -> bias; a key that is not a token id
    of the vocabulary is a 400. SamplingParams clamps the biases."""
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            raise bad_request(f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias") from None
        if not 0 <= token < info.vocab_size:
            raise bad_request(f"logit_bias token id {token} is outside the vocabulary [0, {info.vocab_size})",
                              "logit_bias")
        out[token] = value
    return out


def _too_long(info: ModelInfo, prompt_len: int, max_tokens: int | None, param: str) -> APIError:
    completion = max_tokens or 1
    asked = f"{prompt_len + completion} tokens ({prompt_len} in the prompt, {completion} for the completion)"
    return bad_request(
        f"This model's maximum context length is {info.max_model_len} tokens. However, you requested {asked}. "
        "Please reduce the length of the prompt or of the completion.",
        param,
        code="context_length_exceeded",
    )
