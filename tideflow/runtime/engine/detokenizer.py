"""Incremental detokenization and stop-string matching.

Each step decodes only a small window of tokens: `tokens[prefix_offset:read_offset]` (text already
emitted, kept as context) and `tokens[prefix_offset:]`; the difference is the new text. Text that
ends in an incomplete UTF-8 character ("\\ufffd") is held back until the next token completes it.
The first window starts a few tokens into the prompt so that tokenizers which strip the leading
space of a decode (SentencePiece) still give the first output token its space.
"""

from __future__ import annotations

from tideflow.runtime.engine.core.sequence import Sequence

_PROMPT_CONTEXT = 5  # prompt tokens decoded as context before the first output token
_REPLACEMENT = "\ufffd"  # what a decoder makes of an incomplete UTF-8 sequence


class Detokenizer:
    """Writes `seq.output_text`, `seq.prefix_offset`, `seq.read_offset` and the `decoded_token` of
    the newest `seq.logprobs` entry; reads everything else."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer  # a TextTokenizer or a transformers fast tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust backend directly: same text as tokenizer.decode without its per-call Python
        # overhead (and without clean_up_tokenization_spaces, which incremental decoding cannot honour).
        if backend is not None:
            self._decode = backend.decode
        else:
            self._decode = lambda ids, skip_special_tokens: tokenizer.decode(
                ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
            )

    def decode(self, token_ids, skip_special_tokens: bool = True) -> str:
        return self._decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def update(self, seq: Sequence) -> str | None:
        """Call after new tokens were appended to seq.token_ids. Appends their text to
        seq.output_text and returns the stop string that now ends it (the text cut where it
        begins, or after it with include_stop_str_in_output), else None."""
        params = seq.params
        tokens = seq.token_ids
        if seq.read_offset == 0:  # first call: start the window inside the prompt
            seq.read_offset = seq.num_prompt_tokens
            seq.prefix_offset = max(seq.num_prompt_tokens - _PROMPT_CONTEXT, 0)
            for entry in seq.prompt_logprobs or ():  # complete once the first token is sampled
                if entry is not None:
                    self._fill_decoded_tokens(entry)
        if seq.logprobs:
            self._fill_decoded_tokens(seq.logprobs[-1])

        skip = params.skip_special_tokens
        prefix_text = self._decode(tokens[seq.prefix_offset : seq.read_offset], skip_special_tokens=skip)
        if prefix_text.endswith(_REPLACEMENT):  # context cut inside a character: decode without it
            seq.prefix_offset, prefix_text = seq.read_offset, ""
        full_text = self._decode(tokens[seq.prefix_offset :], skip_special_tokens=skip)
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return None  # nothing new yet, or the last character is still incomplete
        new_text = full_text[len(prefix_text) :]
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(tokens)

        old_len = len(seq.output_text)
        seq.output_text += new_text
        if not params.stop or seq.num_output_tokens <= params.min_tokens:
            return None
        return _apply_stop_strings(seq, old_len)

    def flush(self, seq: Sequence) -> None:
        """The sequence has finished (not by a stop string): append the text still held back
        because it ends in an incomplete character, so the final text equals a full decode."""
        if seq.read_offset == 0 or seq.read_offset >= len(seq.token_ids):
            return
        skip = seq.params.skip_special_tokens
        prefix_text = self._decode(seq.token_ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=skip)
        full_text = self._decode(seq.token_ids[seq.prefix_offset :], skip_special_tokens=skip)
        seq.output_text += full_text[len(prefix_text) :]
        seq.prefix_offset = seq.read_offset = len(seq.token_ids)

    def _fill_decoded_tokens(self, entry: dict) -> None:
        for token_id, logprob in entry.items():
            if logprob.decoded_token is None:
                logprob.decoded_token = self._decode([token_id], skip_special_tokens=False)


def _apply_stop_strings(seq: Sequence, old_len: int) -> str | None:
    """Finds the earliest stop string that ends in the text added after old_len and cuts
    seq.output_text there. Only the tail that the new text can affect is searched."""
    text = seq.output_text
    best, best_at = None, len(text)
    for stop in seq.params.stop:
        at = text.find(stop, max(old_len - len(stop) + 1, 0))
        if at != -1 and at < best_at:
            best, best_at = stop, at
    if best is None:
        return None
    end = best_at + len(best) if seq.params.include_stop_str_in_output else best_at
    seq.output_text = text[:end]
    return best
