"""Freed tensor memory goes back to the OS once the mmap threshold is fixed.

Each test body runs in a fresh interpreter: in a long pytest process the heap already holds large
free blocks, and malloc serves new tensors from them whatever the mmap threshold says.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peftkit.train.allocator import return_freed_memory_in_place


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _in_fresh_process(name: str) -> None:
    code = (f"import importlib.util as u; s = u.spec_from_file_location('t', {str(Path(__file__))!r}); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); m.{name}()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_activation_sized_tensors_leave_resident_memory():
    _in_fresh_process("freed_activation_sized_tensors_leave_resident_memory")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim is Linux-only")
def test_trim_returns_freed_heap_blocks_below_the_threshold():
    _in_fresh_process("trim_returns_freed_heap_blocks_below_the_threshold")


def freed_activation_sized_tensors_leave_resident_memory():
    assert return_freed_memory_in_place() is True
    tensor = torch.ones(1024, 1024)
    del tensor  # a freed 4 MiB block: glibc's own rule would now raise its threshold past 4 MiB
    tensors = [torch.ones(1024, 1024) for _ in range(64)]  # 64 tensors of 4 MiB, written (resident)
    peak = _rss_mib()
    del tensors[::2]  # free every other one: holes between live blocks, as activations leave in backward
    after = _rss_mib()
    assert peak - after > 100, (peak, after)  # the 128 MiB freed left resident memory


def trim_returns_freed_heap_blocks_below_the_threshold():
    from peftkit.train.allocator import TrimHeapCallback, trim_heap

    assert return_freed_memory_in_place() is True
    tensors = [torch.ones(256, 1024) for _ in range(256)]  # 1 MiB each: below the 2 MiB threshold, on the heap
    del tensors[::2]  # 128 MiB of holes between live blocks
    before = _rss_mib()
    TrimHeapCallback().on_step_end(None, None, None)  # what the trainer calls after each step
    after = _rss_mib()
    assert before - after > 100, (before, after)
    assert trim_heap() in (True, False)
    del tensors


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_train_fixes_the_threshold_for_causal_lm_runs_only(tiny_llama_dir, tiny_bert_dir, runs_dir):
    from peftkit.train import train

    common = ["train.max_steps=1", "train.batch_size=4", f"output.runs_dir={runs_dir}", "output.mlflow=false"]
    sft = train("chatterbot-sft", overrides=[f"model.name={tiny_llama_dir}", "data.size=40", "output.run_id=s", *common])
    cls = train("bbc-news-lora", overrides=[f"model.name={tiny_bert_dir}", "data.size=40", "output.run_id=c", *common])
    note = "freed tensors go back to the OS"
    assert note in (sft.run_dir / "train.log").read_text()
    assert note not in (cls.run_dir / "train.log").read_text()
