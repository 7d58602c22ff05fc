"""`peftkit serve` end to end: a real server on 127.0.0.1 (random port) over tiny trained runs, driven
with the official `openai` client and plain HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from rich.console import Console

from peftkit.serve.server import ServeOptions, build_server


def _overrides(model_dir, runs_dir, run_id: str, method: str, lr: str) -> list[str]:
    return [f"model.name={model_dir}", f"method={method}", "train.max_steps=2", "data.size=24", "eval.max_new_tokens=8",
            "eval.max_examples=4", "eval.batch_size=1", f"output.runs_dir={runs_dir}", f"output.run_id={run_id}",
            "output.mlflow=false", "eval.general.enabled=false", f"train.lr={lr}"]


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs (different learning rates: different answers) and a DoRA run, each evaluated."""
    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    runs_dir = tmp_path_factory.mktemp("serve-runs")
    out = {}
    for name, method, lr in (("a", "{kind: lora, r: 4}", "5e-2"), ("b", "{kind: lora, r: 8}", "1e-1"),
                             ("d", "{kind: lora, r: 4, dora: true}", "5e-2")):
        run = train("quickstart", _overrides(tiny_llama_dir, runs_dir, name, method, lr), console=Console(quiet=True)).run_dir
        evaluate(run, console=Console(quiet=True), gate=False, report=False)
        out[name] = run
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A built server listening in a thread; `url` is its /v1 base."""

    def __init__(self, options: ServeOptions):
        import uvicorn

        options.port = _free_port()
        self.server = build_server(options, console=Console(quiet=True))
        self.engine = self.server.engine
        config = uvicorn.Config(self.server.app, host="127.0.0.1", port=options.port, log_level="error")
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        self.root = f"http://127.0.0.1:{options.port}"
        self.url = self.root + "/v1"
        deadline = time.time() + 30
        while not self.uvicorn.started and time.time() < deadline:
            time.sleep(0.05)

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def close(self):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)
        self.engine.stop()


@pytest.fixture(scope="module")
def server(runs, tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter-root")
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={k: str(v) for k, v in runs.items()},
                                   adapter_root=[str(root)], max_adapters=4, context=256, max_batch=8))
    running.adapter_root = root
    yield running
    running.close()


def _ask(client, model, content, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_models_lists_the_base_and_each_adapter_with_its_parent(server, tiny_llama_dir):
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {str(tiny_llama_dir), "a", "b", "d"}
    assert models["a"].model_extra["parent"] == str(tiny_llama_dir)
    assert models[str(tiny_llama_dir)].model_extra["parent"] is None


def test_greedy_answers_equal_the_evaluated_tuned_answers(server, runs):
    """What was tested is what is served: the run's system prompt and decoding, the same answers."""
    from peftkit.data.prepare import load_prepared, read_split

    run = runs["a"]
    predictions = [json.loads(l) for l in (run / "eval_predictions.jsonl").read_text().splitlines()]
    assert load_prepared(run / "data").instruction  # the extraction run has a system prompt the server adds
    client = server.client()
    equal = 0
    for row in predictions:
        answer = _ask(client, "a", row["input"]).choices[0].message.content
        equal += answer == row["tuned"]
    assert equal == len(predictions) == len(read_split(run / "data", "test")[:4])


