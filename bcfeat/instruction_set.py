"""One instruction set for the study's numeric libraries, so that its numbers are the same on
every x86-64 machine of the v3 level (AVX2).

PyTorch (ATen's vector kernels, oneDNN's convolutions, MKL's), NumPy's own loops and the OpenBLAS
that NumPy and SciPy bundle each choose their kernels for the CPU they find when they start: on a
CPU with AVX-512 they take other kernels than on one with AVX2 alone. The kernels add in another
order or approximate ``exp`` and ``log`` otherwise, so a network trained for an hour, or a logistic
regression's solver, ends in other numbers. Measured on an AMD EPYC with AVX-512
(2026-12-07): the detector of a fresh-clone run agreed with the experts' masks to 0.9218 where the
committed run (made on an AVX2 machine) had 0.9223; the oracle stage alone, run with the pins
below, gave the committed tables byte for byte. NumPy's ``exp`` and ``log`` differ in the last bit
between its AVX-512 (``X86_V4``) and AVX2 (``X86_V3``) loops: with the first three pins alone, a
fresh-clone run left one kernel MMD of the domain-invariance table one bit off the committed one.

Each library reads one environment variable at start-up that caps what it dispatches to:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's vectorised CPU kernels;
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN (PyTorch's convolutions on the CPU);
- ``OPENBLAS_CORETYPE=Haswell``: the OpenBLAS that NumPy and SciPy bundle (its kernel for AVX2
  CPUs; AMD's Zen kernels are the same code);
- ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``: NumPy's own vector loops (its
  AVX-512 targets; NumPy 2.x's names, a CPU without them just ignores the request). NumPy refuses to
  start when ``NPY_ENABLE_CPU_FEATURES`` is set as well, so where the user has set that one this pin
  is left out;
- ``MKL_ENABLE_INSTRUCTIONS=AVX2``: the MKL that PyTorch's CPU build uses for its matrix products
  (on Intel CPUs with AVX-512; on the AMD machine above it changed no bit that was measured);
- ``NUMBA_CPU_NAME=haswell`` with ``NUMBA_CPU_FEATURES`` empty: Numba, which compiles UMAP's and
  PyNNDescent's loops for the CPU it runs on, compiles them for a Haswell's features instead (the
  name alone would keep the host's features). Without it the figures' UMAP embeddings came out
  otherwise on the AVX-512 machine; with it, the committed figure pixel for pixel.

The machines capped are those of the x86-64-v3 level (AVX, AVX2, BMI1/2, F16C, FMA, LZCNT, MOVBE:
Intel's since Haswell, AMD's since Excavator and Zen), for which every pin names kernels the CPU
runs; NumPy's AVX2 loops, too, need that whole level.

The runner sets them for the run (:func:`instruction_set_pinned`), so every notebook's kernel
starts with them, where the machine is x86-64 of the v3 level (above) and the user has not set the
variable; on other machines (ARM, or a CPU without AVX2) nothing is pinned and the numbers are the
machine's own. The price is speed
on CPUs with wider vectors: ``python -m bcfeat.runner --native-isa`` leaves the libraries to choose.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

PORTABLE_PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "",
}
"""The environment variables, and their values, that cap each library at AVX2 kernels."""

# A pin that is left out where the user has set the variable named beside it (the two together
# would stop the library from starting).
_EXCLUSIVE_WITH: dict[str, str] = {"NPY_DISABLE_CPU_FEATURES": "NPY_ENABLE_CPU_FEATURES"}

_X86_64 = ("x86_64", "amd64")
# /proc/cpuinfo's names of the x86-64-v3 level's features ("abm" is LZCNT).
_NEEDED_FLAGS = frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})


def cpuinfo_field(name: str, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    r"""The first non-empty value of field ``name`` in Linux's ``/proc/cpuinfo`` (the first
    processor's); ``None`` where the file is absent or has no such value (another system).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("processor\t: 0\nflags\t\t: fpu avx2\nprocessor\t: 1\nflags\t: fpu\n")
    >>> cpuinfo_field("flags", f.name), cpuinfo_field("model name", f.name), cpuinfo_field("flags", "/no/such/file")
    ('fpu avx2', None, None)
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name and value.strip():
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    r"""The first processor's feature flags from Linux's ``/proc/cpuinfo``; ``None`` where the file
    is absent or lists none (another system).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nprocessor\t: 1\nflags\t: fpu\n")
    >>> sorted(cpu_flags(f.name)), cpu_flags("/no/such/file")
    (['avx2', 'fma', 'fpu', 'sse2'], None)
    """
    flags = cpuinfo_field("flags", cpuinfo)
    return None if flags is None else frozenset(flags.split())


