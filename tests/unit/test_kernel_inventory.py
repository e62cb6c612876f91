"""The committed kernel inventory (docs/benchmarks/gpu-kernels.json, `make kernel-inventory`)
is for the current requirements/gpu.lock and has sm_75 code for every kernel family of the
T4 path; a listing filtered to sm_80 or made up fails the same check. No download here."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components.vllm_adapter import gpu_preflight
from harness.kernel_inventory import FAMILIES, LOCK, RECORD, check, lowest_capability, runnable_on


@pytest.fixture(scope="module")
def inventory() -> dict[str, Any]:
    return json.loads(RECORD.read_text())


def only_archs(inventory: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """The inventory as cuobjdump would list a wheel rebuilt for `keep` only."""
    filtered = copy.deepcopy(inventory)
    for functions in filtered["functions"].values():
        for arch in list(functions):
            if arch not in keep:
                del functions[arch]
    for wheel in filtered["wheels"].values():
        for info in wheel["objects"].values():
            info["elf"] = {a: n for a, n in info["elf"].items() if a in keep}
            info["ptx"] = {a: n for a, n in info["ptx"].items() if a in keep}
    return filtered


def test_the_committed_inventory_covers_the_t4_path(inventory: dict[str, Any]) -> None:
    assert check(inventory, LOCK.read_text()) == []


def test_it_is_for_this_lock_only(inventory: dict[str, Any]) -> None:
    changed = LOCK.read_text().replace("vllm==0.32.0", "vllm==0.32.1")
    problems = check(inventory, changed)
    assert any("another requirements/gpu.lock" in p for p in problems)
    assert "vllm 0.32.0 recorded, 0.32.1 locked" in problems


def test_wheels_built_for_sm_80_only_fail_every_family(inventory: dict[str, Any]) -> None:
    problems = check(only_archs(inventory, {"sm_80", "sm_86", "sm_89", "sm_90"}), LOCK.read_text())
    assert len(problems) == len(FAMILIES)
    assert all("no sm_75 code or PTX a 7.5 device can JIT" in p for p in problems)


def test_a_listing_without_the_awq_fp16_marlin_instances_fails(inventory: dict[str, Any]) -> None:
    made_up = copy.deepcopy(inventory)
    sm75 = made_up["functions"]["vllm/_C_stable_libtorch.abi3.so"]["sm_75"]
    del sm75["marlin::Marlin<float16,uint4,float16,float16>"]
    problems = check(made_up, LOCK.read_text())
    assert [p.split(":")[0] for p in problems] == ["awq_marlin_gemm"]


def test_ptx_counts_only_at_or_below_the_device() -> None:
    assert runnable_on("sm_75", ptx=False) and runnable_on("sm_70", ptx=False)
    assert not runnable_on("sm_80", ptx=False) and not runnable_on("sm_61", ptx=False)
    assert runnable_on("sm_70", ptx=True) and runnable_on("sm_52", ptx=True)
    assert not runnable_on("sm_80", ptx=True)


def test_the_preflight_minimum_is_the_inventorys(inventory: dict[str, Any]) -> None:
    lowest = lowest_capability(inventory)
    assert (lowest // 10, lowest % 10) == gpu_preflight.MIN_CAPABILITY == (7, 5)


def test_the_driver_rule_follows_the_bundled_cuda(inventory: dict[str, Any]) -> None:
    """torch and vLLM link the CUDA 13 runtime; NVIDIA's minor-version table asks >= 580."""
    torch_cuda = inventory["wheels"]["torch"]["cuda"]
    assert torch_cuda == "13.0"
    linked = {lib for wheel in ("torch", "vllm") for info in inventory["wheels"][wheel]["objects"].values()
              for lib in info["needs"] if lib.startswith("libcudart")}
    assert linked == {"libcudart.so.13"}
    assert gpu_preflight.DRIVER_FOR_CUDA[int(torch_cuda.split(".")[0])] == 580


def test_tritons_ptxas_emits_sm_75(inventory: dict[str, Any]) -> None:
    # TRITON_ATTN's kernels are compiled on the node by the ptxas in the locked triton wheel.
    assert inventory["wheels"]["triton"]["ptxas"]["compiles_sm_75"] is True


def test_the_simulation_knows_the_ops_the_t4_path_calls(inventory: dict[str, Any]) -> None:
    assert {"marlin_gemm", "awq_marlin_repack", "silu_and_mul", "rotary_embedding"} <= set(inventory["op_schemas"])