def test_response_usage_model_and_streaming_agree(server):
    client = server.client()
    whole = _ask(client, "b", "Book 2 x 40HC Shanghai to Rotterdam", max_tokens=6)
    assert whole.model == "b" and whole.object == "chat.completion"
    assert whole.usage.completion_tokens <= 6 and whole.usage.prompt_tokens > 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(_ask(client, "b", "Book 2 x 40HC Shanghai to Rotterdam", max_tokens=6, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    assert {c.model for c in chunks} == {"b"}
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_completions_and_stop_strings(server):
    client = server.client()
    full = client.completions.create(model="a", prompt="Shipping booking:", max_tokens=8, temperature=0)
    text = full.choices[0].text
    assert full.model == "a" and full.usage.completion_tokens >= 1
    if len(text) > 3:  # a stop string cuts the answer just before it
        stop = text[2:4]
        cut = client.completions.create(model="a", prompt="Shipping booking:", max_tokens=8, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_across_adapters_equal_each_alone(server):
    client = server.client()
    prompts = [f"Please book {n} x 20GP from Busan to Hamburg" for n in range(1, 5)]
    models = ["a", "b", "d", server.server.options.base]
    alone = {(m, p): _ask(client, m, p, max_tokens=8).choices[0].message.content for m in models for p in prompts}
    with ThreadPoolExecutor(16) as pool:
        together = dict(zip(alone, pool.map(lambda mp: _ask(client, mp[0], mp[1], max_tokens=8).choices[0].message.content,
                                            alone)))
    assert together == alone
    assert len(set(alone.values())) > 1  # the adapters really answer differently


def test_sampling_is_seeded(server):
    client = server.client()
    kw = dict(temperature=1.0, top_p=0.9, max_tokens=8, seed=7)
    first = _ask(client, "a", "hello", **kw).choices[0].message.content
    assert _ask(client, "a", "hello", **kw).choices[0].message.content == first


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(model="nope"), 404, "model"),
    (dict(model="a", temperature=5), 400, "temperature"),
    (dict(model="a", n=2), 400, "n"),
    (dict(model="a", max_tokens=100_000), 400, "max_tokens"),
    (dict(model="a", messages=[{"role": "wizard", "content": "x"}]), 400, "messages.0.role"),
    (dict(model="a", unknown_field=1), 400, "unknown_field"),
])
def test_bad_requests_get_the_openai_error_envelope(server, kwargs, status, param):
    body = {"messages": [{"role": "user", "content": "hi"}], **kwargs}
    r = httpx.post(server.url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]


def test_a_prompt_over_the_context_is_413(server):
    r = httpx.post(server.url + "/chat/completions", json={"model": "a", "messages": [
        {"role": "user", "content": "word " * 400}]}, timeout=30)
    assert r.status_code == 413 and "context" in r.json()["error"]["message"]


def test_a_disconnected_stream_frees_its_slot(server):
    with httpx.stream("POST", server.url + "/chat/completions", timeout=30, json={
            "model": "a", "stream": True, "max_tokens": 200, "messages": [{"role": "user", "content": "go"}]}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "content" in line:
                break
    deadline = time.time() + 10
    while server.engine.running and time.time() < deadline:
        time.sleep(0.05)
    assert not server.engine.running


def test_metrics_and_health(server):
    _ask(server.client(), "a", "hi", max_tokens=2)
    text = httpx.get(server.root + "/metrics").text
    assert 'peftkit_requests_total{model="a",status="200"}' in text
    assert "peftkit_time_to_first_token_seconds_bucket" in text and "peftkit_adapters_resident 3.0" in text
    assert httpx.get(server.root + "/health").json()["status"] == "ok"


def test_admin_loads_an_adapter_from_the_root_and_unloads_it(server, runs):
    import shutil

    shutil.copytree(runs["a"] / "adapter", server.adapter_root / "copied")
    r = httpx.post(server.root + "/admin/adapters", json={"name": "copied", "source": str(server.adapter_root / "copied")})
    assert r.status_code == 200, r.text
    client = server.client()
    assert "copied" in {m.id for m in client.models.list().data}
    # the same weights answer as "a" does (no system prompt: a bare adapter folder has no run settings)
    assert (client.completions.create(model="copied", prompt="x y", max_tokens=4, temperature=0).choices[0].text
            == client.completions.create(model="a", prompt="x y", max_tokens=4, temperature=0).choices[0].text)
    assert httpx.delete(server.root + "/admin/adapters/copied").status_code == 200
    assert "copied" not in {m.id for m in client.models.list().data}
    assert not any(s.name == "copied" for s in server.engine.cache.listed())
    # still under the adapter root: the next request for it finds, checks and loads it again
    assert client.completions.create(model="copied", prompt="x", max_tokens=2, temperature=0).model == "copied"
    assert httpx.delete(server.root + "/admin/adapters/nothing-here").status_code == 404


def test_admin_refuses_sources_outside_the_root(server, runs):
    r = httpx.post(server.root + "/admin/adapters", json={"name": "outside", "source": str(runs["a"])})
    assert r.status_code == 400 and "outside" in r.json()["error"]["message"]
    assert "outside" not in {m.id for m in server.client().models.list().data}


# ---------------------------------------------------------------------- tenants
@pytest.fixture(scope="module")
def keyed(runs, tiny_llama_dir, tmp_path_factory):
    from peftkit.serve.auth import new_key

    folder = tmp_path_factory.mktemp("keys")
    key_a, entry_a = new_key("acme", ["a"])
    key_b, entry_b = new_key("beta", ["b", str(tiny_llama_dir)])
    key_admin, entry_admin = new_key("ops", None, admin=True)
    keys = folder / "keys.yaml"
    keys.write_text("keys:\n" + entry_a + entry_b + entry_admin)
    keys.chmod(0o600)
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={"a": str(runs["a"]), "b": str(runs["b"])},
                                   keys=str(keys), context=256))
    running.keys = {"a": key_a, "b": key_b, "admin": key_admin}
    yield running
    running.close()


