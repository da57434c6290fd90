"""What this machine's CPU can do, read once from /proc/cpuinfo (empty where it
is absent): the engine picks dtypes and kernel paths from it, and the
benchmarks print it next to their figures.

``VLLM_CPU_ISA_LEVEL`` masks the flags down to a lower level (see ``LEVELS``),
so one machine can run every CPU path the project gates on: the suite is run
once per level the host reaches. Kernels that pick an instruction set at run
time must ask ``isa_level()`` (never cpuid) so the mask reaches them too."""

import functools

from vllm import envs

# Flags of instructions that multiply bf16 natively (torch's bf16 matmul is
# about 2.3x its fp32 where one is present; elsewhere bf16 is emulated).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Levels from lowest to highest, each naming what it keeps of the host's
# flags: a mask removes flags, it never adds any the host lacks.
#   avx2:        no AVX-512 and no AMX (an AVX2-only host)
#   avx512:      AVX-512 (with VNNI where present) but no bf16/fp16 AVX-512
#                extensions and no AMX (Skylake/Cascade Lake)
#   avx512_bf16: everything but AMX (AMD Zen 4/5, Cooper Lake)
#   native:      the host as it is (AMX where present)
LEVELS = ("avx2", "avx512", "avx512_bf16", "native")
_DROPPED_ABOVE = {
    "avx2": ("avx512", "amx", "avx_vnni", "avx10"),
    "avx512": ("avx512_bf16", "avx512_fp16", "amx", "avx10"),
    "avx512_bf16": ("amx",),
    "native": (),
}


def _host_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def mask_flags(flags: frozenset[str], level: str) -> frozenset[str]:
    """`flags` as a CPU of `level` would show them (never more than `flags`)."""
    if level not in _DROPPED_ABOVE:
        raise ValueError(
            f"VLLM_CPU_ISA_LEVEL must be one of {', '.join(LEVELS)}; got {level!r}"
        )
    dropped = _DROPPED_ABOVE[level]
    return frozenset(f for f in flags if not f.startswith(dropped))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The host's flags, masked to VLLM_CPU_ISA_LEVEL (read once per process)."""
    return mask_flags(_host_flags(), envs.VLLM_CPU_ISA_LEVEL.strip().lower())


def isa_level(flags: frozenset[str] | None = None) -> str:
    """The highest level of LEVELS that `flags` (default: this CPU's) reach;
    'native' means AMX tiles are there. Below avx2, 'scalar'."""
    flags = cpu_flags() if flags is None else flags
    if "amx_tile" in flags:
        return "native"
    if "avx512f" in flags and "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "scalar"


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (this one, or one with `flags`) multiplies bf16 natively."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)
