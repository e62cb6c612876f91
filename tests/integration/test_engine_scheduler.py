"""components/vllm_adapter/engine_scheduler.py against vLLM's own scheduler and KV cache manager (real
parts, no model run): the bundled model's config, a real KV cache layout, and model outputs
fed back as the engine core does."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from components.vllm_adapter.bundled_model import ensure_converted  # noqa: E402
from components.vllm_adapter.engine_scheduler import ClassFirstAsyncScheduler, ClassFirstScheduler, class_first_scheduler  # noqa: E402
from components.vllm_adapter.engine_spec import SCHEDULER_CLS  # noqa: E402
from components.core.settings import EngineSettings  # noqa: E402
from components.core.priority import CLASS_ARG, FIRST_STEP_CONFIG, HEADROOM_CONFIG  # noqa: E402

BLOCK = 16
MAX_SEQS = 8


@pytest.fixture(scope="module")
def model_config() -> ModelConfig:
    cache = EngineSettings().cache_dir  # type: ignore[call-arg]
    return ModelConfig(model=str(ensure_converted(cache)), dtype="float32", seed=0)


def config_for(model: ModelConfig, budget: int = 2048) -> VllmConfig:
    """`budget`: tokens per step (chunked prefill splits a longer prompt)."""
    scheduler = SchedulerConfig(max_num_seqs=MAX_SEQS, max_num_batched_tokens=budget, max_model_len=2048,
                                enable_chunked_prefill=True, policy="priority", is_encoder_decoder=False)
    return VllmConfig(model_config=model, scheduler_config=scheduler,
                      cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=False))


@pytest.fixture
def vllm_config(model_config: ModelConfig) -> VllmConfig:
    return config_for(model_config)


def parts(config: VllmConfig, blocks: int = 1000) -> dict[str, Any]:
    """What the engine core hands a scheduler: a KV cache of `blocks` blocks of one layer."""
    config.cache_config.num_gpu_blocks = blocks
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    return {"vllm_config": config, "kv_cache_config": kv, "block_size": BLOCK,
            "structured_output_manager": StructuredOutputManager(config)}


def make(cls: type[Scheduler], config: VllmConfig, blocks: int = 1000) -> Scheduler:
    return cls(**parts(config, blocks))


def request(rid: str, klass: int | None, priority: int, prompt_len: int = 20) -> Request:
    extra = {CLASS_ARG: klass} if klass is not None else None
    params = SamplingParams(max_tokens=200, ignore_eos=True, extra_args=extra)
    return Request(rid, list(range(1, prompt_len + 1)), params, None, arrival_time=float(priority), priority=priority)


def step(scheduler: Scheduler) -> dict[str, int]:
    """One engine step: schedule, then feed back one sampled token per request that finished
    its prompt, as the engine core does. Returns the tokens scheduled per request."""
    out = scheduler.schedule()
    ids = list(out.num_scheduled_tokens)
    sampled = [[7] if scheduler.requests[r].num_computed_tokens >= scheduler.requests[r].num_prompt_tokens else []
               for r in ids]
    result: Any = ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                    sampled_token_ids=sampled)
    scheduler.update_from_output(out, result)
    return dict(out.num_scheduled_tokens)


def start(scheduler: Scheduler, name: str, klass: int, count: int, priority: int) -> None:
    """`count` requests of one class, through their prefill and into decoding."""
    for index in range(count):
        scheduler.add_request(request(f"{name}-{index}", klass, priority + index))
    step(scheduler)
    step(scheduler)


def test_the_scheduler_vllm_loads_is_this_one(vllm_config: VllmConfig) -> None:
    from vllm.utils.import_utils import resolve_obj_by_qualname

    assert resolve_obj_by_qualname(SCHEDULER_CLS) is class_first_scheduler
    try:
        for async_scheduling, expected in ((False, ClassFirstScheduler), (True, ClassFirstAsyncScheduler)):
            vllm_config.scheduler_config.async_scheduling = async_scheduling
            assert type(class_first_scheduler(**parts(vllm_config))) is expected
    finally:
        vllm_config.scheduler_config.async_scheduling = False


@pytest.mark.parametrize("cls", [ClassFirstScheduler, Scheduler])
def test_a_higher_class_request_starts_in_a_step_without_the_lower_class(vllm_config: VllmConfig,
                                                                       cls: type[Scheduler]) -> None:
    scheduler = make(cls, vllm_config)
    for index in range(5):
        scheduler.add_request(request(f"batch-{index}", 10, 20_000 + index))
    scheduler.add_request(request("standard", 5, 10_000))
    step(scheduler)
    assert set(step(scheduler)) == {*(f"batch-{i}" for i in range(5)), "standard"}  # all decoding

    scheduler.add_request(request("interactive", 0, 30_000, prompt_len=37))
    first = step(scheduler)
    if cls is Scheduler:  # vLLM's own: the prefill shares the step with every decode
        assert len(first) == 7
        return
    assert first == {"interactive": 37}
    # Once only: the next step carries everyone again, the interactive request decoding.
    assert set(step(scheduler)) == {*(f"batch-{i}" for i in range(5)), "standard", "interactive"}


def test_a_same_or_lower_class_request_shares_its_step(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config)
    start(scheduler, "standard", 5, 3, 10_000)
    scheduler.add_request(request("another-standard", 5, 5_000))
    assert len(step(scheduler)) == 4
    scheduler.add_request(request("batch", 10, 1_000))
    assert len(step(scheduler)) == 5


def test_requests_without_a_class_neither_hold_nor_are_held(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config)
    scheduler.add_request(request("untagged", None, 20_000))
    scheduler.add_request(request("batch", 10, 20_001))
    step(scheduler)
    step(scheduler)
    scheduler.add_request(request("interactive", 0, 1))
    assert set(step(scheduler)) == {"untagged", "interactive"}  # only the batch one waits a step
    scheduler.add_request(request("untagged-new", None, 0))
    assert len(step(scheduler)) == 4


def test_no_hold_when_the_new_request_has_no_room(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config)
    start(scheduler, "batch", 10, MAX_SEQS, 20_000)
    scheduler.add_request(request("interactive", 0, 1))
    # Every place is taken: holding the batch would only idle the step. (vLLM's priority
    # policy preempts only when the KV cache runs out, not for a place in the batch.)
    assert len(step(scheduler)) == MAX_SEQS
    assert len(scheduler.running) == MAX_SEQS


def test_a_request_that_cannot_start_holds_the_others_one_step_only(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config, blocks=12)
    for index in range(3):
        scheduler.add_request(request(f"batch-{index}", 10, 20_000 + index))
    step(scheduler)
    assert len(step(scheduler)) == 3
    scheduler.add_request(request("interactive", 0, 1, prompt_len=200))  # more blocks than are free
    assert step(scheduler) == {}  # its step: it could not start, the batch waited once
    for _ in range(3):
        assert len(step(scheduler)) == 3  # then never again: no class starves
    assert scheduler.requests["interactive"].num_computed_tokens == 0


def test_the_lower_classes_run_at_least_every_other_step(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config)
    start(scheduler, "batch", 10, 3, 20_000)
    batch = {f"batch-{i}" for i in range(3)}
    for wave in range(3):  # a new interactive request before every step
        scheduler.add_request(request(f"interactive-{wave}-a", 0, 1 + wave))
        assert batch.isdisjoint(step(scheduler))  # held for this one's step
        scheduler.add_request(request(f"interactive-{wave}-b", 0, 1 + wave))
        assert batch <= set(step(scheduler))  # not for the next: it starts beside them


def test_the_held_keep_their_place_before_a_long_prompts_next_chunk(model_config: ModelConfig) -> None:
    scheduler = make(ClassFirstScheduler, config_for(model_config, budget=64))
    start(scheduler, "batch", 10, 3, 20_000)
    scheduler.add_request(request("interactive", 0, 1, prompt_len=300))
    assert step(scheduler) == {"interactive": 64}  # its first chunk, alone
    second = step(scheduler)
    # The batch decodes go first, as they would have without the hold; the prompt's next
    # chunk takes what is left of the budget.
    assert second == {"batch-0": 1, "batch-1": 1, "batch-2": 1, "interactive": 61}


def test_the_held_step_starts_no_lower_class_request(vllm_config: VllmConfig) -> None:
    scheduler = make(ClassFirstScheduler, vllm_config)
    start(scheduler, "batch", 10, 3, 20_000)
    scheduler.add_request(request("batch-new", 10, 30_000))
    scheduler.add_request(request("interactive", 0, 1))
    assert step(scheduler) == {"interactive": 20}
    assert set(step(scheduler)) == {"batch-0", "batch-1", "batch-2", "batch-new", "interactive"}


def with_headroom(config: VllmConfig, headroom: int, first_step_alone: bool = False) -> Scheduler:
    """The scheduler as vLLM builds it from the service's arguments: a batch of MAX_SEQS plus
    the headroom (--max-num-seqs), the headroom in --additional-config."""
    config.scheduler_config.max_num_seqs = MAX_SEQS + headroom
    config.additional_config = {HEADROOM_CONFIG: headroom, FIRST_STEP_CONFIG: first_step_alone}
    return class_first_scheduler(**parts(config))


@pytest.mark.parametrize("headroom", [0, 2])
def test_only_a_request_that_outranks_a_running_one_starts_in_the_headroom(vllm_config: VllmConfig,
                                                                          headroom: int) -> None:
    scheduler = with_headroom(vllm_config, headroom)
    start(scheduler, "flood", 5, MAX_SEQS, 100_000)  # one key fills the batch
    scheduler.add_request(request("flood-more", 5, 100_000 + MAX_SEQS))  # its own next: never outranks
    assert "flood-more" not in step(scheduler)
    scheduler.add_request(request("quiet", 5, 1_000))  # a key holding nothing: a lower number
    scheduler.add_request(request("interactive", 0, 50_000))  # a higher class
    started = set(step(scheduler)) | set(step(scheduler))
    # With headroom both start at once; without, both wait for a completion like the rest.
    assert {"quiet", "interactive"} <= started if headroom else not {"quiet", "interactive"} & started
    assert "flood-more" not in started
    assert len(scheduler.running) == MAX_SEQS + headroom


def test_an_outranking_request_behind_others_in_vllms_queue_still_starts(vllm_config: VllmConfig) -> None:
    """vLLM's queue orders by the priority number alone: an interactive request with a higher
    number than the flood's next still starts in the headroom, and the flood's next, set
    aside for that step, keeps its place in the queue."""
    scheduler = with_headroom(vllm_config, 2)
    start(scheduler, "flood", 5, MAX_SEQS, 100_000)
    scheduler.add_request(request("flood-more", 5, 100_000 + MAX_SEQS))
    scheduler.add_request(request("interactive", 0, 500_000))  # a higher class, a higher number
    assert "interactive" in step(scheduler) and "flood-more" not in scheduler.running
    assert [r.request_id for r in scheduler.waiting] == ["flood-more"]
    scheduler.add_request(request("quiet", 5, 1_000))
    assert "quiet" in step(scheduler) and len(scheduler.running) == MAX_SEQS + 2


def test_a_request_in_the_headroom_delays_nobody(vllm_config: VllmConfig) -> None:
    """The headroom is room added, counted apart: once a running request of the flood ends,
    the flood's next starts although the quiet key's request still runs beyond MAX_SEQS."""
    scheduler = with_headroom(vllm_config, 2)
    start(scheduler, "flood", 5, MAX_SEQS, 100_000)
    scheduler.add_request(request("flood-more", 5, 100_000 + MAX_SEQS))
    scheduler.add_request(request("quiet", 5, 1_000))
    assert "quiet" in step(scheduler) and len(scheduler.running) == MAX_SEQS + 1
    scheduler.finish_requests("flood-0", RequestStatus.FINISHED_ABORTED)
    assert "flood-more" in step(scheduler)
    assert len(scheduler.running) == MAX_SEQS + 1