def test_keys_are_required_and_tenants_see_only_their_adapters(keyed, tiny_llama_dir):
    with pytest.raises(openai.AuthenticationError):
        keyed.client("pk-wrong").models.list()
    assert httpx.get(keyed.url + "/models").status_code == 401
    a, b = keyed.client(keyed.keys["a"]), keyed.client(keyed.keys["b"])
    assert {m.id for m in a.models.list().data} == {"a"}
    assert {m.id for m in b.models.list().data} == {"b", str(tiny_llama_dir)}
    with pytest.raises(openai.NotFoundError) as caught:  # another tenant's adapter: as if it did not exist
        _ask(a, "b", "hi", max_tokens=2)
    assert caught.value.body["message"] == "The model 'b' does not exist"
    assert _ask(a, "a", "hi", max_tokens=2).model == "a"
    r = httpx.post(keyed.root + "/admin/adapters", json={"name": "x", "source": "/tmp"},
                   headers={"Authorization": f"Bearer {keyed.keys['a']}"})
    assert r.status_code == 404  # a tenant's key does not reach /admin
    assert httpx.get(keyed.root + "/metrics", headers={"Authorization": f"Bearer {keyed.keys['admin']}"}).status_code == 200


# ---------------------------------------------------------------------- load
def test_a_full_queue_answers_429_with_retry_after(runs, tiny_llama_dir):
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={"a": str(runs["a"])}, max_batch=1, max_queue=1,
                                   context=256))
    try:
        def call(_):
            return httpx.post(running.url + "/chat/completions", timeout=60, json={
                "model": "a", "max_tokens": 60, "messages": [{"role": "user", "content": "hello"}]})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(call, range(6)))
        codes = [r.status_code for r in answers]
        assert 200 in codes and 429 in codes, codes
        limited = next(r for r in answers if r.status_code == 429)
        assert limited.headers["retry-after"] and limited.json()["error"]["code"] == "queue_full"
    finally:
        running.close()


def test_draining_finishes_in_flight_requests_and_refuses_new_ones(runs, tiny_llama_dir):
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={"a": str(runs["a"])}, context=256))
    try:
        result = {}

        def long_request():
            result["r"] = httpx.post(running.url + "/completions", timeout=60, json={
                "model": "a", "prompt": "x", "max_tokens": 120, "temperature": 1.0, "seed": 1})

        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.time() + 10
        while not running.engine.running and time.time() < deadline:
            time.sleep(0.02)
        running.engine.draining = True  # what SIGTERM sets (serve.server.run_server)
        refused = httpx.post(running.url + "/completions", json={"model": "a", "prompt": "x", "max_tokens": 2})
        t.join(timeout=60)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert result["r"].status_code == 200 and result["r"].json()["usage"]["completion_tokens"] > 0
    finally:
        running.close()


