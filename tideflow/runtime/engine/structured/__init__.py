"""Structured outputs: what a request's `SamplingParams.structured_outputs` may generate, held to
by a token bitmask each step (llguidance computes it; the sampling kernel applies it).

- `grammar`: a constraint (JSON schema, JSON object, regex, choice, Lark/GBNF grammar) to
  llguidance's grammar text, validated without a tokenizer, so the server can refuse a bad one
  before anything is queued. Imports neither torch nor transformers.
- `grammar_cache`: each grammar compiled once per engine against its tokenizer (an LRU of
  matcher prototypes keyed by the constraint), a fresh matcher per sequence copied from it.
- `sequence_matcher`: one completion's matcher, advanced over its output tokens. It is a pure
  function of those tokens, so it is never sent anywhere: a sequence that moves (prefill to
  decode, a replay after a crash, a restore from a snapshot, a migration) rebuilds it here
  from the tokens it arrives with.
- `structured_outputs`: the engine's part: admission checks, the scheduler's advance-and-stop
  hook, and the next step's bitmask filled on a background thread while the forward runs.
"""
