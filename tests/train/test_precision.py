"""Precision detection: CPU flags, CUDA, and the recipe's forced choices."""

from pathlib import Path

from peftkit.train.precision import cpu_flags, detect_precision, resolve_precision


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_cpu_with_bf16_instructions_trains_in_bf16():
    assert detect_precision("cpu", {"avx2", "avx512_bf16"}).name == "bf16"
    assert detect_precision("cpu", {"avx2", "amx_bf16"}).name == "bf16"
    avx2_only = detect_precision("cpu", {"avx", "avx2", "fma"})
    assert avx2_only.name == "fp32" and "emulated" in avx2_only.reason


def test_this_machine_is_detected_not_assumed():
    flags = cpu_flags(Path("/proc/cpuinfo"))
    expected = "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"
    assert detect_precision("cpu").name == expected


def test_recipe_can_force_a_path():
    forced = resolve_precision("bf16", "cpu", {"avx2"})
    assert forced.name == "bf16" and "WARNING" in forced.reason
    assert resolve_precision("fp32", "cpu", {"amx_bf16"}).name == "fp32"
    assert resolve_precision("auto", "cpu", {"amx_bf16"}).reason.startswith("auto: ")
