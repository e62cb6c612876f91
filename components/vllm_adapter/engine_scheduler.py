"""vLLM 0.32's scheduler (internal API, pinned) with two rules added for the priority classes
and for tenants that differ.

**Headroom** (PRIORITY_HEADROOM): vLLM's batch is MAX_NUM_SEQS plus a headroom that a step
may fill only with a request that outranks one already running (a higher class, or a key
that holds fewer sequences: vLLM's priority number, components/core/priority.py). Without
it, such a request waits in vLLM's queue for the next completion, and completions come in
clumps: requests that started together and ask for as many tokens end together, one whole
generation apart (a quiet key beside a flood at three times capacity: 45 % of its answers
in time, docs/benchmarks/goodput-2026-12-07.json). With it the request starts at the next
step, and it holds that headroom place, counted apart, until it ends: it delays nobody. vLLM
itself only preempts for a lack of KV cache, never for a place in the batch; preempting a
running request would throw its decode away, while the headroom costs one step's time for
a few more sequences.

**First step alone** (PRIORITY_FIRST_STEP_ALONE): the step that starts a request runs
without the running requests of a lower class.

Why: an engine step costs more the more sequences it carries, and on CPUs much more
(measured on 2 cores, `docs/benchmarks.md`: a 37-token prefill alone 26 ms, beside six batch
decodes 35 ms). vLLM's priority policy orders the waiting queue, but the first step of an
interactive request still carries every batch sequence running. Here that one step carries
only the requests of its class or above; the lower ones skip that step (they keep their KV
cache and their place, and continue on the next) and lose one step's time per such start.
Each request gets this at most once, and never two steps in a row: however fast
higher-class requests arrive, the lower classes run at least every other step, so none
starves. On by default on CPUs only (PRIORITY_FIRST_STEP_ALONE): on a GPU a decode batch
adds little to a prefill's step, and the lower classes would lose a step for little.

The class comes with each request in `SamplingParams.extra_args` (CLASS_ARG), set by the
service for every request it sends (components/vllm_adapter/vllm_hooks.py); a request without it is
never held and never holds others. No library offers this: vLLM's scheduler is the only
place where a step's batch is chosen, and `--scheduler-cls` is its documented extension
point. What it reads and overrides of vLLM's scheduler and requests is listed in
components/vllm_adapter/internals.py (SCHEDULER_*, REQUEST_*). This module runs in vLLM's
engine core process."""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from components.core.priority import CLASS_ARG, FIRST_STEP_CONFIG, HEADROOM_CONFIG

_STARTED = "_service_class_step_done"
_HEADROOM = "_service_in_headroom"  # started beyond MAX_NUM_SEQS: holds a headroom place


def request_class(request: Request) -> int | None:
    params = request.sampling_params
    extra = params.extra_args if params is not None else None
    value = extra.get(CLASS_ARG) if extra else None
    return value if isinstance(value, int) else None


def class_first_scheduler(*, vllm_config: Any, **kwargs: Any) -> Scheduler:
    """What `--scheduler-cls` names: vLLM calls it as it would call its scheduler class. The
    asynchronous variant where vLLM schedules asynchronously (its default on GPUs), which
    it decides only once the config is complete."""
    cls = ClassFirstAsyncScheduler if vllm_config.scheduler_config.async_scheduling else ClassFirstScheduler
    scheduler = cls(vllm_config=vllm_config, **kwargs)
    extra = vllm_config.additional_config if isinstance(vllm_config.additional_config, dict) else {}
    scheduler.headroom = max(0, int(extra.get(HEADROOM_CONFIG, 0)))
    scheduler.first_step_alone = bool(extra.get(FIRST_STEP_CONFIG, True))
    return scheduler


