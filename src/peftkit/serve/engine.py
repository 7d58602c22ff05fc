"""The serving engine: one worker thread runs the model, request handlers submit jobs and read events.

    engine = Engine(cache, tokenizer, stop_ids, max_batch=8, max_queue=64, max_step_tokens=512)
    engine.start()
    job = engine.submit_generate(served, prompt_ids, SamplingParams(max_tokens=64), loop)  # raises QueueFull
    async for event in job.events(): ...        # Token(text) ... Done(finish_reason, usage) | Failed(status, message)

Continuous batching: requests join and leave between steps, never waiting for a batch's longest
request. Every step the worker
1. runs control jobs (load/unload an adapter) and classification jobs;
2. admits waiting requests while fewer than `max_batch` sequences run: it makes the request's adapter
   resident (`AdapterCache.ensure_resident`; a request whose adapter cannot get a slot waits) and gives
   it a slot of the KV pool;
3. decodes one token for every sequence past its prompt, one forward per model group;
4. prefills waiting prompts with the step's remaining token budget (`max_step_tokens` minus the decoding
   rows): a long prompt is prefilled in chunks over several steps, interleaved with the decoding of
   the others; the chunk that ends a prompt yields its first token;
5. samples (greedy at temperature 0; seeded per request), detokenizes incrementally, checks stop
   tokens and stop strings, and sends the new text to the request; a finished, cancelled or timed
   out request leaves at once and frees its slot.

The KV cache is preallocated (`KVPool`): per layer, keys and values of [max_batch, kv_heads, context,
head_dim] (what `peftkit plan --serve` counts), one slot per running sequence. A forward writes its new
positions into its rows' slots and attends over the slots up to the longest row (a 4D mask says which
positions each row sees), so no sequence's cache is copied or re-padded between steps.

The LoRA step of the shared group (LoRA adapters over one base) is `lora_step`: "batched" stacks the
resident adapters per layer and gathers each row's (serve/lora_batch.py); "peft" passes peft's
`adapter_names`, which loops over a batch's distinct adapters in every layer. Groups `LoraBatch` cannot
stack (4-bit QLoRA layers) use peft's step either way. With `mix_adapters=False` a batch only holds
requests of one adapter (how llama.cpp's server batches), for comparison in benchmarks/serve_bench.py.
Prefix/prompt-tuning adapters add virtual tokens inside peft's `generate`, so their requests run one
at a time through it (still streamed, stoppable and cancellable).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from peftkit.serve.adapters import BASE, AdapterCache, Served
from peftkit.serve.lora_batch import LoraBatch

LORA_STEPS = ("batched", "peft")


class QueueFull(Exception):
    """The waiting queue holds `max_queue` requests (HTTP 429)."""


class ShuttingDown(Exception):
    """The server is draining: in-flight requests finish, new ones are refused (HTTP 503)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Token:
    text: str


@dataclass
class Done:
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    status: int
    message: str
    code: str = "server_error"


class Job:
    """One request: its inputs, the worker's state for it, and the events it sends back."""

    def __init__(self, served: Served, loop: asyncio.AbstractEventLoop, timeout: float | None):
        self.id = uuid.uuid4().hex[:24]
        self.served = served
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.created = time.monotonic()
        self.deadline = self.created + timeout if timeout else None
        self.first_token_at: float | None = None

    def send(self, event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled.set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    async def events(self):
        while True:
            event = await self.queue.get()
            yield event
            if isinstance(event, (Done, Failed)):
                return


class GenerateJob(Job):
    def __init__(self, served, loop, timeout, prompt_ids: list[int], params: SamplingParams):
        super().__init__(served, loop, timeout)
        self.prompt_ids = prompt_ids
        self.params = params
        self.generated: list[int] = []
        self.started = False  # left the queue and holds its adapter (served.running counts it)
        self.slot: int | None = None  # its rows in the KV pool while it runs
        self.length = 0  # tokens written to its slot (prompt first, in chunks; then one per decoded token)
        self.sent = 0  # characters of the decoded answer already sent
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)


