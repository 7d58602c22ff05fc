"""Many LoRA adapters at the speed of one model? `peftkit serve` against every other way to serve them.

    .venv/bin/python benchmarks/serve_bench.py [--adapters 1,8,32] [--clients 1,8,32] [--seconds 60]
        [--configs a,b,c,d,e] [--threads 2] [--parity runs/quickstart-<ts>]

Makes the largest `--adapters` count of LoRA adapters for smollm2-135m (r=16, all-linear, seeded
non-zero B) as plain PEFT folders, then for every (adapters, clients) pair runs each configuration in
its own process (so peak RSS is its own), `--clients` threads sending /v1/completions requests with the
`openai` client (streamed), a ~200-token prompt and max_tokens 64, spread evenly over the adapters, for
`--seconds`:

  (a) peftkit serve, batched LoRA step (adapters stacked per layer, one gather + matmul per layer)
  (b) the same server with peft's `adapter_names` step (a loop over the batch's adapters per layer)
  (c) the same server, one adapter per batch (requests for different adapters never share a batch)
  (d) one merged model, no adapters (adapter 0 merged into the base): the upper bound
  (e) plain transformers + peft in one process: `set_adapter` then `generate` per request, one at a time

Prints output tokens/s, p50/p99 time to first token and latency, peak RSS, mean completion tokens
(the API has no ignore-eos, so answers may end early; tokens/s counts the tokens really produced), the
ratios (a)/(d), (a)/(c), (a)/(b), (a)/(e), and the memory per extra resident adapter (from the RSS of
(a) at the smallest and largest adapter counts) against its file size. `--parity RUN` also serves an
extraction run among the random adapters, under load from `--clients` clients on the others, and
compares its greedy answers and field accuracy with the ones `peftkit eval` recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIGS = {"a": "peftkit serve (batched LoRA step)", "b": "same server, peft adapter_names step",
           "c": "same server, one adapter per batch", "d": "one merged model, no adapters",
           "e": "transformers + peft generate per request"}
SENTENCE = ("The shipping team confirmed the booking of two forty-foot containers from Shanghai to Rotterdam, "
            "with the cargo ready on the twelfth of March and the carrier asked to hold space on the next vessel. ")


def prompt_text(tokenizer, tokens: int) -> str:
    """A prose prompt of about `tokens` tokens."""
    text = ""
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += SENTENCE
    return text


def make_adapters(base: str, count: int, folder: Path) -> dict[str, str]:
    """`count` r=16 all-linear LoRA adapters with seeded non-zero B, saved as PEFT folders."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peftkit.loading import load_causal_lm
    from peftkit.recipe import ModelSpec

    base_model = load_causal_lm(ModelSpec(name=base))
    model = get_peft_model(base_model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    out = {}
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02 if "lora_B" in name else 0.05)
        model.save_pretrained(folder / f"adapter{i}")
        out[f"task{i}"] = str(folder / f"adapter{i}")
    return out


def merged_base(base: str, adapter: str, folder: Path) -> str:
    from peft import PeftModel

    from peftkit.loading import load_causal_lm, load_tokenizer
    from peftkit.recipe import ModelSpec

    PeftModel.from_pretrained(load_causal_lm(ModelSpec(name=base)), adapter).merge_and_unload().save_pretrained(folder)
    load_tokenizer(ModelSpec(name=base)).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------- load
def load(send, models: list[str], clients: int, seconds: float) -> dict:
    """`clients` threads call `send(model, k)` -> (ttft, latency, tokens) back to back for `seconds`."""
    latencies, ttfts, tokens, errors = [], [], [], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(k: int):
        i = k
        while time.perf_counter() < stop_at:
            model = models[i % len(models)]
            i += clients
            try:
                ttft, latency, used = send(model, k)
                with lock:
                    ttfts.append(ttft)
                    latencies.append(latency)
                    tokens.append(used)
            except Exception as exc:  # counted and reported, the load goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))

    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "wall": wall,
            "tokens_per_s": sum(tokens) / wall, "mean_tokens": statistics.mean(tokens) if tokens else 0.0,
            "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99), "p50": pct(latencies, 50), "p99": pct(latencies, 99)}


def serve(options):
    import uvicorn
    from rich.console import Console

    from peftkit.serve.server import build_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        options.port = s.getsockname()[1]
    server = build_server(options, console=Console(stderr=True, quiet=True))
    web = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=options.port, log_level="error"))
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.05)
    return server, web, f"http://127.0.0.1:{options.port}/v1"


