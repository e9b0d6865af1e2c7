"""bcfeat.instruction_set: which machines are capped at AVX2, and that the cap changes the kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bcfeat.instruction_set import PORTABLE_PINS, cpu_flags, pin_instruction_set, portable_pins


# /proc/cpuinfo's flags of a Haswell (Intel's first x86-64-v3 CPU), in part
HASWELL = frozenset("fpu sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma bmi1 bmi2 f16c abm movbe xsave".split())


def test_only_x86_64_v3_cpus_are_capped():
    assert portable_pins("x86_64", HASWELL) == PORTABLE_PINS
    assert portable_pins("x86_64", HASWELL | {"avx512f", "avx512bw"}) == PORTABLE_PINS
    assert portable_pins("AMD64", None if cpu_flags() is None else HASWELL) == PORTABLE_PINS
    assert portable_pins("x86_64", HASWELL - {"avx2"}) == {}  # no AVX2: nothing to cap at
    assert portable_pins("x86_64", HASWELL - {"movbe"}) == {}  # Numba's Haswell code would not run there
    assert portable_pins("arm64", HASWELL) == {} and portable_pins("aarch64") == {}


def test_pins_fill_only_what_the_user_left_unset():
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "PATH": "/bin"}
    assert pin_instruction_set(env, PORTABLE_PINS) == {**PORTABLE_PINS, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["PATH"] == "/bin"
    assert pin_instruction_set(env, {}) == {}


def test_numpys_cap_is_left_out_where_the_user_enables_features_instead():
    # NumPy will not start with both NPY_ENABLE_CPU_FEATURES and NPY_DISABLE_CPU_FEATURES set
    env = {"NPY_ENABLE_CPU_FEATURES": "X86_V3"}
    pins = pin_instruction_set(env, PORTABLE_PINS)
    assert "NPY_DISABLE_CPU_FEATURES" not in env and "NPY_DISABLE_CPU_FEATURES" not in pins
    assert pins["ATEN_CPU_CAPABILITY"] == "avx2"
    env = {"NPY_ENABLE_CPU_FEATURES": "X86_V3", "NPY_DISABLE_CPU_FEATURES": "X86_V4"}  # the user's own choice
    assert pin_instruction_set(env, PORTABLE_PINS)["NPY_DISABLE_CPU_FEATURES"] == "X86_V4"


_PROBE = ("import hashlib, numpy as np, torch; torch.manual_seed(0); torch.set_num_threads(1); "
          "from numpy._core._multiarray_umath import __cpu_features__ as npy; "
          "x = torch.randn(2, 3, 40, 40); c = torch.nn.Conv2d(3, 8, 5); "
          "a = np.random.default_rng(0).random((64, 64)); "
          "import numba; "
          "print(torch.backends.cpu.get_cpu_capability(), npy.get('X86_V4', False), numba.config.CPU_NAME, "
          "hashlib.sha1(c(x).detach().numpy().tobytes()).hexdigest(), "
          "hashlib.sha1((a @ a).tobytes()).hexdigest(), hashlib.sha1(np.exp(-30 * a).tobytes()).hexdigest())")


def _probe(env_pins: dict[str, str]) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_PINS} | env_pins
    return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_a_process_started_with_the_pins_dispatches_to_avx2_kernels():
    if not portable_pins():
        pytest.skip("not an x86-64 CPU with AVX2")
    capability, numpy_avx512, numba_cpu, *results = _probe(PORTABLE_PINS)
    assert capability == "AVX2" and numpy_avx512 == "False"  # PyTorch's and NumPy's own dispatch
    assert numba_cpu == "haswell"
    native = _probe({})
    if native[0] == "AVX2":
        assert native[:2] + native[3:] == [capability, numpy_avx512, *results]  # an AVX2 machine: the same kernels
    # on a CPU with AVX-512 the native kernels may give other bits; the capped ones are AVX2's everywhere


def test_the_cap_benchmark_compares_a_native_child_with_a_capped_one(monkeypatch, tmp_path):
    # benchmarks/bench_instruction_set_cap.py: its native side drops a cap the caller runs under (the
    # runner's, say), its capped side sets every pin, and it times a child's work on each in turn
    from benchmarks import bench_instruction_set_cap as bench

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    native, capped = bench.native_environment(), bench.capped_environment()
    assert not set(PORTABLE_PINS) & set(native) and native["PATH"]
    assert {name: capped[name] for name in PORTABLE_PINS} == PORTABLE_PINS
    child = ('import json, os; print("noise"); print(json.dumps({"seconds": 2.0 if "ATEN_CPU_CAPABILITY" in os.environ '
             'else 1.0, "capability": os.environ.get("NUMBA_CPU_NAME", "host")}))')
    result = bench.side_by_side("probe", child, 2, None)
    assert result["probe_native_seconds"] == [1.0, 1.0] and result["probe_capped_seconds"] == [2.0, 2.0]
    assert result["probe_capped_over_native"] == 2.0 and result["probe_capped_capability"] == "haswell"
    assert result["probe_native_capability"] == "host"
    with pytest.raises(SystemExit, match="exit 3"):
        bench.side_by_side("broken", "raise SystemExit(3)", 1, None)


def test_the_cap_benchmark_figures_say_what_the_cap_costs():
    from bcfeat.runner.provenance import instruction_set_cap_figures

    results = {"avx512f": False, "pairs": 3, "training_capped_over_native": 1.0, "training_ratio_min": 0.98,
               "training_ratio_max": 1.02, "measure_capped_over_native": 1.25, "measure_ratio_min": 1.1,
               "measure_ratio_max": 1.5}
    figures = instruction_set_cap_figures(results)
    assert figures["cpu"] == "with AVX2 alone" and figures["pairs"] == 3
    assert figures["training_percent"] == pytest.approx(0.0) and figures["training_percent_min"] == pytest.approx(-2.0)
    assert figures["measure_percent"] == pytest.approx(25.0) and figures["measure_percent_max"] == pytest.approx(50.0)
