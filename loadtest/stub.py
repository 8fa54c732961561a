"""A minimal OpenAI-compatible stub server (raw asyncio, 127.0.0.1) for tests and the self-test.

It streams chat/completion chunks the way vLLM does (role chunk, one chunk per token,
reasoning in ``delta.reasoning`` then the answer in ``delta.content``, a usage chunk,
``[DONE]``), sets the ``x-route-*`` headers our server sets, and exports Prometheus
counters named like vLLM's. Thinking mode: ``enable_thinking: true``, a model name
containing "think", or (auto) ``reasoning_effort`` medium/high; then the first half of
the tokens are reasoning. With no delays every response is written at once.

``python -m loadtest.stub --port 8100 [--token-delay-ms 5]`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Optional

import orjson

_CHAT_HEAD = b'{"id":"stub","object":"chat.completion.chunk","model":"stub","choices":[{"index":0,"delta":'
_TEXT_HEAD = b'{"id":"stub","object":"text_completion","model":"stub","choices":[{"index":0,"text":'


@dataclass
class StubOptions:
    token_delay_s: float = 0.0  # between tokens
    ttft_delay_s: float = 0.0  # before the first token
    fail_every: int = 0  # every n-th request answers fail_status
    fail_status: int = 500
    usage: bool = True  # honour stream_options.include_usage
    reasoning_details: bool = True  # usage.completion_tokens_details.reasoning_tokens
    route_headers: bool = True


class StubServer:
    def __init__(self, options: Optional[StubOptions] = None) -> None:
        self.opt = options or StubOptions()
        self.requests = 0
        self.success = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.in_flight = 0
        self.auth_seen: set = set()
        self.server: Optional[asyncio.AbstractServer] = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), host, port, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def metrics_text(self) -> bytes:
        lbl = '{model_name="stub"}'
        lines = [
            "# TYPE vllm:request_success counter",
            f'vllm:request_success_total{{finished_reason="length",model_name="stub"}} {self.success}',
            "# TYPE vllm:prompt_tokens counter",
            f"vllm:prompt_tokens_total{lbl} {self.prompt_tokens}",
            "# TYPE vllm:generation_tokens counter",
            f"vllm:generation_tokens_total{lbl} {self.generation_tokens}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{lbl} {min(self.in_flight / 100.0, 1.0)}",
            "# TYPE qwen_serve_requests counter",
            f"qwen_serve_requests_total {self.requests}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _response(status: int, body: bytes, ctype: bytes = b"application/json", extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, ctype, len(body), extra)
    ) + body


def _chunk(payload: bytes) -> bytes:
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn(asyncio.Protocol):
    def __init__(self, stub: StubServer) -> None:
        self.stub = stub
        self.buf = b""
        self.transport: Optional[asyncio.Transport] = None
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k == "content-length":
                    length = int(v)
                elif k == "authorization":
                    self.stub.auth_seen.add(v.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self._handle(method, path.split("?")[0], body)

    def _handle(self, method: str, path: str, body: bytes) -> None:
        stub, t = self.stub, self.transport
        if method == "GET" and path == "/metrics":
            t.write(_response(200, stub.metrics_text(), b"text/plain; version=0.0.4"))
        elif method == "GET" and path in ("/health", "/v1/health"):
            t.write(_response(200, b""))
        elif method == "GET" and path == "/v1/models":
            t.write(_response(200, b'{"object":"list","data":[{"id":"stub","object":"model"}]}'))
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            self._generate(path.endswith("chat/completions"), orjson.loads(body or b"{}"))
        else:
            t.write(_response(404, b'{"error":{"message":"not found"}}'))

    def _generate(self, chat: bool, req: dict) -> None:
        stub, opt = self.stub, self.stub.opt
        stub.requests += 1
        if opt.fail_every and stub.requests % opt.fail_every == 0:
            self.transport.write(_response(opt.fail_status, b'{"error":{"message":"injected failure"}}'))
            return
        n = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        kwargs = req.get("chat_template_kwargs") or {}
        model = str(req.get("model", ""))
        if "enable_thinking" in kwargs:
            thinking, reason = bool(kwargs["enable_thinking"]), "explicit"
        elif "think" in model or "fast" in model:
            thinking, reason = "think" in model, "alias"
        else:
            thinking, reason = req.get("reasoning_effort") in ("medium", "high"), "auto"
        thinking = thinking and chat
        n_reason = n // 2 if thinking else 0
        if chat:
            text = " ".join(str(m.get("content", "")) for m in req.get("messages", []))
        else:
            text = str(req.get("prompt", ""))
        prompt_tokens = len(text.split()) + 1
        stub.prompt_tokens += prompt_tokens
        stub.generation_tokens += n
        mode = b"thinking" if thinking else b"fast"
        extra = b""
        if opt.route_headers:
            extra = b"x-route-mode: %s\r\nx-route-pool: %s\r\nx-route-reason: %s\r\n" % (
                mode, b"pool-" + mode, reason.encode())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}
        if opt.reasoning_details:
            usage["completion_tokens_details"] = {"reasoning_tokens": n_reason}
        if not req.get("stream"):
            self._full(chat, n, n_reason, usage, extra)
            return
        include_usage = opt.usage and (req.get("stream_options") or {}).get("include_usage")
        pieces = []
        if chat:
            pieces.append(_CHAT_HEAD + b'{"role":"assistant","content":""},"finish_reason":null}]}')
        for i in range(n):
            last = b'"length"' if i == n - 1 else b"null"
            if chat:
                field = b"reasoning" if i < n_reason else b"content"
                pieces.append(_CHAT_HEAD + b'{"%s":" tok%d"},"finish_reason":%s}]}' % (field, i, last))
            else:
                pieces.append(_TEXT_HEAD + b'" tok%d","finish_reason":%s}]}' % (i, last))
        if include_usage:
            pieces.append(b'{"id":"stub","choices":[],"usage":' + orjson.dumps(usage) + b"}")
        pieces.append(b"[DONE]")
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n%s\r\n" % extra)
        if opt.token_delay_s or opt.ttft_delay_s:
            self.busy = True
            stub.in_flight += 1
            asyncio.get_running_loop().create_task(self._slow(head, pieces))
        else:
            self.transport.write(head + b"".join(map(_chunk, pieces)) + b"0\r\n\r\n")
            stub.success += 1

    def _full(self, chat: bool, n: int, n_reason: int, usage: dict, extra: bytes) -> None:
        answer = "".join(f" tok{i}" for i in range(n_reason, n))
        if chat:
            msg = {"role": "assistant", "content": answer}
            if n_reason:
                msg["reasoning"] = "".join(f" tok{i}" for i in range(n_reason))
            choice = {"index": 0, "message": msg, "finish_reason": "length"}
        else:
            choice = {"index": 0, "text": answer, "finish_reason": "length"}
        body = orjson.dumps({"id": "stub", "choices": [choice], "usage": usage})
        self.transport.write(_response(200, body, extra=extra))
        self.stub.success += 1

    async def _slow(self, head: bytes, pieces: list) -> None:
        opt, t = self.stub.opt, self.transport
        try:
            t.write(head)
            if opt.ttft_delay_s:
                await asyncio.sleep(opt.ttft_delay_s)
            for i, p in enumerate(pieces):
                if t.is_closing():
                    return
                t.write(_chunk(p))
                # the role chunk goes out with the first token, as vLLM does
                if opt.token_delay_s and i > 0 and not p.startswith(b"{\"id\":\"stub\",\"choices\":[]"):
                    await asyncio.sleep(opt.token_delay_s)
            t.write(b"0\r\n\r\n")
            self.stub.success += 1
        finally:
            self.stub.in_flight -= 1
            self.busy = False
            if self.buf and not t.is_closing():
                self._next()

    def connection_lost(self, exc) -> None:
        self.buf = b""


@contextlib.contextmanager
def running_stub(options: Optional[StubOptions] = None):
    """A stub on its own event loop in a daemon thread; yields the StubServer (``.port``)."""
    stub = StubServer(options)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(stub.start())
        ready.set()
        loop.run_forever()

    th = threading.Thread(target=serve, name="loadtest-stub", daemon=True)
    th.start()
    if not ready.wait(10):
        raise RuntimeError("stub server did not start")
    try:
        yield stub
    finally:
        asyncio.run_coroutine_threadsafe(stub.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        th.join(10)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible stub server on 127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--token-delay-ms", type=float, default=0.0)
    ap.add_argument("--ttft-delay-ms", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import uvloop  # type: ignore

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    opts = StubOptions(args.token_delay_ms / 1000, args.ttft_delay_ms / 1000, args.fail_every)

    async def amain() -> None:
        stub = StubServer(opts)
        port = await stub.start(port=args.port)
        print(f"stub listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(amain())


if __name__ == "__main__":
    main()
