"""What was tested is what is served: greedy answers through `peftkit serve` vs the tuned answers
`peftkit eval` recorded in RUN/eval_predictions.jsonl, for the same test inputs.

    .venv/bin/python benchmarks/serve_parity.py runs/quickstart-<ts> [--base smollm2-135m] [--clients 4]

Starts the server in this process (127.0.0.1, a free port), sends every test row of the run as a chat
request with the `openai` client (`--clients` at a time, so answers are decoded in mixed batches),
prints equal / total and the first differing answers. For extraction runs it also scores the served
answers with eval's own metric function, to set against the tuned scores in RUN/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", default=None, help="default: the run's model.name")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    import openai
    import uvicorn
    from rich.console import Console

    from peftkit.evaluate.metrics import extraction_scores
    from peftkit.rundir import open_run, read_metrics
    from peftkit.serve.server import ServeOptions, build_server

    run, recipe = open_run(args.run)
    predictions = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text().splitlines() if line]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = build_server(ServeOptions(base=args.base or recipe.model.name, adapters={"tuned": str(run)}, port=port,
                                       max_batch=max(args.clients, 1)), console=Console(stderr=True))
    web = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def ask(row: dict) -> str:
        messages = row["messages"][:-1] if "messages" in row else [{"role": "user", "content": row["input"]}]
        answer = client.chat.completions.create(model="tuned", messages=messages)  # the run's defaults: greedy
        return answer.choices[0].message.content

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        served = list(pool.map(ask, predictions))
    seconds = time.perf_counter() - started
    equal = sum(a == row["tuned"] for a, row in zip(served, predictions))
    print(f"parity: {equal}/{len(predictions)} served answers equal eval's tuned answers "
          f"({args.clients} concurrent clients, {seconds:.1f} s)")
    for a, row in zip(served, predictions):
        if a != row["tuned"]:
            print(f"  differs: eval {row['tuned']!r}\n           served {a!r}")
    if "output" in predictions[0]:
        scores = extraction_scores(served, [row["output"] for row in predictions])
        tuned = read_metrics(run).get("tuned", {})
        print(f"field accuracy: served {scores['field_accuracy']:.4f}, eval's tuned {tuned.get('field_accuracy', float('nan')):.4f}; "
              f"exact match served {scores['exact_match']:.4f}, eval {tuned.get('exact_match', float('nan')):.4f}")
    web.should_exit = True
    server.engine.stop()
    return 0 if equal == len(predictions) else 1


if __name__ == "__main__":
    sys.exit(main())