def http_sender(url: str, prompt: str, max_tokens: int):
    import openai

    clients: dict[int, openai.OpenAI] = {}

    def send(model: str, k: int):
        client = clients.setdefault(k, openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900))
        started = time.perf_counter()
        first, used = None, 0
        for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                               stream=True, stream_options={"include_usage": True}):
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - started
            if chunk.usage:
                used = chunk.usage.completion_tokens
        latency = time.perf_counter() - started
        return (first if first is not None else latency), latency, used

    return send


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(args) -> dict:
    """One configuration in this process (the parent starts one process per configuration)."""
    import torch

    torch.set_num_threads(args.threads)
    adapters = json.loads(Path(args.adapter_map).read_text())
    names = list(adapters)[: args.n_adapters]
    from peftkit.loading import load_tokenizer
    from peftkit.recipe import ModelSpec

    prompt = prompt_text(load_tokenizer(ModelSpec(name=args.base)), args.prompt_tokens)
    if args.one == "e":
        return run_plain(args, adapters, names, prompt)
    from peftkit.serve.server import ServeOptions

    if args.one == "d":
        options = ServeOptions(base=args.merged, max_adapters=1)
        names = [args.merged]
    else:
        options = ServeOptions(base=args.base, adapters={n: adapters[n] for n in names}, max_adapters=len(names),
                               lora_step="peft" if args.one == "b" else "batched", mix_adapters=args.one != "c")
    options.max_batch, options.context, options.max_queue = args.clients, args.context, 4 * args.clients
    options.max_step_tokens = max(args.max_step_tokens, args.clients + 1)
    options.timeout = 3600.0  # a loaded CPU may take minutes per request; the benchmark measures, never cuts off
    server, web, url = serve(options)
    send = http_sender(url, prompt, args.output_tokens)
    send(names[0], 0)  # warm-up: the first step builds the LoRA stacks and the KV pool
    loaded = rss_now()
    result = load(send, names, args.clients, args.seconds)
    web.should_exit = True
    server.engine.stop()
    return {**result, "rss_loaded": loaded}


