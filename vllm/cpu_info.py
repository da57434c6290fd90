"""What this machine's CPU can do, read once from /proc/cpuinfo (empty where it
is absent): the engine picks dtypes and kernel thresholds from it, and the
benchmarks print it next to their figures."""

import functools

# Flags of instructions that multiply bf16 natively (torch's bf16 matmul is
# about 2.3x its fp32 where one is present; elsewhere bf16 is emulated).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (this one, or one with `flags`) multiplies bf16 natively."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)
