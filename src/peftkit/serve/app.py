"""The HTTP API of `peftkit serve`: OpenAI-compatible routes over the engine (FastAPI).

    GET  /v1/models                 the base and every adapter the key may use (`parent`/`root`: the base)
    POST /v1/chat/completions       messages -> the served model's chat template (and its run's system prompt)
    POST /v1/completions            a plain-text prompt, continued as it is
    POST /v1/classify               {"model", "input": [texts]} -> labels and probabilities (encoder bases)
    POST /admin/adapters            {"name", "source"}: check and load an adapter (admin key)
    DELETE /admin/adapters/{name}   unload it
    GET  /health, /metrics          liveness and Prometheus metrics

Errors use OpenAI's envelope {"error": {"message", "type", "param", "code"}}: 400 bad request,
401 no or wrong key, 404 unknown model (also a model the key may not use, so names don't leak),
413 prompt over the context, 429 queue full (Retry-After), 503 shutting down, 504 timed out.
Generation defaults come from the run that trained the adapter: temperature 0 (greedy, as `peftkit
eval` scored it) and max_tokens = the run's eval.max_new_tokens; a request may override both.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftkit.errors import AdapterRefused, PeftkitError
from peftkit.serve.auth import KeyRing, Principal, bearer_key
from peftkit.serve.engine import Done, Engine, Failed, QueueFull, Result, SamplingParams, ShuttingDown, Token
from peftkit.serve.metrics import ServerMetrics

RETRY_AFTER_SECONDS = 2
DISCONNECT_POLL_SECONDS = 0.25


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


# ---------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    user: str | None = None
    # accepted at their neutral values only: anything else is a 400 naming the field
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0)
    logprobs: bool | int | None = Field(None)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict]
    name: str | None = None


class ChatBody(_Body):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str | list[str]
    echo: bool = Field(False)
    suffix: str | None = None


class ClassifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str] = Field(min_length=1)


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str


# ---------------------------------------------------------------------- the app
def create_app(engine: Engine, keys: KeyRing, metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI app over a started engine; `keys` decides who may use which model."""
    metrics = metrics or engine.metrics or ServerMetrics()
    app = FastAPI(title="peftkit serve", docs_url=None, redoc_url=None)
    app.state.engine, app.state.keys, app.state.metrics = engine, keys, metrics
    cache = engine.cache
    tokenizer = engine.tokenizer

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "this server does not support this field"
        elif first.get("type") == "json_invalid":
            msg, param = "the body is not valid JSON", None
        return _error_response(ApiError(400, f"{param}: {msg}" if param else msg, param=param))

    def principal(request: Request) -> Principal:
        """Who calls (every /v1 and /admin route starts here); 503 once the server is draining."""
        if engine.draining:
            raise ApiError(503, "the server is shutting down; retry on another instance", "service_unavailable",
                           code="shutting_down")
        key = bearer_key(request.headers.get("authorization"), request.headers.get("x-api-key"))
        found = keys.authenticate(key)
        if found is None:
            raise ApiError(401, "no API key given (Authorization: Bearer KEY)" if key is None else "invalid API key",
                           "authentication_error", code="invalid_api_key")
        return found

    def served_for(who: Principal, name: str):
        """The served model, or 404 when it does not exist or this key may not use it (the same answer)."""
        try:
            served = cache.lookup(name) if who.may_use(name) else None
        except AdapterRefused as exc:
            raise ApiError(400, str(exc), param="model", code="adapter_refused") from None
        if served is None:
            raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return served

    @app.get("/health")
    async def health():
        return {"status": "draining" if engine.draining else "ok", "queue": engine.queue_depth(),
                "running": len(engine.running), "adapters_resident": len(cache.resident)}

    @app.get("/metrics")
    async def prometheus(request: Request):
        if not keys.open and not principal(request).admin:
            raise ApiError(404, "not found", code="not_found")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        who = principal(request)
        created = int(time.time())
        rows = []
        for s in cache.listed():
            if not who.may_use(s.name):
                continue
            rows.append({"id": s.name, "object": "model", "created": created, "owned_by": "peftkit",
                         "root": cache.base_name if s.kind == "base" else s.source,
                         "parent": None if s.kind == "base" else cache.base_name,
                         "peftkit": s.describe()})
        return {"object": "list", "data": rows}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        who = principal(request)
        served = served_for(who, body.model)
        _require_generation(cache)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text_content(m.content, i)}
                    for i, m in enumerate(body.messages)]
        if served.instruction and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": served.instruction})  # as the run trained and evaluated it
        if messages[-1]["role"] == "assistant":
            raise ApiError(400, "messages: the last message is the assistant's; end with a user message", param="messages")
        try:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # the template rejects the roles' order, for example
            raise ApiError(400, f"messages: the chat template cannot render them ({type(exc).__name__})", param="messages")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return await _generate(request, "chat.completion", body, served, ids)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        who = principal(request)
        served = served_for(who, body.model)
        _require_generation(cache)
        if body.echo or body.suffix:
            raise ApiError(400, "echo and suffix are not supported", param="echo" if body.echo else "suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt: give one prompt per request (got {len(prompts)})", param="prompt")
        ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
        if not ids:
            raise ApiError(400, "prompt: empty", param="prompt")
        return await _generate(request, "text_completion", body, served, ids)

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody, request: Request):
        who = principal(request)
        served = served_for(who, body.model)
        if not cache.classification:
            raise ApiError(400, "this server generates text (a causal LM base); /v1/classify needs "
                                "`peftkit serve --base ENCODER` with classification adapters", param="model")
        if served.kind == "base":
            raise ApiError(400, f"'{body.model}' is the base encoder; its classifier head is untrained. "
                                "Name a classification adapter", param="model")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ApiError(400, "input: every item must be non-empty text", param="input")
        job = _submit(lambda loop: engine.submit_classify(served, texts, loop), body.model)
        event = await _next_result(request, job)
        if isinstance(event, Failed):
            metrics.request(body.model, event.status)
            raise ApiError(event.status, event.message, "server_error", code=event.code)
        metrics.request(body.model, 200)
        labels = served.labels
        data = [{"index": i, "label": labels[max(range(len(p)), key=p.__getitem__)],
                 "probabilities": dict(zip(labels, p))} for i, p in enumerate(event.value)]
        return {"object": "list", "model": body.model, "data": data}

    @app.post("/admin/adapters")
    async def admin_load(body: LoadBody, request: Request):
        _require_admin(principal(request))
        if not cache.roots:
            raise ApiError(400, "loading adapters while serving needs --adapter-root DIR (sources must lie under it)",
                           param="source")
        try:
            served = await asyncio.to_thread(cache.register, body.name, body.source, cache.roots)
        except AdapterRefused as exc:
            raise ApiError(400, str(exc), param="source", code="adapter_refused") from None
        result = await _control(request, lambda c: c.ensure_resident(served) and served.describe())
        if isinstance(result, Exception):
            cache.unregister(body.name)
            raise ApiError(400, str(result) if isinstance(result, PeftkitError) else
                           f"adapter '{body.name}': loading failed ({type(result).__name__})", code="adapter_refused")
        if result is None:
            cache.unregister(body.name)
            raise ApiError(503, "every adapter slot holds an adapter in use; retry", "service_unavailable",
                           code="slots_busy", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return {"id": body.name, "object": "model", "loaded": True, **result}

    @app.delete("/admin/adapters/{name}")
    async def admin_unload(name: str, request: Request):
        _require_admin(principal(request))
        served = cache.served.get(name)
        if served is None or served.kind == "base":
            raise ApiError(404, f"no adapter '{name}' is loaded", param="name", code="model_not_found")
        if served.running:
            raise ApiError(409, f"adapter '{name}' has {served.running} requests in flight; retry when they finish",
                           code="adapter_busy")
        cache.unregister(name)  # no new request finds it from here on
        await _control(request, lambda c: c.unload_detached(served))
        return {"id": name, "object": "model", "deleted": True}

    # ------------------------------------------------------------------ helpers bound to this app
    def _submit(make_job, model: str):
        loop = asyncio.get_running_loop()
        try:
            return make_job(loop)
        except QueueFull:
            metrics.request(model, 429)
            raise ApiError(429, f"the server's queue is full ({engine.max_queue} requests waiting); retry later",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", "service_unavailable", code="shutting_down")

    async def _control(request: Request, fn):
        job = engine.submit_control(fn, asyncio.get_running_loop())
        event = await job.queue.get()
        return event.value

    async def _generate(request: Request, kind: str, body: _Body, served, ids: list[int]):
        params = _sampling(body, served, len(ids), engine.context)
        job = _submit(lambda loop: engine.submit_generate(served, ids, params, loop), body.model)
        rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + job.id
        created = int(time.time())
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(request, job, kind, rid, created, body.model, include_usage),
                                     media_type="text/event-stream")
        parts: list[str] = []
        while True:
            event = await _next_event(request, job)
            if event is None:  # the client went away: generation was cancelled
                metrics.request(body.model, 499)
                return Response(status_code=499)
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Failed):
                metrics.request(body.model, event.status)
                raise ApiError(event.status, event.message, "server_error" if event.status >= 500 else "invalid_request_error",
                               code=event.code)
            elif isinstance(event, Done):
                break
        metrics.request(body.model, 200)
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": event.finish_reason,
                   "logprobs": None} if kind == "chat.completion" else
                  {"index": 0, "text": text, "finish_reason": event.finish_reason, "logprobs": None})
        return {"id": rid, "object": kind, "created": created, "model": body.model, "choices": [choice],
                "usage": _usage(event)}

    async def _sse(request, job, kind, rid, created, model, include_usage):
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

        def chunk(delta_or_text, finish=None):
            choice = ({"index": 0, "delta": delta_or_text, "finish_reason": finish, "logprobs": None}
                      if kind == "chat.completion" else
                      {"index": 0, "text": delta_or_text, "finish_reason": finish, "logprobs": None})
            return _sse_line({"id": rid, "object": chunk_kind, "created": created, "model": model, "choices": [choice]})

        try:
            if kind == "chat.completion":
                yield chunk({"role": "assistant", "content": ""})
            async for event in job.events():
                if isinstance(event, Token):
                    yield chunk({"content": event.text} if kind == "chat.completion" else event.text)
                elif isinstance(event, Failed):
                    metrics.request(model, event.status)
                    yield _sse_line({"error": {"message": event.message, "type": "server_error", "param": None,
                                               "code": event.code}})
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(event, Done):
                    yield chunk({} if kind == "chat.completion" else "", event.finish_reason)
                    if include_usage:
                        yield _sse_line({"id": rid, "object": chunk_kind, "created": created, "model": model,
                                         "choices": [], "usage": _usage(event)})
                    metrics.request(model, 200)
                    yield "data: [DONE]\n\n"
                    return
        finally:
            job.cancel()  # a client that disconnects mid-stream stops its generation (no-op when finished)

    async def _next_event(request: Request, job):
        """The job's next event, or None once the client has disconnected (the job is cancelled)."""
        while True:
            try:
                return await asyncio.wait_for(job.queue.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return None

    async def _next_result(request: Request, job):
        event = await _next_event(request, job)
        if event is None:
            raise ApiError(499, "client disconnected", code="cancelled")
        return event

    return app


# ---------------------------------------------------------------------- plain functions
def _sampling(body: _Body, served, prompt_tokens: int, context: int) -> SamplingParams:
    if body.logprobs:
        raise ApiError(400, "logprobs: not supported by this server", param="logprobs")
    room = context - prompt_tokens
    if room <= 0:
        raise ApiError(413, f"the prompt is {prompt_tokens} tokens; this server's context is {context} tokens "
                            "(prompt + output)", param="messages", code="context_length_exceeded")
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > room:
        raise ApiError(400, f"max_tokens: {asked} with a {prompt_tokens}-token prompt exceeds the context of {context} "
                            f"tokens (at most {room})", param="max_tokens", code="context_length_exceeded")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise ApiError(400, "stop: at most 4 sequences", param="stop")
    return SamplingParams(max_tokens=asked or min(served.max_new_tokens, room),
                          temperature=0.0 if body.temperature is None else body.temperature,
                          top_p=1.0 if body.top_p is None else body.top_p, stop=stop, seed=body.seed)


def _text_content(content: str | list[dict], index: int) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{index}].content: only text parts are supported", param=f"messages.{index}.content")
        texts.append(part["text"])
    return "".join(texts)


def _require_generation(cache) -> None:
    if cache.classification:
        raise ApiError(400, "this server's base is an encoder classifier; use POST /v1/classify", param="model")


def _require_admin(who: Principal) -> None:
    if not who.admin:
        raise ApiError(404, "not found", code="not_found")  # the admin API is not advertised to tenants


def _usage(done: Done) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _sse_line(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error_response(exc: ApiError) -> JSONResponse:
    error_type = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(exc.status, exc.type)
    return JSONResponse({"error": {"message": exc.message, "type": error_type, "param": exc.param, "code": exc.code}},
                        status_code=exc.status, headers=exc.headers)
