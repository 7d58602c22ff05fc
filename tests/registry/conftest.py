"""Registry fixtures: one tiny trained and evaluated run, a key pair, and a registry holding it (each test
tampers with its own copy of the registry folder and MLflow store, so the expensive parts run once)."""

from __future__ import annotations

import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

LOCAL = ("127.0.0.1", "::1", "localhost")


@contextmanager
def no_network(attempts: list):
    """Refuse every socket connection to anything but the loopback address, recording each attempt."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in LOCAL and self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network blocked in this test: {address}")
        return real_connect(self, address)

    socket.socket.connect = guarded
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect


def tiny_overrides(model_dir: Path, runs_dir: Path, run_id: str) -> list[str]:
    return [f"model.name={model_dir}", "method={kind: lora, r: 4}", "train.max_steps=2", "data.size=24",
            "eval.max_new_tokens=8", "eval.max_examples=4", "eval.batch_size=2", f"output.runs_dir={runs_dir}",
            f"output.run_id={run_id}", "output.mlflow=false", "eval.general.enabled=false", "train.lr=5e-2",
            "train.threads=1"]


def as_if_evaluation_passed(run: Path) -> None:
    """A tiny random model never earns a 'yes' verdict; give its run the sections eval writes when every
    gate passes, so promotion itself is exercised (the refusal above uses the real evaluation)."""
    from peftkit.rundir import update_metrics

    update_metrics(run, verdict={"answer": "yes", "flags": [], "intervals": [], "warnings": [], "try": None},
                   forgetting={"passed": True, "checks": [], "deltas": {}},
                   merge={"passed": True, "max_abs_diff": 1e-5, "atol": 1e-3})


@pytest.fixture(scope="session")
def passing_run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny classifier trained on words that decide the label, evaluated for real: verdict yes, no flags,
    forgetting not applicable to a classifier (passed), so every gate promotion checks has passed."""
    import json

    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    folder = tmp_path_factory.mktemp("passing")
    rows = [{"text": f"{word} service, order {i}", "label": label}
            for i in range(40) for word, label in (("excellent", "pos"), ("terrible", "neg"))]
    (folder / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"name": "passing", "model": {"name": str(tiny_bert_dir)},
              "data": {"dataset": str(folder / "reviews.jsonl"), "task": "classification",
                       "split": {"val": 0.1, "test": 0.25}},
              "train": {"max_steps": 30, "lr": 5e-3, "threads": 1},
              "output": {"runs_dir": str(folder / "runs"), "run_id": "passing", "mlflow": False}}
    run = train(recipe, console=Console(quiet=True)).run_dir
    evaluate(run, console=Console(quiet=True), gate=False, report=False)
    return run


@pytest.fixture(scope="session")
def network_attempts() -> list:
    return []


@pytest.fixture(scope="session")
def tiny_run(tiny_llama_dir, tmp_path_factory, network_attempts) -> Path:
    """A tiny LoRA run, trained and evaluated with the network blocked."""
    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    runs_dir = tmp_path_factory.mktemp("registry-runs")
    with no_network(network_attempts):
        run = train("quickstart", tiny_overrides(tiny_llama_dir, runs_dir, "tiny"), console=Console(quiet=True)).run_dir
        evaluate(run, console=Console(quiet=True), gate=False, report=False)
    return run


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    from peftkit.registry.signing import generate_keys

    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def registered(tiny_run, keys, tmp_path_factory, network_attempts) -> Path:
    """A registry folder (plus its MLflow store beside it) holding tiny@v1, signed."""
    from peftkit.registry.mlflow_registry import Registry

    home = tmp_path_factory.mktemp("registry-home")
    with no_network(network_attempts):
        Registry(home / "registry").add(tiny_run, "tiny", key=keys[0], actor="tester")
    return home


@pytest.fixture
def registry(registered, tmp_path):
    """A private copy of the registered registry (folder + MLflow store) for one test to change."""
    from peftkit.registry.mlflow_registry import Registry

    home = tmp_path / "home"
    shutil.copytree(registered, home, symlinks=True)
    return Registry(home / "registry")