def run_plain(args, adapters: dict, names: list[str], prompt: str) -> dict:
    """(e): what a user writes: one PeftModel holding every adapter, `set_adapter` + `generate` per request."""
    import torch
    from peft import PeftModel

    from peftkit.loading import load_causal_lm, load_tokenizer
    from peftkit.recipe import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(name=args.base))
    model = PeftModel.from_pretrained(load_causal_lm(ModelSpec(name=args.base)), adapters[names[0]], adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(adapters[n], adapter_name=n)
    model.eval()
    lock = threading.Lock()  # one model: requests run one at a time, as a plain script serves them
    ids = tokenizer(prompt, return_tensors="pt")

    def send(name: str, k: int):
        started = time.perf_counter()
        with lock, torch.no_grad():
            model.set_adapter(name)
            out = model.generate(**ids, max_new_tokens=args.output_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        latency = time.perf_counter() - started
        return latency, latency, out.shape[1] - ids["input_ids"].shape[1]  # no streaming: first token = whole answer

    send(names[0], 0)
    loaded = rss_now()
    return {**load(send, names, args.clients, args.seconds), "rss_loaded": loaded}


# ---------------------------------------------------------------------- degradation per task
def parity(args, adapters: dict) -> str:
    """The run's test rows through the mixed-batch server while other clients load other adapters."""
    from peftkit.evaluate.metrics import extraction_scores
    from peftkit.rundir import open_run, read_metrics
    from peftkit.serve.server import ServeOptions

    run, recipe = open_run(Path(args.parity))
    rows = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text().splitlines() if line]
    names = list(adapters)[:8]
    options = ServeOptions(base=recipe.model.name, adapters={"tuned": str(run), **{n: adapters[n] for n in names}},
                           max_adapters=len(names) + 1, max_batch=max(args.parity_clients * 2, 2), context=1024)
    server, web, url = serve(options)
    import openai

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
    done = threading.Event()

    def noise(k):
        while not done.is_set():
            client.completions.create(model=names[k % len(names)], prompt=SENTENCE * 3, max_tokens=16, temperature=0)

    def ask(row):
        messages = row["messages"][:-1] if "messages" in row else [{"role": "user", "content": row["input"]}]
        return client.chat.completions.create(model="tuned", messages=messages).choices[0].message.content

    background = [threading.Thread(target=noise, args=(k,), daemon=True) for k in range(args.parity_clients)]
    for t in background:
        t.start()
    with ThreadPoolExecutor(args.parity_clients) as pool:
        served = list(pool.map(ask, rows))
    done.set()
    for t in background:
        t.join()
    web.should_exit = True
    server.engine.stop()
    equal = sum(a == row["tuned"] for a, row in zip(served, rows))
    line = (f"degradation per task: {equal}/{len(rows)} answers of {run.name} through the mixed-batch server "
            f"({args.parity_clients} clients on it, {args.parity_clients} on {len(names)} other adapters) equal eval's")
    if "output" in rows[0]:
        scores = extraction_scores(served, [row["output"] for row in rows])
        tuned = read_metrics(run).get("tuned", {})
        line += (f"; field accuracy served {scores['field_accuracy']:.4f}, eval's {tuned.get('field_accuracy', float('nan')):.4f}")
    return line


# ---------------------------------------------------------------------- the grid
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapters", default="1,8,32")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--configs", default="a,b,c,d,e")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every configuration")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=384)
    parser.add_argument("--max-step-tokens", type=int, default=512)
    parser.add_argument("--parity", default=None, help="an extraction run directory to check under load")
    parser.add_argument("--parity-clients", type=int, default=4)
    # one configuration, in a child process
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-adapters", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--adapter-map", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--merged", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        args.clients = int(args.clients)
        result = run_one(args)
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + json.dumps(result))
        return 0

    counts = [int(x) for x in args.adapters.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    configs = args.configs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapters = make_adapters(args.base, max(counts), tmp / "adapters")
        (tmp / "adapters.json").write_text(json.dumps(adapters))
        merged = merged_base(args.base, adapters["task0"], tmp / "merged") if "d" in configs else None
        file_bytes = (Path(adapters["task0"]) / "adapter_model.safetensors").stat().st_size
        results: dict[tuple, dict] = {}
        for n in counts:
            for c in clients:
                for config in configs:
                    if config == "d" and n != counts[0] and (counts[0], c, "d") in results:
                        results[(n, c, "d")] = results[(counts[0], c, "d")]  # no adapters: the same run
                        continue
                    command = [sys.executable, __file__, "--one", config, "--n-adapters", str(n), "--clients", str(c),
                               "--adapter-map", str(tmp / "adapters.json"), "--base", args.base,
                               "--seconds", str(args.seconds), "--threads", str(args.threads),
                               "--prompt-tokens", str(args.prompt_tokens), "--output-tokens", str(args.output_tokens),
                               "--context", str(args.context), "--max-step-tokens", str(args.max_step_tokens)]
                    if merged:
                        command += ["--merged", merged]
                    done = subprocess.run(command, capture_output=True, text=True)
                    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
                    if line is None:
                        print(f"({config}) {n} adapters, {c} clients failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                        continue
                    results[(n, c, config)] = json.loads(line[len("RESULT "):])
                    r = results[(n, c, config)]
                    print(f"  ({config}) {n} adapters x {c} clients: {r['tokens_per_s']:.1f} tok/s, {r['requests']} requests, "
                          f"{r['errors']} errors", file=sys.stderr, flush=True)
        report(args, results, counts, clients, configs, file_bytes)
        if args.parity:
            print(parity(args, adapters))
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


def report(args, results, counts, clients, configs, file_bytes) -> None:
    import torch

    print(f"serve_bench: {args.base}, prompt ~{args.prompt_tokens} tokens, max_tokens {args.output_tokens}, "
          f"{args.seconds:g} s per run, torch threads {args.threads}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print("| adapters | clients | config | output tok/s | TTFT p50 / p99 s | latency p50 / p99 s | mean out tokens | "
          "peak RSS MiB | requests |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in counts:
        for c in clients:
            for config in configs:
                r = results.get((n, c, config))
                if r is None:
                    continue
                print(f"| {n} | {c} | ({config}) {CONFIGS[config]} | {r['tokens_per_s']:.1f} | {r['ttft_p50']:.2f} / "
                      f"{r['ttft_p99']:.2f} | {r['p50']:.2f} / {r['p99']:.2f} | {r['mean_tokens']:.1f} | "
                      f"{r['peak_rss'] / 2**20:.0f} | {r['requests']} ({r['errors']} errors) |")
            a = results.get((n, c, "a"))
            if a is None:
                continue
            ratios = [f"(a)/({k}) {a['tokens_per_s'] / results[(n, c, k)]['tokens_per_s']:.2f}x"
                      for k in ("d", "c", "b", "e") if (n, c, k) in results and results[(n, c, k)]["tokens_per_s"]]
            print(f"  {n} adapters x {c} clients: " + ", ".join(ratios))
    small, large = counts[0], counts[-1]
    if large > small and (small, clients[0], "a") in results and (large, clients[0], "a") in results:
        extra = (results[(large, clients[0], "a")]["rss_loaded"] - results[(small, clients[0], "a")]["rss_loaded"]) / (large - small)
        print(f"memory per extra resident adapter: {extra / 2**20:.1f} MiB vs its file {file_bytes / 2**20:.1f} MiB "
              f"({extra / file_bytes:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
