"""bcfeat.runner.instruction_set: which machines are capped at AVX2, and that the cap changes the kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bcfeat.runner.instruction_set import PORTABLE_PINS, cpu_flags, pin_instruction_set, portable_pins


def test_only_x86_64_cpus_with_avx2_and_fma_are_capped():
    assert portable_pins("x86_64", frozenset({"sse2", "avx", "avx2", "fma"})) == PORTABLE_PINS
    assert portable_pins("AMD64", None if cpu_flags() is None else frozenset({"avx2", "fma"})) == PORTABLE_PINS
    assert portable_pins("x86_64", frozenset({"sse2", "avx", "fma"})) == {}  # no AVX2: nothing to cap at
    assert portable_pins("arm64", frozenset({"avx2", "fma"})) == {} and portable_pins("aarch64") == {}


def test_pins_fill_only_what_the_user_left_unset():
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "PATH": "/bin"}
    assert pin_instruction_set(env, PORTABLE_PINS) == {**PORTABLE_PINS, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["PATH"] == "/bin"
    assert pin_instruction_set(env, {}) == {}


_PROBE = ("import hashlib, numpy as np, torch; torch.manual_seed(0); torch.set_num_threads(1); "
          "x = torch.randn(2, 3, 40, 40); c = torch.nn.Conv2d(3, 8, 5); "
          "a = np.random.default_rng(0).random((64, 64)); "
          "print(torch.backends.cpu.get_cpu_capability(), hashlib.sha1(c(x).detach().numpy().tobytes()).hexdigest(), "
          "hashlib.sha1((a @ a).tobytes()).hexdigest())")


def _probe(env_pins: dict[str, str]) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_PINS} | env_pins
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_a_process_started_with_the_pins_dispatches_to_avx2_kernels():
    if not portable_pins():
        pytest.skip("not an x86-64 CPU with AVX2")
    capability, conv, matmul = _probe(PORTABLE_PINS)
    assert capability == "AVX2"
    native = _probe({})
    if native[0] == "AVX2":
        assert native == [capability, conv, matmul]  # an AVX2 machine: the cap changes nothing
    # on a CPU with AVX-512 the native kernels may give other bits; the capped ones are AVX2's everywhere