# ---------------------------------------------------------------------- bad adapters, while serving
def _bad_adapters(root: Path, good: Path, tmp: Path) -> dict[str, str]:
    """Adapter folders under `root`, each broken one way; returns name -> words its refusal must contain."""
    import shutil

    from safetensors.torch import load_file, save_file

    def copy(name):
        shutil.copytree(good, root / name)
        return root / name

    folder = copy("pickled")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"not unpickled")
    folder = copy("truncated")
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    folder = copy("misshapen")
    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:, :-8].contiguous()
    save_file(tensors, folder / "adapter_model.safetensors")
    folder = copy("otherbase")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/another-model"}))
    folder = copy("highrank")
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 512}))
    folder = copy("symlinked")
    outside = tmp / "outside.safetensors"
    shutil.move(folder / "adapter_model.safetensors", outside)
    (folder / "adapter_model.safetensors").symlink_to(outside)
    return {"pickled": "safetensors", "truncated": "adapter_model.safetensors", "misshapen": key,
            "otherbase": "org/another-model", "highrank": "512", "symlinked": "outside"}


def test_bad_adapters_are_refused_by_name_and_the_rest_keep_serving(server, runs, tmp_path):
    cases = _bad_adapters(server.adapter_root, runs["a"] / "adapter", tmp_path)
    client = server.client()
    for name, words in cases.items():
        r = httpx.post(server.url + "/chat/completions", timeout=30,
                       json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400, (name, r.text)
        message = r.json()["error"]["message"]
        assert message.startswith(f"adapter '{name}':") and words in message, message
        assert "not unpickled" not in message  # no error echoes a file's contents
    for name in ("../a", "..", "a/b"):  # path-like names are no adapter names
        assert httpx.post(server.url + "/completions", json={"model": name, "prompt": "x"}).status_code in (400, 404)
    listed = {m.id for m in client.models.list().data}
    assert not listed & set(cases)
    assert _ask(client, "a", "still serving", max_tokens=2).model == "a"


# ---------------------------------------------------------------------- classification
def test_classification_adapters_answer_on_v1_classify(tiny_bert_dir, tmp_path):
    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    run = train("bbc-news-lora", [f"model.name={tiny_bert_dir}", "data.size=60", "train.max_steps=2",
                                  f"output.runs_dir={tmp_path}", "output.run_id=topics", "output.mlflow=false"],
                console=Console(quiet=True)).run_dir
    evaluate(run, console=Console(quiet=True), gate=False, report=False)
    from peftkit.data.prepare import load_prepared, read_split

    labels = load_prepared(run / "data").labels
    rows = read_split(run / "data", "test")[:4]
    running = Running(ServeOptions(base=str(tiny_bert_dir), adapters={"topics": str(run)}, context=128))
    try:
        r = httpx.post(running.url + "/classify", json={"model": "topics", "input": [row["text"] for row in rows]},
                       timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(len(rows)))
        for d in data:
            assert set(d["probabilities"]) == set(labels) and abs(sum(d["probabilities"].values()) - 1) < 1e-5
            assert d["label"] == max(d["probabilities"], key=d["probabilities"].get)
        # what eval predicted for the same rows
        predicted = [json.loads(l)["tuned"] for l in (run / "eval_predictions.jsonl").read_text().splitlines()][:4]
        assert [d["label"] for d in data] == predicted
        base = httpx.post(running.url + "/classify", json={"model": str(tiny_bert_dir), "input": ["x"]})
        assert base.status_code == 400 and "untrained" in base.json()["error"]["message"]
        chat = httpx.post(running.url + "/chat/completions", json={"model": "topics", "messages": [
            {"role": "user", "content": "x"}]})
        assert chat.status_code == 400 and "/v1/classify" in chat.json()["error"]["message"]
    finally:
        running.close()


# ---------------------------------------------------------------------- the command, and SIGTERM
def test_sigterm_finishes_the_stream_in_flight_and_exits(runs, tiny_llama_dir):
    import signal
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "peftkit.cli", "serve", "--base", str(tiny_llama_dir),
                             "--adapter", f"a={runs['a']}", "--port", str(port), "--context", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(root + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        lines = []
        with httpx.stream("POST", root + "/v1/completions", timeout=60, json={
                "model": "a", "prompt": "x", "max_tokens": 150, "temperature": 1.0, "seed": 3, "stream": True}) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 2:
                    proc.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]" and any('"finish_reason": "length"' in l for l in lines)
        # uvicorn re-raises the captured SIGTERM once it has shut down, so the status is the signal's
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        proc.kill()
        output = proc.stdout.read()
    assert "listens on 127.0.0.1 only" in " ".join(output.split())  # rich wraps lines in a pipe


# ---------------------------------------------------------------------- every kind peftkit trains
KINDS = {"ia3": "{kind: ia3}", "loha": "{kind: loha, r: 4}", "lokr": "{kind: lokr, r: 4}",
         "prompt": "{kind: prompt, num_virtual_tokens: 4}", "prefix": "{kind: prefix, num_virtual_tokens: 4}",
         "bottleneck": "{kind: bottleneck}", "full": "{kind: full}", "qlora": "{kind: qlora, r: 4}"}


def test_every_kind_is_served_with_the_answers_eval_recorded(tiny_llama_dir, tmp_path):
    """One server, one adapter of every other kind at once; each answers as `peftkit eval` recorded."""
    from peftkit.evaluate.run import evaluate
    from peftkit.train.run import train

    runs = {}
    for name, method in KINDS.items():
        run = train("quickstart", _overrides(tiny_llama_dir, tmp_path, name, method, "5e-2"),
                    console=Console(quiet=True)).run_dir
        evaluate(run, console=Console(quiet=True), gate=False, report=False)
        runs[name] = run
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={k: str(v) for k, v in runs.items()},
                                   max_adapters=len(runs), context=256))
    try:
        assert not running.server.refused
        client = running.client()

        def answers(name):
            rows = [json.loads(l) for l in (runs[name] / "eval_predictions.jsonl").read_text().splitlines()][:2]
            return [(_ask(client, name, r["input"]).choices[0].message.content, r["tuned"]) for r in rows]

        with ThreadPoolExecutor(len(runs)) as pool:  # all kinds in flight together
            got = dict(zip(runs, pool.map(answers, runs)))
        for name, pairs in got.items():
            assert all(served == evaluated for served, evaluated in pairs), (name, pairs)
    finally:
        running.close()


