"""`POST /tokenize`, `POST /detokenize` and `GET /version`, in vLLM's shapes: the server's own
tokenizer and chat template, without the graph.

/tokenize takes a completion prompt ({prompt, add_special_tokens}) or a conversation
({messages, tools, add_generation_prompt, add_special_tokens}) and returns {count, max_model_len,
tokens} (and token_strs when asked); /detokenize takes {tokens} and returns {prompt}.
"""

from __future__ import annotations

from pydantic import ValidationError

import tideflow
from tideflow.serve.errors import bad_request, from_validation
from tideflow.serve.model_info import ModelInfo
from tideflow.serve.prepare import chat_message, check_model
from tideflow.serve.protocol import DetokenizeRequest, TokenizeChatRequest, TokenizeCompletionRequest


def tokenize(body: dict, info: ModelInfo) -> dict:
    kind = TokenizeChatRequest if "messages" in body else TokenizeCompletionRequest
    req = _parse(kind, body)
    check_model(req.model, info)
    if isinstance(req, TokenizeChatRequest):
        messages = [chat_message(i, m, info, []) for i, m in enumerate(req.messages)]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        try:
            text = info.prompts.render_chat(messages, add_generation_prompt=req.add_generation_prompt, tools=tools)
        except Exception as exc:  # noqa: BLE001  (a template that rejects the conversation)
            raise bad_request(f"the chat template rejected the messages: {exc}", "messages") from None
    else:
        text = req.prompt
    ids = list(info.tokenizer.encode(text, add_special_tokens=req.add_special_tokens))
    out = {"count": len(ids), "max_model_len": info.max_model_len, "tokens": ids}
    if req.return_token_strs:
        out["token_strs"] = info.tokenizer.convert_ids_to_tokens(ids)
    return out


def detokenize(body: dict, info: ModelInfo) -> dict:
    req = _parse(DetokenizeRequest, body)
    check_model(req.model, info)
    bad = next((t for t in req.tokens if not 0 <= t < info.vocab_size), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary [0, {info.vocab_size})", "tokens",
                          code="invalid_token_id")
    return {"prompt": info.decode(req.tokens)}


def version() -> dict:
    return {"version": tideflow.__version__}


def _parse(kind, body: dict):
    try:
        return kind.model_validate(body, strict=True)
    except ValidationError as exc:
        raise from_validation(exc) from None
