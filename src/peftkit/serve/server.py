"""`peftkit serve`: plan, load the base, check and load the adapters, start the engine and the HTTP server.

    peftkit serve --base smollm2-135m --adapter extract=runs/quickstart-<ts> --adapter chat=runs/chatterbot-<ts> \\
                  --keys keys.yaml --max-adapters 4 --adapter-root adapters/

    server = build_server(ServeOptions(base="smollm2-135m", adapters={"extract": "runs/..."}))
    app = server.app                     # FastAPI; `run_server(server)` serves it with uvicorn

Memory is planned before anything is loaded with `peftkit plan --serve`'s model (weights, KV cache
for `max_batch` sequences of `context` tokens, `max_adapters` adapter slots of `max_rank`); a
configuration that does not fit here is refused (`--force` starts anyway). Without `--keys` the
server answers on 127.0.0.1 only. SIGTERM (and Ctrl-C) stop accepting requests (503), let the ones
in flight finish, then exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from peftkit.errors import AdapterRefused, PeftkitError
from peftkit.serve.checks import AdapterLimits

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeError(PeftkitError):
    """A server cannot start as configured (the message says which option to change)."""


@dataclass
class ServeOptions:
    base: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> run directory or adapter folder
    keys: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "float32"
    adapter_root: list[str] = field(default_factory=list)
    max_adapters: int = 4
    max_rank: int = 64
    max_adapter_bytes: int = 1 << 30
    allow_base_mismatch: bool = False
    max_batch: int = 8
    max_queue: int = 64
    context: int = 2048
    timeout: float = 300.0
    force: bool = False
    seed: int = 42
    max_step_tokens: int = 512  # tokens one engine step processes: decoding rows + prefill chunks
    lora_step: str = "batched"  # "batched" (stacked adapters, serve/lora_batch.py) or "peft" (adapter_names)
    mix_adapters: bool = True  # False: a batch holds one adapter's requests only (a benchmark baseline)


@dataclass
class Server:
    options: ServeOptions
    app: object
    engine: object
    refused: dict[str, str]


def build_server(options: ServeOptions, console: Console | None = None) -> Server:
    """Everything `peftkit serve` starts, short of listening: checked keys, planned memory, the base,
    the adapters (each refused one is reported and left out), the running engine and the app."""
    from peftkit.catalog.models import resolve_model
    from peftkit.data.template import stop_token_ids
    from peftkit.loading import load_base_model, load_tokenizer
    from peftkit.recipe import ModelSpec
    from peftkit.registry.load import is_registry_source, load_registered
    from peftkit.serve.adapters import AdapterCache
    from peftkit.serve.app import create_app
    from peftkit.serve.auth import load_keys
    from peftkit.serve.engine import Engine
    from peftkit.serve.metrics import ServerMetrics

    console = console or Console(stderr=True)
    _check_engine_options(options)
    keys = load_keys(options.keys)
    for warning in getattr(keys, "warnings", ()):
        console.print(f"[yellow]{warning}[/yellow]")
    if keys.open and options.host not in LOCAL_HOSTS:
        raise ServeError(f"--host {options.host}: without --keys the server answers on 127.0.0.1 only; "
                         "create keys with `peftkit serve keygen --tenant NAME` and pass --keys FILE")
    if keys.open:
        console.print("no --keys: anyone on this machine may call the server; it listens on 127.0.0.1 only")
    spec = ModelSpec(name=options.base, dtype=options.dtype)
    source = resolve_model(options.base)
    classification = not _is_causal_lm(source)
    if not classification:
        _check_attention(source, options.context)
        _check_memory(options, console)
    else:
        console.print("plan: classification servers are not planned (an encoder with one classifier per adapter)")
    tokenizer = load_tokenizer(spec)
    base_model = _base_for_checks(spec, classification, options.seed)
    cache = AdapterCache(options.base, base_model, options.dtype,
                         AdapterLimits(max_rank=options.max_rank, max_bytes=options.max_adapter_bytes,
                                       allow_base_mismatch=options.allow_base_mismatch),
                         options.max_adapters, roots=[Path(r) for r in options.adapter_root],
                         classification=classification, seed=options.seed)
    refused: dict[str, str] = {}
    for name, where in options.adapters.items():
        try:
            if is_registry_source(where):  # registry:NAME@ALIAS: verified (hashes, signature, base) and audited
                where = load_registered(where, options.base, served_as=name)
            served = cache.register(name, where)
            if len(cache.resident) < options.max_adapters:
                cache.ensure_resident(served)
            console.print(f"adapter {name}: {served.kind}, task {served.task or '-'}, from {where}")
        except AdapterRefused as exc:
            refused[name] = exc.reason
            console.print(f"[red]refused {exc}[/red]")
    metrics = ServerMetrics()
    engine = Engine(cache, tokenizer, stop_token_ids(tokenizer, source), max_batch=options.max_batch,
                    max_queue=options.max_queue, context=options.context, timeout=options.timeout, metrics=metrics,
                    max_step_tokens=options.max_step_tokens, lora_step=options.lora_step,
                    mix_adapters=options.mix_adapters)
    engine.start()
    return Server(options, create_app(engine, keys, metrics), engine, refused)


def run_server(server: Server, console: Console | None = None) -> None:
    """Serve until SIGTERM / Ctrl-C: then refuse new requests (503), finish the ones in flight, exit."""
    import uvicorn

    console = console or Console(stderr=True)
    engine = server.engine

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            engine.draining = True  # new requests get 503 from here on; in-flight ones run to the end
            super().handle_exit(sig, frame)

    config = uvicorn.Config(server.app, host=server.options.host, port=server.options.port, log_level="warning",
                            timeout_graceful_shutdown=int(server.options.timeout))
    console.print(f"serving {server.options.base} on http://{server.options.host}:{server.options.port}/v1 "
                  f"({len(engine.cache.listed()) - 1} adapters)")
    try:
        GracefulServer(config).run()
    finally:
        engine.stop()


def _check_engine_options(options: ServeOptions) -> None:
    from peftkit.serve.engine import LORA_STEPS

    if options.lora_step not in LORA_STEPS:
        raise ServeError(f"--lora-step {options.lora_step}: expected one of {', '.join(LORA_STEPS)}")
    if options.max_step_tokens <= options.max_batch:
        raise ServeError(f"--max-step-tokens {options.max_step_tokens}: must exceed --max-batch {options.max_batch} "
                         "(each decoding sequence takes one token of a step; prompts are prefilled with the rest)")


def _check_attention(source: str, context: int) -> None:
    """The engine's KV pool attends over whole slots: refuse sliding-window layers shorter than the context."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or []
    if window and window < context and (not types or "sliding_attention" in types):
        raise ServeError(f"{source}: sliding-window attention of {window} tokens; the server attends over whole "
                         f"sequences, so give --context {window} or less")