def portable_pins(machine: str | None = None, flags: frozenset[str] | None = None) -> dict[str, str]:
    """The pins for a machine: :data:`PORTABLE_PINS` on x86-64 whose CPU has the x86-64-v3 level's
    features (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE; :data:`_NEEDED_FLAGS`), else
    none. ``machine`` (``platform.machine()``) and ``flags`` (:func:`cpu_flags`) default to this
    machine's; unknown flags on x86-64 (not Linux) are taken as AVX2's presence, since every x86-64
    CPU of the last decade has it and the libraries ignore a cap above what the CPU has.

    >>> portable_pins("x86_64", _NEEDED_FLAGS | {"sse2", "avx512f"}) == PORTABLE_PINS
    True
    >>> portable_pins("aarch64", None), portable_pins("x86_64", frozenset({"sse2", "avx"}))
    ({}, {})
    """
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86_64:
        return {}
    flags = cpu_flags() if flags is None else flags
    if flags is not None and not _NEEDED_FLAGS <= flags:
        return {}
    return dict(PORTABLE_PINS)


def pin_instruction_set(environ: MutableMapping[str, str] | None = None,
                        pins: dict[str, str] | None = None) -> dict[str, str]:
    """Set ``pins`` (default: :func:`portable_pins` for this machine) in ``environ`` (default
    ``os.environ``, which every kernel the runner starts inherits), leaving any variable the user
    has already set as it is, and leaving out a pin whose rival variable the user has set (NumPy's
    ``NPY_DISABLE_CPU_FEATURES`` beside ``NPY_ENABLE_CPU_FEATURES``). Returns each pinned variable
    with the value in effect.

    >>> env = {"OPENBLAS_CORETYPE": "Zen", "NPY_ENABLE_CPU_FEATURES": "X86_V3"}
    >>> pins = pin_instruction_set(env, PORTABLE_PINS)
    >>> pins["OPENBLAS_CORETYPE"], env["ATEN_CPU_CAPABILITY"], "NPY_DISABLE_CPU_FEATURES" in env
    ('Zen', 'avx2', False)
    """
    environ = os.environ if environ is None else environ
    pins = portable_pins() if pins is None else pins
    pins = {name: value for name, value in pins.items()
            if name in environ or name not in _EXCLUSIVE_WITH or _EXCLUSIVE_WITH[name] not in environ}
    for name, value in pins.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in pins}


def pins_label(pins: Mapping[str, str]) -> str:
    """``NAME=value`` of each pin, comma-separated, in ``pins``' order (``""`` for none): how the
    provenance record and the caches' keys write a cap.

    >>> pins_label({"ONEDNN_MAX_CPU_ISA": "AVX2", "NUMBA_CPU_FEATURES": ""}), pins_label({})
    ('ONEDNN_MAX_CPU_ISA=AVX2, NUMBA_CPU_FEATURES=', '')
    """
    return ", ".join(f"{name}={value}" for name, value in pins.items())


def kernels_in_effect(environ: Mapping[str, str] | None = None) -> str:
    """The cap this process's libraries started under: ``NAME=value`` of each variable of
    :data:`PORTABLE_PINS` set in ``environ`` (default ``os.environ``), in that order, or ``""`` where
    none is set (the libraries chose for the CPU). The caches of computed arrays key on it
    (:func:`bcfeat.detection.feature_cache.cache_key`): their last bits depend on it.

    >>> kernels_in_effect({"PATH": "/bin"}), kernels_in_effect({"OPENBLAS_CORETYPE": "Haswell"})
    ('', 'OPENBLAS_CORETYPE=Haswell')
    """
    environ = os.environ if environ is None else environ
    return pins_label({name: environ[name] for name in PORTABLE_PINS if name in environ})


@contextmanager
def instruction_set_pinned(pins: dict[str, str] | None = None,
                           environ: MutableMapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """:func:`pin_instruction_set` for the duration of a block (yielding what it returns); the
    variables it added are removed again afterwards, those the user had set are left alone.

    >>> env = {}
    >>> with instruction_set_pinned(PORTABLE_PINS, env) as pins:
    ...     env["ONEDNN_MAX_CPU_ISA"]
    'AVX2'
    >>> env
    {}
    """
    environ = os.environ if environ is None else environ
    pins = portable_pins() if pins is None else pins
    added = [name for name in pins if name not in environ]
    try:
        yield pin_instruction_set(environ, pins)
    finally:
        for name in added:
            environ.pop(name, None)


__all__ = ["PORTABLE_PINS", "cpuinfo_field", "cpu_flags", "portable_pins", "pin_instruction_set", "pins_label",
           "kernels_in_effect", "instruction_set_pinned"]
