"""trainer.provenance: sweep.json names the CPU's model, SIMD extensions and torch's CPU kernel
level, because they decide the last digits of a CPU result (docs/results.md, "Bit for bit")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainer.provenance import SIMD_FLAGS, cpu_description, hardware

CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu vme sse sse2 avx avx2 fma bmi2
processor	: 1
model name	: AMD EPYC 7B13
flags		: fpu vme sse sse2 avx avx2 fma bmi2
"""


def test_the_cpu_is_read_from_cpuinfo_with_only_the_simd_flags():
    assert cpu_description(CPUINFO) == {"cpu_model": "AMD EPYC 7B13", "cpu_simd": ["avx", "avx2", "fma"]}


def test_a_system_without_cpuinfo_names_no_flags():
    found = cpu_description("")
    assert found["cpu_simd"] is None  # unknown, not "none"


def test_hardware_names_this_machines_cpu_and_torchs_kernel_level():
    found = hardware()
    assert found["torch_cpu_capability"]  # AVX512, AVX2, DEFAULT, ... on any machine with torch
    if os.path.exists("/proc/cpuinfo"):
        assert found["cpu_model"] and set(found["cpu_simd"]) <= set(SIMD_FLAGS)


CHILD = "import json; from trainer.provenance import hardware; print(json.dumps(hardware()))"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="x86 kernel levels of a Linux torch build")
def test_a_lowered_kernel_level_is_what_gets_recorded():
    """ATEN_CPU_CAPABILITY lowers the kernels torch runs (as a CPU without AVX-512 would): the record
    is what ran, not what the CPU could do."""
    here = hardware()["torch_cpu_capability"]
    if here not in ("AVX512", "AVX2"):
        pytest.skip(f"torch runs {here} kernels here: nothing to lower to")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert json.loads(out.stdout)["torch_cpu_capability"] == "DEFAULT"
