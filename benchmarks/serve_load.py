"""Concurrent `openai`-client load on `peftkit serve` over several LoRA adapters, against the same load on
the base model alone (the baseline, same server, same process).

    .venv/bin/python benchmarks/serve_load.py [--adapters 4] [--clients 8] [--seconds 60] [--baseline-seconds 30]

Makes `--adapters` LoRA adapters for smollm2-135m (r=16, all-linear, non-zero B, seeded) in a
temporary folder, serves them in this process (127.0.0.1), then `--clients` threads send chat
requests (a ~60-token prompt, max_tokens 32, greedy) spread evenly over the adapters for
`--seconds`; then the same over the base model only. Prints requests, errors, p50/p99 latency,
p50 time to first token (streamed), output tokens/s, and the adapters' tokens/s as a ratio of the
base-only run's.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPT = ("Please book 2 x 40HC from Shanghai to Rotterdam for Acme Trading, cargo: furniture, "
          "ETD 12 March, carrier Maersk, booking reference ACM-2291. Reply with the booking JSON.")


def make_adapters(base: str, count: int, folder: Path) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from peftkit.loading import load_causal_lm
    from peftkit.recipe import ModelSpec

    out = {}
    for i in range(count):
        model = get_peft_model(load_causal_lm(ModelSpec(name=base)), LoraConfig(r=16, lora_alpha=32,
                                                                                target_modules="all-linear"))
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        path = folder / f"adapter{i}"
        model.save_pretrained(path)
        out[f"task{i}"] = str(path)
    return out


def load(url: str, models: list[str], clients: int, seconds: float) -> dict:
    import openai

    latencies, ttfts, tokens, errors = [], [], [0], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(k: int):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        i = k
        while time.perf_counter() < stop_at:
            model = models[i % len(models)]
            i += clients
            started = time.perf_counter()
            first = None
            try:
                stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                                        max_tokens=32, stream=True,
                                                        stream_options={"include_usage": True})
                used = 0
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
                    if chunk.usage:
                        used = chunk.usage.completion_tokens
                with lock:
                    latencies.append(time.perf_counter() - started)
                    ttfts.append(first if first is not None else latencies[-1])
                    tokens[0] += used
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
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99 if latencies else [0] * 99
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "wall": wall,
            "p50": q[49], "p99": q[98], "ttft_p50": statistics.median(ttfts) if ttfts else 0.0,
            "tokens_per_s": tokens[0] / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()

    import torch
    import uvicorn
    from rich.console import Console

    from peftkit.serve.server import ServeOptions, build_server

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(args.base, args.adapters, Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = build_server(ServeOptions(base=args.base, adapters=adapters, port=port, max_batch=args.clients,
                                           max_adapters=args.adapters, context=512, max_queue=4 * args.clients),
                              console=Console(stderr=True))
        web = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="error"))
        threading.Thread(target=web.run, daemon=True).start()
        while not web.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        mixed = load(url, list(adapters), args.clients, args.seconds)
        base = load(url, [args.base], args.clients, args.baseline_seconds)
        web.should_exit = True
        server.engine.stop()
    print(f"peftkit serve, {args.base}, {args.clients} clients, {torch.get_num_threads()} threads")
    for label, r in ((f"{args.adapters} LoRA adapters (r=16, all-linear)", mixed), ("base model only (baseline)", base)):
        print(f"{label}: {r['requests']} requests in {r['wall']:.0f} s, {r['errors']} errors, latency p50 {r['p50']:.2f} s "
              f"p99 {r['p99']:.2f} s, time to first token p50 {r['ttft_p50']:.2f} s, {r['tokens_per_s']:.1f} output tokens/s")
        for e in r["first_errors"]:
            print(f"  error: {e}")
    ratio = mixed["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else float("nan")
    print(f"adapters vs base only: {ratio:.2f}x the output tokens/s")
    return 0 if mixed["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
