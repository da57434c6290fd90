"""Packaging for vllm: the Python package plus the vllm._C kernel extension.

Build (torch and the tools in requirements/build.txt must already be installed):

    pip install -r requirements/build.txt
    pip install -e . --no-build-isolation

VLLM_TARGET_DEVICE (cpu, the default, or cuda; documented in vllm/envs.py) picks
the kernel sources and the requirements file. CMake does the compiling, with
Ninja when it is installed, into build/cmake-<device>/ so rebuilds are
incremental.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
# Read here rather than through vllm.envs: the package is not importable while
# it is being built.
TARGET_DEVICE = os.environ.get("VLLM_TARGET_DEVICE", "cpu")


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a file, following `-r other.txt` includes."""
    reqs = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            reqs += read_requirements(path.parent / line.split(maxsplit=1)[1])
        elif not line.startswith("-"):  # pip options (-c, --index-url) are skipped
            reqs.append(line)
    return reqs


def find_tool(name: str) -> str | None:
    """A build tool next to this interpreter (pip's cmake/ninja), else on PATH."""
    scripts = sysconfig.get_path("scripts")
    return shutil.which(name, path=scripts) or shutil.which(name)


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])  # CMakeLists.txt lists the sources


class CMakeBuild(build_ext):
    """Configures and builds CMakeLists.txt, writing the module where
    setuptools expects it; editable installs then copy it into vllm/."""

    def build_extension(self, ext: Extension) -> None:
        cmake = find_tool("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found: pip install -r requirements/build.txt")
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"cmake-{TARGET_DEVICE}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DVLLM_TARGET_DEVICE={TARGET_DEVICE}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DVLLM_OUTPUT_DIR={ext_path.parent}",
            f"-DVLLM_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = find_tool("ninja")
        if ninja and not (build_dir / "CMakeCache.txt").exists():  # keep its generator
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        jobs = max(1, len(os.sched_getaffinity(0)))
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", str(jobs)])


def requirements_file() -> Path:
    if TARGET_DEVICE not in ("cpu", "cuda"):
        raise ValueError(
            f"VLLM_TARGET_DEVICE must be cpu or cuda, not {TARGET_DEVICE!r}"
        )
    return ROOT / "requirements" / f"{TARGET_DEVICE}.txt"


setup(
    name="vllm",
    version="0.1.0",
    description="A small LLM inference engine with vLLM's interface",
    packages=find_packages(include=["vllm*"]),
    python_requires=">=3.11",
    install_requires=read_requirements(requirements_file()),
    ext_modules=[CMakeExtension("vllm._C")],
    entry_points={"console_scripts": ["vllm = vllm.entrypoints.cli:main"]},
    cmdclass={"build_ext": CMakeBuild},
)
