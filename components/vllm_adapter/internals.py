"""Every vLLM name the adapter relies on beyond vLLM's documented API, in one list (`USED`):
module functions it replaces, methods it wraps or overrides, private methods it calls,
classes it subclasses, attributes it reads or writes, and the parameters it expects of
each. The adapter patches and calls through these entries, so the list is what the code
uses; tests/unit/test_vllm_canary.py checks every entry against the installed vLLM
(components/vllm_adapter/canary.py), so an upgrade that renames one fails there, by name.
Pinned to vLLM 0.32."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# replaced: a module attribute the adapter replaces; wrapped: a method it wraps on an
# instance; called: a function or method it calls (private, or relied on for its
# parameters); subclassed / overridden: a base class and the methods its subclass replaces;
# attribute: an attribute it reads or writes; assigned: an attribute the owner (a function)
# assigns (vLLM's app state); extended: a class whose instances take an attribute of ours.
Use = Literal["replaced", "wrapped", "called", "subclassed", "overridden", "attribute", "assigned", "extended"]


@dataclass(frozen=True)
class Internal:
    module: str
    path: str  # inside the module: "get_max_tokens", "Scheduler.schedule"
    use: Use
    params: tuple[str, ...] = ()  # parameter names it must take, in this order (others may sit between)

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    def owner(self) -> Any:
        """The module or class that holds it."""
        obj: Any = importlib.import_module(self.module)
        for part in self.path.split(".")[:-1]:
            obj = getattr(obj, part)
        return obj

    def resolve(self) -> Any:
        return getattr(self.owner(), self.name)

    def on(self, obj: Any) -> Any:
        """The same name on a live object (a handler, the engine)."""
        return getattr(obj, self.name)


def patch(internal: Internal, make: Callable[[Any], Any], target: Any = None) -> None:
    """Replace `internal` on `target` (default: its owner) by `make(original)`, once: a
    replacement carries `__wrapped__`, and a second call leaves it as it is."""
    holder = internal.owner() if target is None else target
    original = getattr(holder, internal.name)
    if hasattr(original, "__wrapped__"):
        return
    replacement = make(original)
    replacement.__wrapped__ = original
    setattr(holder, internal.name, replacement)


_CHAT = "vllm.entrypoints.openai.chat_completion.serving"
_COMPLETION = "vllm.entrypoints.openai.completion.serving"
_RESPONSES = "vllm.entrypoints.openai.responses.serving"
_ANTHROPIC = "vllm.entrypoints.anthropic.serving"
_TOKENIZE = "vllm.entrypoints.serve.tokenize.serving"
_STATE = "vllm.entrypoints.generate.api_router"
_APP_STATE = "vllm.entrypoints.launchers.api_server.app_state"
_ASYNC_LLM = "vllm.v1.engine.async_llm"
_SCHEDULER = "vllm.v1.core.sched.scheduler"
_REQUEST = "vllm.v1.request"
_LOGGERS = "vllm.v1.metrics.loggers"
_STATS = "vllm.v1.metrics.stats"

# The strict context check (vllm_hooks.install_context_check): each serving module imports
# `get_max_tokens` by name and calls it once per prompt with its exact token count.
_MAX_TOKENS = ("max_model_len", "max_tokens", "input_length", "truncate_prompt_tokens")
GET_MAX_TOKENS = tuple(Internal(module, "get_max_tokens", "replaced", _MAX_TOKENS)
                       for module in (_CHAT, _COMPLETION, _RESPONSES))

# Each engine request's class, cache salt and count (vllm_hooks.install_engine_tags).
GENERATE = Internal(_ASYNC_LLM, "AsyncLLM.generate", "wrapped", ("prompt", "sampling_params", "request_id"))
EXTRA_ARGS = Internal("vllm.sampling_params", "SamplingParams.extra_args", "attribute")
OUTPUT_KIND = Internal("vllm.sampling_params", "SamplingParams.output_kind", "attribute")

# The render steps, where the prompts' token counts are known (vllm_hooks.report_rendered),
# by the app-state name of the handler that has each.
RENDERS = {
    "openai_serving_chat": Internal(_CHAT, "OpenAIServingChat.render_chat_request", "wrapped", ("request",)),
    "openai_serving_completion": Internal(_COMPLETION, "OpenAIServingCompletion.render_completion_request",
                                          "wrapped", ("request",)),
    "openai_serving_responses": Internal(_RESPONSES, "OpenAIServingResponses._render_resolved_response_inputs",
                                         "wrapped", ("request", "prev_response")),
}
EXTRACT_PROMPT_LEN = Internal("vllm.entrypoints.serve.engine.serving", "BaseServing._extract_prompt_len", "called",
                              ("prompt",))
MODEL_CONFIG = Internal("vllm.entrypoints.serve.engine.serving", "BaseServing.model_config", "attribute")

# vLLM's grammar validation, its xgrammar builds skipped when the guard made them (grammar_reuse).
VALIDATE_GRAMMAR = Internal("vllm.v1.structured_output.backend_xgrammar", "validate_xgrammar_grammar", "replaced",
                            ("sampling_params",))
XGRAMMAR_GLOBAL = Internal("vllm.v1.structured_output.backend_xgrammar", "xgr", "attribute")

# The serving layer as vllm_bridge builds and calls it.
# (Its second parameter, the app state, goes unnamed: the word is the request context's alone.)
INIT_APP_STATE = Internal(_APP_STATE, "init_app_state", "called", ("engine_client", "args", "supported_tasks"))
STATE_NAMES = (
    *(Internal(_STATE, f"init_generate_state.{name}", "assigned") for name in (
        "openai_serving_chat", "openai_serving_completion", "openai_serving_responses",
        "anthropic_serving_messages")),
    Internal(_APP_STATE, "init_app_state.serving_tokenization", "assigned"),
    Internal(_APP_STATE, "init_app_state.engine_client", "assigned"),
)
HANDLER_CALLS = (
    Internal(_CHAT, "OpenAIServingChat.create_chat_completion", "called", ("request", "raw_request")),
    Internal(_COMPLETION, "OpenAIServingCompletion.create_completion", "called", ("request", "raw_request")),
    Internal(_RESPONSES, "OpenAIServingResponses.create_responses", "called", ("request", "raw_request")),
    Internal(_TOKENIZE, "ServingTokenization.create_tokenize", "called", ("request", "raw_request")),
    Internal(_TOKENIZE, "ServingTokenization.create_detokenize", "called", ("request", "raw_request")),
    Internal(_TOKENIZE, "ServingTokenization.renderer", "attribute"),
)

# The Anthropic conversions (anthropic_bridge).
DISABLED_THINKING_EFFORT = Internal(_ANTHROPIC, "AnthropicServingMessages._get_disabled_thinking_effort", "called")
MERGE_INLINE_SYSTEM = Internal(_ANTHROPIC, "AnthropicServingMessages._merge_inline_system", "attribute")
TO_CHAT = Internal(_ANTHROPIC, "AnthropicServingMessages.to_chat_completion_request", "called",
                   ("anthropic_request", "merge_inline_system", "disabled_thinking_effort"))
STREAM_CONVERTER = Internal(_ANTHROPIC, "AnthropicServingMessages.message_stream_converter", "called", ("generator",))
FULL_CONVERTER = Internal(_ANTHROPIC, "AnthropicServingMessages.messages_full_converter", "called", ("generator",))
COUNT_TOKENS = Internal(_ANTHROPIC, "AnthropicServingMessages.count_tokens", "called", ("request", "raw_request"))

# The class-first scheduler (engine_scheduler): vLLM's scheduler, what it reads of it and of
# its requests, and the attribute of ours each request carries.
SCHEDULER_BASES = (Internal(_SCHEDULER, "Scheduler", "subclassed"),
                   Internal("vllm.v1.core.sched.async_scheduler", "AsyncScheduler", "subclassed"))
SCHEDULER_INIT = Internal(_SCHEDULER, "Scheduler.__init__", "called", ("vllm_config",))
SCHEDULE = Internal(_SCHEDULER, "Scheduler.schedule", "overridden")
SCHEDULER_STATE = tuple(Internal(_SCHEDULER, f"Scheduler.{name}", "attribute") for name in (
    "running", "waiting", "max_num_active_reqs", "num_waiting_for_streaming_input", "policy", "current_step"))
ADDITIONAL_CONFIG = Internal("vllm.config.vllm", "VllmConfig.additional_config", "attribute")
ASYNC_SCHEDULING = Internal("vllm.config.scheduler", "SchedulerConfig.async_scheduling", "attribute")
PEEK_REQUEST = Internal("vllm.v1.core.sched.request_queue", "RequestQueue.peek_request", "called")
QUEUE_ORDER = (Internal("vllm.v1.core.sched.request_queue", "RequestQueue.__iter__", "called"),
               Internal("vllm.v1.core.sched.request_queue", "RequestQueue.remove_requests", "called", ("requests",)),
               Internal("vllm.v1.core.sched.request_queue", "RequestQueue.add_request", "called", ("request",)),
               Internal(_REQUEST, "Request.__lt__", "called", ("other",)))
PRIORITY_POLICY = Internal("vllm.v1.core.sched.request_queue", "SchedulingPolicy.PRIORITY", "attribute")
WAITING_STATUS = Internal(_REQUEST, "RequestStatus.WAITING", "attribute")
REQUEST_STATE = tuple(Internal(_REQUEST, f"Request.{name}", "attribute") for name in (
    "sampling_params", "status", "num_computed_tokens", "next_decode_eligible_step", "priority", "arrival_time"))
REQUEST_EXTENDED = Internal(_REQUEST, "Request", "extended")

# The engine (engine.py): how it is built, what is read of it, its Prometheus logger.
FROM_ENGINE_ARGS = Internal(_ASYNC_LLM, "AsyncLLM.from_engine_args", "called",
                            ("engine_args", "usage_context", "stat_loggers"))
ERRORED = Internal(_ASYNC_LLM, "AsyncLLM.errored", "attribute")
# The engine core processes, one hop per entry: engine.engine_core.resources.engine_manager.processes
PIDS_PATH = (Internal(_ASYNC_LLM, "AsyncLLM.engine_core", "attribute"),
             Internal("vllm.v1.engine.core_client", "MPClient.resources", "attribute"),
             Internal("vllm.v1.engine.core_client", "BackgroundResources.engine_manager", "attribute"),
             Internal("vllm.v1.engine.utils", "CoreEngineProcManager.processes", "attribute"))
UNFINISHED_PATH = (Internal(_ASYNC_LLM, "AsyncLLM.output_processor", "attribute"),
                   Internal("vllm.v1.engine.output_processor", "OutputProcessor.get_num_unfinished_requests",
                            "called"))
STAT_LOGGER = (Internal(_LOGGERS, "PrometheusStatLogger", "subclassed"),
               Internal(_LOGGERS, "PrometheusStatLogger.record", "overridden",
                        ("scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx")),
               Internal(_LOGGERS, "PrometheusStatLogger.gauge_scheduler_waiting", "attribute"),
               Internal(_STATS, "SchedulerStats.num_waiting_reqs", "attribute"),
               Internal(_STATS, "SchedulerStats.num_skipped_waiting_reqs", "attribute"))
FREEZE_GC_HEAP = Internal("vllm.utils.gc_utils", "freeze_gc_heap", "called")


def dotted(path: tuple[Internal, ...]) -> str:
    """An attribute path through the engine's objects, as engine.vllm_internal walks it."""
    return ".".join(hop.name for hop in path)


USED: list[Internal] = [
    *GET_MAX_TOKENS, GENERATE, EXTRA_ARGS, OUTPUT_KIND, *RENDERS.values(), EXTRACT_PROMPT_LEN, MODEL_CONFIG,
    VALIDATE_GRAMMAR, XGRAMMAR_GLOBAL, INIT_APP_STATE, *STATE_NAMES, *HANDLER_CALLS,
    DISABLED_THINKING_EFFORT, MERGE_INLINE_SYSTEM, TO_CHAT, STREAM_CONVERTER, FULL_CONVERTER, COUNT_TOKENS,
    *SCHEDULER_BASES, SCHEDULER_INIT, SCHEDULE, *SCHEDULER_STATE, ADDITIONAL_CONFIG, ASYNC_SCHEDULING, PEEK_REQUEST,
    *QUEUE_ORDER, PRIORITY_POLICY, WAITING_STATUS, *REQUEST_STATE, REQUEST_EXTENDED,
    FROM_ENGINE_ARGS, ERRORED, *PIDS_PATH, *UNFINISHED_PATH, *STAT_LOGGER, FREEZE_GC_HEAP,
]
