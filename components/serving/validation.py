"""A generation request validated into a frozen `Generation`: model resolved, limits checked,
engine ids, sequence count and token reservation known. Only that type reaches admission."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from components.core.errors import InvalidRequest
from components.core.priority import STANDARD, request_level
from components.core.request_fields import declared, out_of_range, request_kind
from components.core.settings import ApiSettings
from components.edge.ledger import TokenLimits
from components.vllm_adapter.engine_call import UsageShown
from components.vllm_adapter.vllm_bridge import OpenAIBridge, prompt_count, request_models

_, _, StreamOptions = request_models()
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class Generation:
    body: Any  # vLLM's request model, model resolved and request_id set
    key: str  # the tenant that admission counts it against
    sequences: int  # engine sequences: n x prompts
    engine_ids: tuple[str, ...]
    stream: bool
    usage_shown: UsageShown  # what a stream shows of the usage vLLM is always asked for
    client_chose_max_tokens: bool
    token_limits: TokenLimits | None = None  # the key's token windows; None: nothing to reserve
    max_inflight: int | None = None  # the key's own cap on running sequences
    priority: int = STANDARD  # the class, lower first (admission and vLLM's scheduler)
    grammars: frozenset[str] = frozenset()  # the guard's builds for it (components/serving/grammar_guard.py)


def reservation(prompt_lengths: list[int], max_model_len: int, n: int, max_tokens: int | None) -> int:
    """The most tokens a request can use: every prompt, plus n completions of at most
    max_tokens each (unset: what the context leaves, as vLLM does)."""
    return sum(p + n * max(0, min(max_tokens or max_model_len, max_model_len - p)) for p in prompt_lengths)


def requested_max_tokens(body: Any) -> int | None:
    """The client's cap on generated tokens, by whichever name its API gives it."""
    for field in ("max_output_tokens", "max_completion_tokens", "max_tokens"):
        value = declared(body, field)
        if value is not None:
            return int(value)
    return None


def check_ranges(body: Any) -> None:
    """Every numeric field of the body in its range (request_fields.RANGES), on every route,
    before anything else reads it: a 400 naming the field, never a 500 from vLLM later."""
    found = out_of_range(body)
    if found is not None:
        raise InvalidRequest(found[1], param=found[0])
    extra = body.model_extra or {}
    best_of = extra.get("best_of")
    if best_of is not None and request_kind(body) == "completion":
        # vLLM 0.32 dropped best_of and ignores it: a client asking for more candidates than
        # it is sent would silently get fewer. Only the value that changes nothing passes.
        if isinstance(best_of, bool) or not isinstance(best_of, int) or best_of != (declared(body, "n") or 1):
            raise InvalidRequest("best_of is not supported by this service; omit it or set it equal to n.",
                                 param="best_of", code="unsupported_parameter")


def validate(body: Any, limits: ApiSettings, key: str, token_limits: TokenLimits | None = None,
             policy: Any = None, grammars: frozenset[str] = frozenset()) -> Generation:
    """Check what the engine would accept too late or not at all; raise InvalidRequest.
    `policy`: the key's KeyPolicy (its class, its own cap on running sequences);
    `grammars`: the keys of the grammars the guard built for this request."""
    check_ranges(body)
    n = declared(body, "n") or 1
    if n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n}.", param="n")
    if declared(body, "use_beam_search"):
        # vLLM runs beam search as engine requests of other names, out of reach of our
        # time limit, drain and abort: refused rather than left unbounded.
        raise InvalidRequest("Beam search is not supported by this service.", param="use_beam_search",
                             code="unsupported_parameter")
    kind = request_kind(body)
    messages = declared(body, "messages")
    if messages is not None and len(messages) > limits.max_messages:
        raise InvalidRequest(f"At most {limits.max_messages} messages are allowed.", param="messages")
    items = declared(body, "input")  # a Responses request's, its stored conversation included
    if isinstance(items, list) and len(items) > limits.max_messages:
        raise InvalidRequest(f"At most {limits.max_messages} input items are allowed.", param="input")
    for index, message in enumerate(messages or ()):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in _ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {sorted(_ROLES)}.", param=f"messages.{index}.role"
            )
    prompts = prompt_count(body)
    if prompts > limits.max_prompts:
        raise InvalidRequest(f"At most {limits.max_prompts} prompts are allowed in one request.", param="prompt")
    sequences = n * prompts  # admission refuses more than one key may run at once
    requested = requested_max_tokens(body)
    chose = requested is not None
    if limits.max_tokens_limit:
        field = "max_output_tokens" if kind == "responses" else "max_tokens"
        if requested is not None and requested > limits.max_tokens_limit:
            raise InvalidRequest(f"{field} must be at most {limits.max_tokens_limit}.", param=field)
        if requested is None:
            setattr(body, field, limits.max_tokens_limit)
    stop = declared(body, "stop")
    if isinstance(stop, list) and len(stop) > limits.max_stop_sequences:
        raise InvalidRequest(f"At most {limits.max_stop_sequences} stop sequences are allowed.", param="stop")
    # Engine request ids must be unique; a client's X-Request-ID is a correlation id only.
    # A Responses request's id is its response's id: the service's own, never the client's.
    body.request_id = f"resp_{uuid.uuid4().hex}" if kind == "responses" else uuid.uuid4().hex
    stream = bool(getattr(body, "stream", False))
    limited = token_limits if token_limits is not None and token_limits.any else None
    forward_usage = True
    continuous = False
    if stream and kind != "responses":  # a Responses stream always ends with its usage
        # Always ask vLLM for the usage chunk (exact token accounting); pass it on only if
        # the client asked for it.
        forward_usage = bool(body.stream_options and body.stream_options.include_usage)
        continuous = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        # With token limits, usage in every chunk: a stream dropped mid-way is charged
        # what it used so far.
        body.stream_options = StreamOptions(
            include_usage=True,
            continuous_usage_stats=continuous or limited is not None,
        )
    # A request may lower its own priority (a larger number), never raise it above its key's.
    floor = policy.priority if policy is not None else STANDARD
    body.priority = request_level(declared(body, "priority"), floor)
    # The service's usage in every chunk (with limits) is taken out again unless the client asked for it.
    shown = UsageShown(final=forward_usage, per_chunk=continuous or limited is None)
    return Generation(body, key, sequences, tuple(OpenAIBridge.engine_ids(body)), stream, shown, chose,
                      limited, policy.max_inflight if policy is not None else None, body.priority, grammars)