class ClassifyJob(Job):
    def __init__(self, served, loop, timeout, texts: list[str]):
        super().__init__(served, loop, timeout)
        self.texts = texts


class ControlJob(Job):
    """Run `fn(cache)` in the worker (load, unload) and send its result or its error back."""

    def __init__(self, served, loop, fn):
        super().__init__(served, loop, None)
        self.fn = fn


@dataclass
class Result:
    value: object


class Engine:
    """The worker thread and its queues. Handlers call `submit_*` from the event loop.

    Args:
        max_batch: sequences running at once (slots of the KV pool).
        context: tokens per sequence (prompt + output), the KV pool's length.
        max_step_tokens: tokens one step may process: decoding rows (one each) plus prefill chunks.
        lora_step: "batched" (serve/lora_batch.py) or "peft" (peft's `adapter_names`).
        mix_adapters: False lets a batch hold one adapter's requests only (a baseline for benchmarks).
    """

    def __init__(self, cache: AdapterCache, tokenizer, stop_ids: set[int], max_batch: int = 8, max_queue: int = 64,
                 context: int = 2048, timeout: float | None = 300.0, metrics=None, max_step_tokens: int = 512,
                 lora_step: str = "batched", mix_adapters: bool = True):
        if lora_step not in LORA_STEPS:
            raise ValueError(f"lora_step {lora_step!r}: expected one of {', '.join(LORA_STEPS)}")
        if max_step_tokens <= max_batch:
            raise ValueError(f"max_step_tokens {max_step_tokens} must exceed max_batch {max_batch} "
                             "(every decoding row takes one token of a step; prefill needs the rest)")
        self.cache = cache
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.context = context
        self.timeout = timeout
        self.metrics = metrics
        self.max_step_tokens = max_step_tokens
        self.lora_step = lora_step
        self.mix_adapters = mix_adapters
        self.pool = KVPool(max_batch, context)
        self.lora: dict[str, tuple[object, int, LoraBatch | None]] = {}  # group key -> (model, version, its step)
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: list[Job] = []  # admitted by the worker in arrival order
        self.running: list[GenerateJob] = []
        self.pending = 0  # submitted and not yet running (the bounded queue)
        self.pending_lock = threading.Lock()
        self.draining = False
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="peftkit-engine", daemon=True)

    # ------------------------------------------------------------------ submitting (event loop side)
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join(timeout=30)

    def _submit(self, job: Job, bounded: bool = True) -> Job:
        if self.draining:
            raise ShuttingDown()
        if bounded:
            with self.pending_lock:
                if self.pending >= self.max_queue:
                    raise QueueFull()
                self.pending += 1
        self.inbox.put(job)
        self.wake.set()
        return job

    def submit_generate(self, served: Served, prompt_ids: list[int], params: SamplingParams, loop) -> GenerateJob:
        return self._submit(GenerateJob(served, loop, self.timeout, prompt_ids, params))

    def submit_classify(self, served: Served, texts: list[str], loop) -> ClassifyJob:
        return self._submit(ClassifyJob(served, loop, self.timeout, texts))

    def submit_control(self, fn, loop) -> ControlJob:
        return self._submit(ControlJob(None, loop, fn), bounded=False)

    def queue_depth(self) -> int:
        return self.pending

    def idle(self) -> bool:
        return self.pending == 0 and not self.running

    # ------------------------------------------------------------------ the worker
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self.stopped.is_set():
            self._drain_inbox()
            if not self.waiting and not self.running:
                self.wake.wait(0.05)
                self.wake.clear()
                continue
            try:
                self._step()
            except Exception as exc:  # a bug must not hang clients: fail what is in flight and go on
                message = f"internal error in the engine: {type(exc).__name__}: {exc}"
                for job in list(self.running):
                    self._retire(job, Failed(500, message))
                import traceback

                traceback.print_exc()

    def _drain_inbox(self) -> None:
        while True:
            try:
                self.waiting.append(self.inbox.get_nowait())
            except queue.Empty:
                return

    def _step(self) -> None:
        still: list[Job] = []
        for job in self.waiting:
            if job.cancelled.is_set() or job.expired():
                self._leave_queue(job)
                job.send(Failed(504, "request timed out in the queue", "timeout") if job.expired()
                         else Failed(499, "cancelled", "cancelled"))
            elif isinstance(job, ControlJob):
                self._run_control(job)
            elif isinstance(job, ClassifyJob):
                self._run_classify(job)
            elif len(self.running) < self.max_batch and self._may_join(job) and self._admitted(job):
                pass
            else:
                still.append(job)
        self.waiting = still
        decoding = [j for j in self.running if j.generated]
        if decoding:
            self._decode(decoding)
        prefilling = [j for j in self.running if not j.generated]
        if prefilling:
            self._prefill(prefilling, self.max_step_tokens - len(decoding))
        if self.metrics is not None:
            self.metrics.observe_engine(self)

    def _may_join(self, job: GenerateJob) -> bool:
        """Whether `job` may join the running batch: always, unless batches hold one adapter each."""
        return self.mix_adapters or not self.running or self.running[0].served is job.served

    def _leave_queue(self, job: Job) -> None:
        if not isinstance(job, ControlJob):
            with self.pending_lock:
                self.pending -= 1

    def _run_control(self, job: ControlJob) -> None:
        try:
            job.send(Result(job.fn(self.cache)))
        except Exception as exc:  # AdapterRefused and friends: the handler turns them into a 4xx
            job.send(Result(exc))

    def _run_classify(self, job: ClassifyJob) -> None:
        self._leave_queue(job)
        try:
            group = self.cache.ensure_resident(job.served)
            if group is None:
                job.send(Failed(503, "every adapter slot is busy; retry", "slots_busy"))
                return
            model = group.model
            enc = self.tokenizer(job.texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.context)
            probs = torch.softmax(model(**enc.to(_device(model))).logits.float(), dim=-1)  # [texts, labels]
            job.send(Result(probs.cpu().tolist()))
        except Exception as exc:
            job.send(Failed(500, f"classification failed: {type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ admission and prefill
    def _admitted(self, job: GenerateJob) -> bool:
        """Admit `job` (True), or leave it waiting for a slot (False); a failure ends that request alone."""
        try:
            return self._admit(job)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            if job.started:
                self._retire(job, Failed(500, f"could not start the request on '{job.served.name}': "
                                              f"{type(exc).__name__}: {exc}"))
            else:
                self._leave_queue(job)
                job.send(Failed(500, f"could not start the request on '{job.served.name}': {type(exc).__name__}: {exc}"))
            return True

    def _admit(self, job: GenerateJob) -> bool:
        group = self.cache.ensure_resident(job.served)
        if group is None:
            return False  # every adapter slot holds an adapter in use; wait for one to free
        self._leave_queue(job)
        job.served.running += 1
        job.started = True
        if group.via_generate:
            self._generate_alone(job, group)
            return True
        job.slot = self.pool.acquire()
        self.running.append(job)  # its prompt is prefilled by the next steps, in chunks
        return True

    def _prefill(self, jobs: list[GenerateJob], budget: int) -> None:
        """Prefill the next chunk of each waiting prompt, oldest first, within `budget` tokens."""
        for job in jobs:
            if budget <= 0:
                return
            if job.cancelled.is_set() or job.expired():
                self._retire(job, None if job.cancelled.is_set() else
                             Failed(504, f"request took longer than the server's timeout ({self.timeout:g} s)", "timeout"))
                continue
            chunk = job.prompt_ids[job.length : job.length + budget]
            budget -= len(chunk)
            group = self.cache.groups[job.served.group_key]
            ids = torch.tensor([chunk], device=_device(group.model))  # [1, chunk]
            logits = self._forward(group, ids, [job])
            job.length += len(chunk)
            if job.length == len(job.prompt_ids):
                self._accept(job, logits[:, -1, :])

    # ------------------------------------------------------------------ decode
    def _decode(self, jobs: list[GenerateJob]) -> None:
        groups: dict[str, list[GenerateJob]] = {}
        for job in sorted(jobs, key=lambda j: j.slot):  # rows in slot order: adjacent slots are read without a copy
            groups.setdefault(job.served.group_key, []).append(job)
        for key, members in groups.items():
            self._decode_group(self.cache.groups[key], members)

    def _decode_group(self, group, jobs: list[GenerateJob]) -> None:
        """One forward for every sequence of `group`: the last token of each, at its own position in its slot."""
        ids = torch.tensor([[j.generated[-1]] for j in jobs], device=_device(group.model))  # [batch, 1]
        logits = self._forward(group, ids, jobs)
        for j in jobs:
            j.length += 1
        for row, j in enumerate(jobs):
            self._accept(j, logits[row : row + 1, -1, :])

    def _forward(self, group, ids: torch.Tensor, jobs: list[GenerateJob]) -> torch.Tensor:
        """Run `ids` [rows, tokens] for `jobs` (row i continues job i at its `length`); returns the logits."""
        device = ids.device
        rows, tokens = ids.shape
        starts = [j.length for j in jobs]
        past = SlotCache(self.pool, [j.slot for j in jobs], starts, tokens, device)
        positions = torch.tensor(starts, device=device).unsqueeze(1) + torch.arange(tokens, device=device)  # [rows, tokens]
        kwargs = {"input_ids": ids, "position_ids": positions, "past_key_values": past, "use_cache": True,
                  "attention_mask": _slot_mask(positions, past.kv_len, _attention(group.model))}
        lora = self._lora_step(group)
        if lora is not None:
            index = lora.index([None if j.served.kind == "base" else j.served.peft_name for j in jobs], tokens, device)
            with lora.step(index):
                return group.model(**kwargs).logits
        from peft import PeftModel

        if group.shared and isinstance(group.model, PeftModel):
            kwargs["adapter_names"] = [BASE if j.served.kind == "base" else j.served.peft_name for j in jobs]
        return group.model(**kwargs).logits

    def _lora_step(self, group) -> LoraBatch | None:
        """The batched LoRA step of a shared group when `lora_step` is "batched" and its layers can be stacked;
        rebuilt lazily when the group's model or adapters change (`ModelGroup.version`)."""
        from peft import PeftModel

        if self.lora_step != "batched" or not group.shared or not isinstance(group.model, PeftModel):
            return None
        model, version, lora = self.lora.get(group.key, (None, -1, None))
        if model is not group.model or version != group.version:
            if LoraBatch.supported(group.model):
                lora = lora or LoraBatch()
                lora.sync(group.model, group.version, capacity=self.cache.max_adapters)
            elif lora is not None:
                lora.release()  # an adapter it cannot stack arrived: peft's own forward again
                lora = None
            self.lora[group.key] = (group.model, group.version, lora)
        return lora

    # ------------------------------------------------------------------ sampling, stopping, streaming
    def _accept(self, job: GenerateJob, logits: torch.Tensor) -> None:
        """Sample the next token from `logits` [1, vocab], send new text, finish when a stop condition holds."""
        token = _sample(logits[0].float(), job.params, job.generator)
        now = time.monotonic()
        if job.first_token_at is None:
            job.first_token_at = now
            if self.metrics is not None:
                self.metrics.first_token(job.served.name, now - job.created)
        if job.cancelled.is_set():
            return self._retire(job, None)
        if job.expired():
            return self._retire(job, Failed(504, f"request took longer than the server's timeout ({self.timeout:g} s)", "timeout"))
        if token in self.stop_ids:
            return self._retire(job, "stop")
        job.generated.append(token)
        finish = self._send_text(job, final=False)
        if finish is None and len(job.generated) >= job.params.max_tokens:
            finish = "length"
        if finish is None and job.length + 1 >= self.context:
            finish = "length"
        if finish is not None:
            self._retire(job, finish)

    def _send_text(self, job: GenerateJob, final: bool) -> str | None:
        """Send the decoded text not sent yet, holding back what may be the start of a stop string or
        of an unfinished character; returns "stop" when a stop string appeared (the text ends before it)."""
        text = self.tokenizer.decode(job.generated, skip_special_tokens=True)
        hits = [text.find(s) for s in job.params.stop if s and s in text]
        if hits:
            end = min(hits)
            if end > job.sent:
                job.send(Token(text[job.sent : end]))
            job.sent = max(job.sent, end)
            return "stop"
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end = len(text.rstrip("\ufffd"))
            for s in job.params.stop:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        end = min(end, len(text) - k)
                        break
        if end > job.sent:
            job.send(Token(text[job.sent : end]))
            job.sent = end
        return None

    def _retire(self, job: GenerateJob, finish) -> None:
        """Free the job's slot and leave the batch, then send its last event (a client that reads it sees the slot free)."""
        if job.slot is not None:
            self.pool.release(job.slot)
            job.slot = None
        job.served.running -= 1
        if job in self.running:
            self.running.remove(job)
        if isinstance(finish, str):
            self._send_text(job, final=True)  # what was held back; a stop string found earlier still ends it
            job.send(Done(finish, len(job.prompt_ids), len(job.generated)))
            if self.metrics is not None:
                self.metrics.finished(job.served.name, len(job.generated), time.monotonic() - job.created)
        elif isinstance(finish, Failed):
            job.send(finish)

    # ------------------------------------------------------------------ prefix / prompt tuning
    def _generate_alone(self, job: GenerateJob, group) -> None:
        """peft's generate for adapters that add virtual tokens, streamed token by token."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        engine = self
        state = {"prompt_seen": False, "finish": "length"}

        class Stream(BaseStreamer):
            def put(self, value):
                if not state["prompt_seen"]:  # generate first puts the prompt
                    state["prompt_seen"] = True
                    return
                for token in value.reshape(-1).tolist():
                    if token in engine.stop_ids:
                        state["finish"] = "stop"
                        continue
                    if job.first_token_at is None:
                        job.first_token_at = time.monotonic()
                    job.generated.append(token)
                    if engine._send_text(job, final=False) == "stop":
                        state["finish"] = "stop"

            def end(self):
                pass

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = job.cancelled.is_set() or job.expired() or state["finish"] == "stop"
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        params = job.params
        ids = torch.tensor([job.prompt_ids], device=_device(group.model))
        sampling = {"do_sample": False} if params.temperature <= 0 else {
            "do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            group.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens,
                                 pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.stop_ids),
                                 streamer=Stream(), stopping_criteria=StoppingCriteriaList([Halt()]), **sampling)
        except Exception as exc:
            return self._retire(job, Failed(500, f"generation failed: {type(exc).__name__}: {exc}"))
        if job.cancelled.is_set():
            return self._retire(job, None)
        if job.expired():
            return self._retire(job, Failed(504, "request took longer than the server's timeout", "timeout"))
        self._retire(job, state["finish"])


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0; otherwise temperature and nucleus (top_p) sampling, seeded per request."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # always keeps the first
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class KVPool:
    """The preallocated KV cache: per layer, keys and values of [slots, kv_heads, context, head_dim].

    One slot per running sequence (`max_batch` of them), allocated on first use for each dtype the
    model groups compute in (a 4-bit group computes in its own dtype); `peftkit plan --serve` counts
    the same bytes (KV cache for max_batch x context tokens)."""

    def __init__(self, slots: int, context: int):
        self.slots = slots
        self.context = context
        self.free = list(range(slots))
        self.buffers: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # (dtype, device) -> per layer

    def acquire(self) -> int:
        return self.free.pop(0)

    def release(self, slot: int) -> None:
        self.free.append(slot)
        self.free.sort()

    def layer(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s buffers for tensors like `keys` [rows, kv_heads, tokens, head_dim] (allocated once)."""
        layers = self.buffers.setdefault((keys.dtype, keys.device), [])
        while len(layers) <= index:
            layers.append(None)
        if layers[index] is None:
            k = keys.new_zeros(self.slots, keys.shape[1], self.context, keys.shape[3])
            v = values.new_zeros(self.slots, values.shape[1], self.context, values.shape[3])
            layers[index] = (k, v)
        return layers[index]

    def nbytes(self) -> int:
        return sum(t.nbytes for layers in self.buffers.values() for pair in layers if pair for t in pair)


class SlotCache(Cache):
    """A transformers `Cache` over the pool for one forward: row i writes its new tokens into slot `slots[i]`
    at `starts[i]`..`starts[i] + tokens` and reads the slot's first `kv_len` positions (the mask hides the
    positions that are not its own)."""

    def __init__(self, pool: KVPool, slots: list[int], starts: list[int], tokens: int, device):
        self.pool = pool
        self.slots = slots
        self.starts = starts
        self.tokens = tokens
        self.kv_len = max(starts) + tokens
        first = slots[0]
        self.adjacent = slots == list(range(first, first + len(slots)))  # read as a view, no gather
        self.slot_index = torch.tensor(slots, device=device)
        self.start_index = torch.tensor(starts, device=device)
        super().__init__(layers=[_SlotLayer(self, i) for i in range(_layer_count(pool, device))])

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:  # the first forward tells how many layers there are
            self.layers.append(_SlotLayer(self, len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states)


class _SlotLayer(CacheLayerMixin):
    is_sliding = False

    def __init__(self, cache: SlotCache, index: int):
        super().__init__()
        self.cache = cache
        self.index = index

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write [rows, kv_heads, tokens, head_dim] into the rows' slots; return their [rows, kv_heads, kv_len, head_dim]."""
        c = self.cache
        keys, values = c.pool.layer(self.index, key_states, value_states)
        if c.tokens == 1:  # decode: one position per row, each at its own length
            keys[c.slot_index, :, c.start_index] = key_states[:, :, 0]
            values[c.slot_index, :, c.start_index] = value_states[:, :, 0]
        else:
            for row, (slot, start) in enumerate(zip(c.slots, c.starts)):
                keys[slot, :, start : start + c.tokens] = key_states[row]
                values[slot, :, start : start + c.tokens] = value_states[row]
        if c.adjacent:
            first = c.slots[0]
            return keys[first : first + len(c.slots), :, : c.kv_len], values[first : first + len(c.slots), :, : c.kv_len]
        return keys[c.slot_index, :, : c.kv_len], values[c.slot_index, :, : c.kv_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.kv_len, 0

    def get_seq_length(self) -> int:
        return self.cache.kv_len - self.cache.tokens

    def get_max_length(self) -> int:
        return self.cache.pool.context


def _layer_count(pool: KVPool, device) -> int:
    for (dtype, where), layers in pool.buffers.items():
        if where == device:
            return len(layers)
    return 0


def _slot_mask(positions: torch.Tensor, kv_len: int, implementation: str) -> torch.Tensor:
    """The 4D attention mask [rows, 1, tokens, kv_len]: a token at position p sees its slot's positions 0..p."""
    seen = torch.arange(kv_len, device=positions.device) <= positions.unsqueeze(-1)  # [rows, tokens, kv_len]
    mask = seen.unsqueeze(1)
    if implementation == "eager":  # eager attention adds the mask to the scores
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask  # sdpa: True where attending


def _attention(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def _device(model) -> torch.device:
    return next(model.parameters()).device