def test_a_configuration_that_does_not_fit_is_refused_before_loading(tiny_llama_dir):
    from peftkit.serve.server import ServeError

    with pytest.raises(ServeError, match="does not fit; nothing was loaded"):
        build_server(ServeOptions(base=str(tiny_llama_dir), context=1 << 22, max_batch=64), console=Console(quiet=True))


def test_keygen_prints_a_key_once_and_the_entry(tmp_path):
    from typer.testing import CliRunner

    from peftkit.cli import app
    from peftkit.serve.auth import load_keys

    result = CliRunner().invoke(app, ["serve", "keygen", "--tenant", "acme", "--adapters", "extract,chat"])
    assert result.exit_code == 0, result.output
    key = next(l.strip() for l in result.output.splitlines() if l.strip().startswith("pk-"))
    entry = result.output[result.output.index("  - tenant"):]
    (tmp_path / "keys.yaml").write_text("keys:\n" + entry)
    who = load_keys(tmp_path / "keys.yaml").authenticate(key)
    assert who.tenant == "acme" and who.may_use("chat") and not who.may_use("other")
    assert key not in (tmp_path / "keys.yaml").read_text()


def test_least_recently_used_adapter_is_unloaded_for_the_next(runs, tiny_llama_dir):
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={"a": str(runs["a"]), "b": str(runs["b"])},
                                   max_adapters=1, context=256))
    try:
        client, cache = running.client(), running.engine.cache
        first = _ask(client, "a", "hello", max_tokens=6).choices[0].message.content
        assert list(cache.resident) == ["a"]
        _ask(client, "b", "hello", max_tokens=6)
        assert list(cache.resident) == ["b"] and cache.served["a"].loaded_at is None
        assert _ask(client, "a", "hello", max_tokens=6).choices[0].message.content == first  # loaded again, same answer
        assert {m.id for m in client.models.list().data} >= {"a", "b"}  # unloaded is still served
    finally:
        running.close()


def test_a_request_over_the_timeout_is_stopped_with_504(runs, tiny_llama_dir):
    running = Running(ServeOptions(base=str(tiny_llama_dir), adapters={"a": str(runs["a"])}, context=256, timeout=0.3))
    try:
        r = httpx.post(running.url + "/completions", timeout=60, json={
            "model": "a", "prompt": "x", "max_tokens": 200, "temperature": 1.0, "seed": 1})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert not running.engine.running
    finally:
        running.close()
