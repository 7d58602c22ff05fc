"""`peftkit` re-executes itself on jemalloc when the machine has it, and leaves the user's environment as it was.

Each check runs in a fresh interpreter: the relaunch replaces the process it runs in.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from peftkit.errors import PeftkitError
from peftkit.launch import ALLOCATOR_ENV, RELAUNCHED_ENV, active_allocator, preferred_allocator_library

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc/self/maps: Linux")
needs_jemalloc = pytest.mark.skipif(ctypes.util.find_library("jemalloc") is None,
                                    reason="jemalloc not installed (apt-get install libjemalloc2; .ci/run does)")

# What a relaunched (or not) process sees: its malloc, and the variables its own children would inherit.
PROBE = """
import json, os
from peftkit.launch import active_allocator, relaunch_with_preferred_allocator
relaunch_with_preferred_allocator()
print("PROBE " + json.dumps({"allocator": active_allocator(),
      "env": {k: os.environ.get(k) for k in ("LD_PRELOAD", "MALLOC_CONF", "_PEFTKIT_RELAUNCHED")}}))
"""


def _probe(extra_env: dict[str, str | None], code: str = PROBE) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", RELAUNCHED_ENV)}
    env.update({k: v for k, v in extra_env.items() if v is not None})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PROBE ")]
    assert len(lines) == 1, proc.stdout  # printed once: the relaunched process runs the code, the first one did not
    return json.loads(lines[0][len("PROBE "):])


def test_system_keeps_the_c_library_malloc(monkeypatch):
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    assert preferred_allocator_library() is None


def test_a_missing_library_path_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ALLOCATOR_ENV, str(tmp_path / "libnothere.so"))
    with pytest.raises(PeftkitError, match=f"{ALLOCATOR_ENV}=.*libnothere.so: no such file"):
        preferred_allocator_library()


@linux_only
def test_this_test_process_is_on_glibc():
    assert active_allocator() == "glibc"  # pytest itself is never relaunched


@linux_only
@needs_jemalloc
def test_auto_relaunches_on_jemalloc_and_restores_the_environment():
    seen = _probe({ALLOCATOR_ENV: None})
    assert seen["allocator"] == "jemalloc"
    # the children it starts (Chromium, say) inherit the user's environment, not the preload
    assert seen["env"] == {"LD_PRELOAD": None, "MALLOC_CONF": None, "_PEFTKIT_RELAUNCHED": None}


@linux_only
@needs_jemalloc
def test_the_users_own_malloc_conf_is_kept_and_given_back():
    seen = _probe({ALLOCATOR_ENV: "auto", "MALLOC_CONF": "narenas:2"})
    assert seen["allocator"] == "jemalloc"
    assert seen["env"]["MALLOC_CONF"] == "narenas:2"


@linux_only
@needs_jemalloc
def test_system_choice_does_not_relaunch():
    assert _probe({ALLOCATOR_ENV: "system"})["allocator"] == "glibc"


TRIM = """
import json, torch
from peftkit.launch import active_allocator, relaunch_with_preferred_allocator
relaunch_with_preferred_allocator()
from peftkit.train.allocator import return_freed_memory_in_place, trim_heap
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
assert active_allocator() == "jemalloc"
assert return_freed_memory_in_place() is False  # glibc's mallopt would change nothing on jemalloc
tensors = [torch.ones(256, 1024) for _ in range(256)]  # 1 MiB each
del tensors[::2]
before = rss()
assert trim_heap() is True
print("PROBE " + json.dumps({"freed_mib": before - rss()}))
"""


@linux_only
@needs_jemalloc
def test_trim_heap_purges_jemalloc_arenas():
    # decay off: only the purge can give the freed pages back
    seen = _probe({ALLOCATOR_ENV: "auto", "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}, TRIM)
    assert seen["freed_mib"] > 100, seen  # 128 MiB of freed 1 MiB tensors went back to the OS


KEEP = """
import ctypes, json
from peftkit.launch import relaunch_with_preferred_allocator
relaunch_with_preferred_allocator()
from peftkit.train.allocator import _jemalloc_mallctl, keep_freed_memory_for_reuse
mallctl = _jemalloc_mallctl()
def decay(name):
    value, size = ctypes.c_ssize_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
    assert mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0, name
    return value.value
names = ["arena.0.dirty_decay_ms", "arena.0.muzzy_decay_ms", "arenas.dirty_decay_ms", "arenas.muzzy_decay_ms"]
before = [decay(n) for n in names]
applied = keep_freed_memory_for_reuse()
print("PROBE " + json.dumps({"applied": applied, "before": before, "after": [decay(n) for n in names]}))
"""


@linux_only
@needs_jemalloc
def test_keep_freed_memory_turns_jemalloc_decay_off():
    seen = _probe({ALLOCATOR_ENV: "auto"}, KEEP)
    assert seen["applied"] is True
    assert seen["before"][0] >= 0 and seen["before"][2] >= 0  # jemalloc's decay was on (10 s by default)
    assert seen["after"] == [-1, -1, -1, -1]


def test_keep_freed_memory_is_a_no_op_off_jemalloc():
    from peftkit.train.allocator import keep_freed_memory_for_reuse

    assert keep_freed_memory_for_reuse() is False  # pytest runs on glibc: nothing to turn off


@linux_only
@needs_jemalloc
def test_peftkit_train_runs_on_jemalloc_and_says_so(tiny_llama_dir, runs_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", RELAUNCHED_ENV, ALLOCATOR_ENV)}
    cmd = [sys.executable, "-m", "peftkit.cli", "train", "chatterbot-sft"]
    for field in (f"model.name={tiny_llama_dir}", "data.size=40", "train.max_steps=1", "train.batch_size=4",
                  f"output.runs_dir={runs_dir}", "output.mlflow=false", "output.run_id=je"):
        cmd += ["--set", field]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs_dir / "je"
    assert "memory: jemalloc allocator" in (run / "train.log").read_text()
    assert "glibc mmap threshold" not in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["train"]["allocator"] == "jemalloc"


def test_a_bad_allocator_choice_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, ALLOCATOR_ENV: str(tmp_path / "libnothere.so")}
    proc = subprocess.run([sys.executable, "-c", "from peftkit.launch import main; main()", "models"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {ALLOCATOR_ENV}=") and "no such file" in proc.stderr


@needs_jemalloc
def test_calling_the_cli_in_process_never_re_executes_it(monkeypatch, capsys):
    # CI once re-ran pytest itself: a test called cli.main() and the relaunch exec'd `python -m pytest`
    def no_exec(*args):
        raise AssertionError(f"os.execve{args[:2]} from inside a running program")

    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.setattr(sys, "argv", ["peftkit", "models"])
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    from peftkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert "smollm2-135m" in capsys.readouterr().out