def _is_causal_lm(source: str) -> bool:
    from transformers import AutoConfig

    archs = AutoConfig.from_pretrained(source).architectures or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _base_for_checks(spec, classification: bool, seed: int):
    """The generation base (served itself, and the model LoRA adapters attach to); for a classification
    server the bare encoder, whose shapes the adapters are checked against (each adapter then gets a
    classifier of its own, sized for its labels)."""
    from peftkit.loading import load_base_model

    if not classification:
        return load_base_model(spec, "causal", None, seed).eval()
    from transformers import AutoModel

    from peftkit.catalog.models import resolve_model
    from peftkit.loading import DTYPES

    return AutoModel.from_pretrained(resolve_model(spec.name), dtype=DTYPES[spec.dtype])


def _check_memory(options: ServeOptions, console: Console) -> None:
    from peftkit.plan.advise import verdict
    from peftkit.plan.hardware import current_device
    from peftkit.plan.memory import ServePlanSpec, plan_serving
    from peftkit.resources import human_bytes

    device = current_device()
    plan = plan_serving(ServePlanSpec(model=options.base, dtype=options.dtype, context=options.context,
                                      concurrent=options.max_batch, adapters=options.max_adapters,
                                      rank=options.max_rank, device=device.kind))
    result = verdict(plan, device)
    line = (f"plan: {human_bytes(plan.peak_bytes)} (weights, KV cache for {options.max_batch} x {options.context} "
            f"tokens, {options.max_adapters} adapter slots of rank {options.max_rank}) of "
            f"{human_bytes(device.memory_bytes)} on {device.name}")
    if result["fits"]:
        console.print(line)
        return
    if options.force:
        console.print(f"[yellow]{line}: does not fit; starting anyway (--force)[/yellow]")
        return
    raise ServeError(f"{line}: does not fit; nothing was loaded. Lower --max-batch, --context or --max-adapters "
                     "(or --force to start anyway)")
