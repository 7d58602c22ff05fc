"""The serving engine: one worker thread runs the model, request handlers submit jobs and read events.

    engine = Engine(cache, tokenizer, stop_ids, max_batch=8, max_queue=64)
    engine.start()
    job = engine.submit_generate(served, prompt_ids, SamplingParams(max_tokens=64), loop)  # raises QueueFull
    async for event in job.events(): ...        # Token(text) ... Done(finish_reason, usage) | Failed(status, message)

Scheduling (continuous at the decode step): every step the worker
1. runs control jobs (load/unload an adapter) and classification jobs;
2. admits waiting requests while fewer than `max_batch` sequences run: it makes the request's adapter
   resident (`AdapterCache.ensure_resident`; a request whose adapter cannot get a slot waits) and
   prefills its prompt alone, which yields its first token;
3. decodes one token for every running sequence, one forward per model group: the group's
   sequences' KV caches are left-padded to the longest into one batch (attention mask and
   position ids say where each starts), rows name their adapter with peft's `adapter_names`, and
   each sequence keeps its own cache again afterwards (the new position is appended to it);
4. samples (greedy at temperature 0; seeded per request), detokenizes incrementally, checks stop
   tokens and stop strings, and sends the new text to the request; a finished, cancelled or timed
   out request leaves at once and frees its slot.
Prefix/prompt-tuning adapters add virtual tokens inside peft's `generate`, so their requests run one
at a time through it (still streamed, stoppable and cancellable).

The mixed-adapter step is peft's `adapter_names` (it loops over the distinct adapters of a batch in
every LoRA layer); `_decode_group` is the one place a faster batched LoRA step replaces it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch

from peftkit.serve.adapters import BASE, AdapterCache, Served


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
        self.past: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer: [1, kv_heads, len, head_dim]
        self.length = 0  # tokens in `past`
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
    """The worker thread and its queues. Handlers call `submit_*` from the event loop."""

    def __init__(self, cache: AdapterCache, tokenizer, stop_ids: set[int], max_batch: int = 8, max_queue: int = 64,
                 context: int = 2048, timeout: float | None = 300.0, metrics=None):
        self.cache = cache
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.context = context
        self.timeout = timeout
        self.metrics = metrics
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
                for job in self.running:
                    self._finish_failed(job, Failed(500, message))
                self.running = []
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
            elif len(self.running) < self.max_batch and self._admitted(job):
                pass
            else:
                still.append(job)
        self.waiting = still
        if self.running:
            self._decode()
        if self.metrics is not None:
            self.metrics.observe_engine(self)

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

    # ------------------------------------------------------------------ prefill
    def _admitted(self, job: GenerateJob) -> bool:
        """Admit `job` (True), or leave it waiting for a slot (False); a failure ends that request alone."""
        try:
            return self._admit(job)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            if job in self.running:
                self.running.remove(job)
            if job.started:
                job.served.running -= 1
            else:
                self._leave_queue(job)
            job.past = None
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
        ids = torch.tensor([job.prompt_ids], device=_device(group.model))
        out = self._forward(group, ids, None, None, None, [job.served])
        job.past = _layers(out.past_key_values)
        job.length = len(job.prompt_ids)
        self.running.append(job)
        self._accept(job, out.logits[:, -1, :])
        return True

    # ------------------------------------------------------------------ decode
    def _decode(self) -> None:
        groups: dict[str, list[GenerateJob]] = {}
        for job in self.running:
            groups.setdefault(job.served.group_key, []).append(job)
        for key, jobs in groups.items():
            self._decode_group(self.cache.groups[key], jobs)

    def _decode_group(self, group, jobs: list[GenerateJob]) -> None:
        """One forward for every sequence of `group`: the last token of each, their caches left-padded."""
        device = _device(group.model)
        longest = max(j.length for j in jobs)
        ids = torch.tensor([[j.generated[-1]] for j in jobs], device=device)  # [batch, 1]
        mask = torch.zeros(len(jobs), longest + 1, dtype=torch.long, device=device)  # [batch, longest + 1]
        for row, j in enumerate(jobs):
            mask[row, longest - j.length :] = 1
        positions = torch.tensor([[j.length] for j in jobs], device=device)  # [batch, 1]
        layers = []
        for layer in range(len(jobs[0].past)):
            keys = [_pad_left(j.past[layer][0], longest) for j in jobs]
            values = [_pad_left(j.past[layer][1], longest) for j in jobs]
            layers.append((torch.cat(keys), torch.cat(values)))  # [batch, kv_heads, longest, head_dim]
        from transformers import DynamicCache

        out = self._forward(group, ids, mask, positions, DynamicCache(ddp_cache_data=layers), [j.served for j in jobs])
        new = _layers(out.past_key_values)
        for row, j in enumerate(jobs):
            # keep each sequence's own cache: its old positions plus the one just computed
            j.past = [(torch.cat([k0, k[row : row + 1, :, -1:]], dim=2), torch.cat([v0, v[row : row + 1, :, -1:]], dim=2))
                      for (k0, v0), (k, v) in zip(j.past, new)]
            j.length += 1
        logits = out.logits[:, -1, :]  # [batch, vocab]
        for row, j in enumerate(jobs):
            self._accept(j, logits[row : row + 1])

    def _forward(self, group, ids, mask, positions, past, served: list[Served]):
        kwargs = {"input_ids": ids, "use_cache": True}
        if mask is not None:
            kwargs.update(attention_mask=mask, position_ids=positions, past_key_values=past)
        from peft import PeftModel

        if group.shared and isinstance(group.model, PeftModel):
            kwargs["adapter_names"] = [BASE if s.kind == "base" else s.peft_name for s in served]
        return group.model(**kwargs)

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
        if isinstance(finish, str):
            self._send_text(job, final=True)  # what was held back; a stop string found earlier still ends it
            job.send(Done(finish, len(job.prompt_ids), len(job.generated)))
            if self.metrics is not None:
                self.metrics.finished(job.served.name, len(job.generated), time.monotonic() - job.created)
        elif isinstance(finish, Failed):
            job.send(finish)
        job.past = None
        job.served.running -= 1
        if job in self.running:
            self.running.remove(job)

    def _finish_failed(self, job: GenerateJob, failure: Failed) -> None:
        job.send(failure)
        job.served.running -= 1
        job.past = None

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


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """[1, heads, n, dim] -> [1, heads, length, dim], zeros first (masked out by the attention mask)."""
    missing = length - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


def _device(model) -> torch.device:
    return next(model.parameters()).device