class ClassFirstScheduler(Scheduler):
    _held_last_step = False
    headroom = 0  # class_first_scheduler sets both from vLLM's --additional-config
    first_step_alone = True

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        if not self.headroom:
            return self._schedule_classes(*args, **kwargs)
        limit = self.max_num_active_reqs
        before = {id(request) for request in self.running}
        allowed, aside = self._plan_headroom(limit)
        if aside:
            self.waiting.remove_requests(aside)
        self.max_num_active_reqs = allowed
        try:
            return self._schedule_classes(*args, **kwargs)
        finally:
            self.max_num_active_reqs = limit
            for request in aside:
                self.waiting.add_request(request)
            self._mark_headroom([request for request in self.running if id(request) not in before], limit)

    def _plan_headroom(self, limit: int) -> tuple[int, list[Request]]:
        """(the active requests this step may reach, the waiting ones it sets aside). vLLM's
        batch (--max-num-seqs) is MAX_NUM_SEQS plus the headroom. The requests started in
        the headroom are counted apart: the others fill up to MAX_NUM_SEQS as vLLM would.
        Beyond that, a step starts only the waiting requests that outrank the last of the
        running ones (by class, then vLLM's priority number, which puts a key holding fewer
        sequences first, components/core/priority.py, then arrival); those of vLLM's queue
        in front of them that do not are set aside for that step (they could not start in
        it anyway) and put back after, in their order. So the headroom never delays the
        others, and a higher class does not wait behind a lower one's lower number."""
        base = max(1, limit - self.headroom)
        active = len(self.running) + self.num_waiting_for_streaming_input
        in_headroom = sum(1 for request in self.running if getattr(request, _HEADROOM, False))
        allowed = min(limit, base + in_headroom)
        if self.policy != SchedulingPolicy.PRIORITY or not self.running or active < allowed:
            return allowed, []
        last = max(_rank(request) for request in self.running)
        outranking: list[Request] = []
        passed: list[Request] = []
        for request in self.waiting:  # in vLLM's order
            if active + len(outranking) >= limit:
                break
            if request_class(request) is not None and _rank(request) < last:
                outranking.append(request)
            else:
                passed.append(request)
        if not outranking:
            return allowed, []
        aside = [request for request in passed if request < outranking[-1]]
        return max(allowed, active + len(outranking)), aside

    def _mark_headroom(self, started: list[Request], limit: int) -> None:
        """The requests this step started beyond MAX_NUM_SEQS (the last ones it started) hold
        headroom places until they end."""
        base = max(1, limit - self.headroom)
        in_headroom = sum(1 for request in self.running if getattr(request, _HEADROOM, False))
        excess = len(self.running) - in_headroom - base
        for request in started[max(0, len(started) - excess):] if excess > 0 else ():
            setattr(request, _HEADROOM, True)

    def _schedule_classes(self, *args: Any, **kwargs: Any) -> Any:
        plan = self._plan_for_this_step() if self.first_step_alone else None
        if plan is None:
            return super().schedule(*args, **kwargs)
        klass, held = plan
        # vLLM's own way to skip a running request for one step (its diffusion scheduler's):
        # it keeps its place in `running`, so the next step serves it in order, and it stays
        # the first to be preempted should the KV cache run out.
        for request in held:
            request.next_decode_eligible_step = max(request.next_decode_eligible_step, self.current_step + 2)
        # Nor may this step start a waiting request of a lower class (the other prompts of a
        # batch request, say) in the room the held ones leave.
        eligible = sum(1 for request in self.waiting
                       if (other := request_class(request)) is not None and other <= klass)
        active_limit = self.max_num_active_reqs
        self.max_num_active_reqs = min(active_limit,
                                       len(self.running) + self.num_waiting_for_streaming_input + eligible)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.max_num_active_reqs = active_limit

    def _plan_for_this_step(self) -> tuple[int, list[Request]] | None:
        """(class, the running requests of a lower class) when the next waiting request is
        new (nothing computed), has not had its step yet and has room to start, and the last
        step held nobody."""
        if self._held_last_step:
            self._held_last_step = False
            return None
        if self.policy != SchedulingPolicy.PRIORITY or not self.running or not self.waiting:
            return None
        if len(self.running) + self.num_waiting_for_streaming_input >= self.max_num_active_reqs:
            return None
        upcoming = self.waiting.peek_request()
        klass = request_class(upcoming)
        if (klass is None or upcoming.status != RequestStatus.WAITING or upcoming.num_computed_tokens
                or getattr(upcoming, _STARTED, False)):
            return None
        setattr(upcoming, _STARTED, True)
        held = [request for request in self.running if (other := request_class(request)) is not None and other > klass]
        self._held_last_step = bool(held)
        return (klass, held) if held else None


def _rank(request: Request) -> tuple[int, int, float]:
    klass = request_class(request)
    return (klass if klass is not None else -1, request.priority, request.arrival_time)


class ClassFirstAsyncScheduler(ClassFirstScheduler, AsyncScheduler):
    """The same rule over vLLM's asynchronous scheduler (its output placeholders)."""
