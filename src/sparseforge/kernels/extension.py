"""Lazy build of the C++ CPU kernels (csrc/cpu) with torch.utils.cpp_extension, one variant per
instruction set, picked at run time: the wheel must run on any x86-64, so no -march=native.
Nothing here compiles until a kernel is first called."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

# variant -> extra compiler flags; "generic" is plain x86-64 (SSE2), the portable floor
_AVX512_VNNI = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma",
                "-mprefer-vector-width=512")
ISA_FLAGS: dict[str, tuple[str, ...]] = {  # best first
    "avx512_amx": (*_AVX512_VNNI, "-mamx-tile", "-mamx-int8"),
    "avx512_vnni": _AVX512_VNNI,
    "avx2": ("-mavx2", "-mfma"),
    "generic": (),
}
# the variants a kernel is built in unless it asks for others (`kernel(..., variants=...)`)
DEFAULT_VARIANTS: tuple[str, ...] = ("avx2", "generic")
_AVX2_OR_BETTER = {"AVX2", "AVX512"}
CSRC = Path(__file__).resolve().parents[3] / "csrc" / "cpu"
_PACKAGE_CSRC = CSRC  # CSRC may be pointed elsewhere (tests); this is the shipped source


class ExtensionBuildError(RuntimeError):
    """The C++ extension could not be compiled or loaded; `reason` is the compiler's word."""

    def __init__(self, variant: str, reason: str) -> None:
        super().__init__(f"sparseforge C++ kernels ({variant}) did not build: {reason}")
        self.reason = reason


def cache_dir() -> Path:
    """Where builds go: $SPARSEFORGE_EXT_DIR, else $XDG_CACHE_HOME (or ~/.cache)/sparseforge/ext,
    with the torch version in the path so an upgrade rebuilds."""
    if os.environ.get("SPARSEFORGE_EXT_DIR"):
        root = Path(os.environ["SPARSEFORGE_EXT_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = base / "sparseforge" / "ext"
    return root / f"torch-{torch.__version__.replace('+', '_')}"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_avx512_vnni() -> bool:
    """Whether this CPU runs AVX-512 VNNI (vpdpbusd): torch reports AVX512 and the CPU lists
    avx512_vnni, avx512bw and avx512vl (torch 2.14 exposes no VNNI query of its own)."""
    return (torch.backends.cpu.get_cpu_capability() == "AVX512"
            and {"avx512_vnni", "avx512bw", "avx512vl"} <= _cpu_flags())


@functools.cache
def has_amx_int8() -> bool:
    """Whether this CPU has AMX int8 tiles (Sapphire Rapids and later) besides AVX-512 VNNI and
    Linux grants this process the tile state (arch_prctl(ARCH_REQ_XCOMP_PERM), asked here once;
    refused e.g. where a thread's alternate signal stack is too small for it)."""
    if not (has_avx512_vnni() and {"amx_tile", "amx_int8"} <= _cpu_flags()):
        return False
    sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18  # x86-64 Linux
    try:
        return ctypes.CDLL(None).syscall(sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):
        return False


def supported_isas(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> list[str]:
    """Those of `variants` this CPU can run, best first (the existing kernels: avx2, generic)."""
    return list(_supported_isas(variants))


@functools.cache  # asked on every kernel call: the CPU does not change within a process
def _supported_isas(variants: tuple[str, ...]) -> tuple[str, ...]:
    cap = torch.backends.cpu.get_cpu_capability()
    runs = {"avx512_amx": has_amx_int8(), "avx512_vnni": has_avx512_vnni(),
            "avx2": cap in _AVX2_OR_BETTER, "generic": True}
    return tuple(v for v in ISA_FLAGS if v in variants and runs[v])


def best_isa(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> str:
    return supported_isas(variants)[0]


def _first_error(text: str) -> str:
    """The compiler's first `error:` line (the useful one in pages of ninja output)."""
    for line in text.splitlines():
        if re.search(r"\berror\b", line):
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "unknown error"


@functools.cache
def load(name: str, variant: str, source: Path | None = None, op: str | None = None) -> None:
    """Compile (once, cached on disk) and load csrc/cpu/<name>.cpp as `variant`, registering its
    ops, `sparseforge::_<op>_<variant>` (op defaults to name; a file may define several).
    Raises ExtensionBuildError naming the compiler error."""
    from torch.utils import cpp_extension  # imported here: keeps `import sparseforge` lean

    if variant not in ISA_FLAGS:
        raise ValueError(f"unknown ISA variant {variant!r}; choose from {sorted(ISA_FLAGS)}")
    src = source or CSRC / f"{name}.cpp"
    if src == _PACKAGE_CSRC / f"{name}.cpp" and hasattr(torch.ops.sparseforge, f"_{op or name}_{variant}"):
        return  # already loaded in this process: loading the library again would register
        # its ops twice, which aborts the process
    if not src.is_file():
        raise ExtensionBuildError(variant, f"source {src} not found (install from a checkout)")
    build = cache_dir() / f"{name}_{variant}"
    build.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-fopenmp", f"-DSF_ISA={variant}", *ISA_FLAGS[variant]]
    # the venv's own ninja (the `dev` extra) is found even when the venv is not activated
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        cpp_extension.load(
            name=f"sparseforge_{name}_{variant}", sources=[str(src)], extra_cflags=flags,
            extra_ldflags=["-fopenmp"], build_directory=str(build), is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as e:  # compiler, ninja or loader failures
        raise ExtensionBuildError(variant, _first_error(str(e))) from e
    finally:
        os.environ["PATH"] = path


def kernel(name: str, variant: str | None = None, file: str | None = None,
           variants: tuple[str, ...] = DEFAULT_VARIANTS) -> Callable[..., torch.Tensor]:
    """The compiled op `sparseforge::_<name>_<variant>` (by default the best of `variants`
    this CPU runs), building csrc/cpu/<file or name>.cpp on first use."""
    variant = variant or best_isa(variants)
    if variant not in supported_isas(variants):
        raise RuntimeError(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) cannot run "
                           f"the {variant!r} variant of {name}; it runs {supported_isas(variants)}")
    load(file or name, variant, op=name)
    return getattr(torch.ops.sparseforge, f"_{name}_{variant}")


_build_failed: set[str] = set()  # source files whose build failed in this process (warned once)


def kernel_available(name: str, file: str | None = None,
                     variants: tuple[str, ...] = DEFAULT_VARIANTS) -> bool:
    """Whether the C++ kernel `name` (from csrc/cpu/<file or name>.cpp) builds here; on the
    file's first failure warns once, naming the compiler error, so callers fall back to the
    PyTorch reference."""
    source = file or name
    if source in _build_failed:
        return False
    try:
        kernel(name, file=file, variants=variants)
    except ExtensionBuildError as e:
        _build_failed.add(source)
        warnings.warn(f"{e}; {name} falls back to the (slower) PyTorch reference",
                      RuntimeWarning, stacklevel=3)
        return False
    return True
