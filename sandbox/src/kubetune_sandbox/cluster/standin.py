"""A minimal OpenAI-compatible server for the sandbox's vLLM/TGI pods when real vLLM is not installed.

    python -m kubetune_sandbox.cluster.standin --runtime vllm --model DIR --served-model-name NAME --host IP \
        --port 8000 [--enable-lora --lora-modules NAME=DIR ...]          (vLLM's arguments)
    python -m kubetune_sandbox.cluster.standin --runtime tgi --model-id DIR --hostname IP --port 8000
        (TGI's; adapters from LORA_ADAPTERS="name=DIR,...")

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions (stream or not), POST /v1/completions,
POST /generate (TGI), GET /metrics (vLLM's request gauges). The base model answers to the served name;
each LoRA adapter (loaded with peft) to its own name, as vLLM does. Generation is greedy unless a
temperature is given, one request at a time (a 2-core laptop gains nothing from batching here). Unknown
arguments are accepted and ignored, so any rendered vLLM/TGI command line runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web


class Engine:
    def __init__(self, model_dir: str, served_name: str, adapters: dict[str, str]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.adapters = list(adapters)
        if adapters:
            from peft import PeftModel

            first, *rest = adapters.items()
            model = PeftModel.from_pretrained(model, first[1], adapter_name=first[0])
            for name, path in rest:
                model.load_adapter(path, adapter_name=name)
        self.model = model.eval()
        self.served_name = served_name
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0

    def names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def _prompt_ids(self, messages: list[dict[str, Any]] | None, prompt: str | None) -> Any:
        if messages is not None:
            if self.tokenizer.chat_template:
                encoded = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
                return encoded["input_ids"]  # type: ignore[call-overload,index]
            prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer(prompt or "", return_tensors="pt")["input_ids"]

    def generate(
        self,
        model_name: str,
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
    ) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens)."""
        import torch

        ids = self._prompt_ids(messages, prompt)
        options: dict[str, Any] = {"max_new_tokens": max(1, min(max_tokens, 1024))}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        else:
            options["do_sample"] = False
        self.waiting += 1
        with self.lock:
            self.waiting -= 1
            self.running += 1
            try:
                with torch.no_grad():
                    if self.adapters and model_name in self.adapters:
                        self.model.set_adapter(model_name)
                        output = self.model.generate(input_ids=ids, **options)
                    elif self.adapters:
                        with self.model.disable_adapter():
                            output = self.model.generate(input_ids=ids, **options)
                    else:
                        output = self.model.generate(input_ids=ids, **options)
            finally:
                self.running -= 1
        new = output[0][ids.shape[1] :]
        text = str(self.tokenizer.decode(new, skip_special_tokens=True))
        return text, int(ids.shape[1]), int(new.shape[0])


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return web.json_response(body, status=status)


def build_app(engine: Engine) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "owned_by": "kubetune-sandbox"} for name in engine.names()]
        return web.json_response({"object": "list", "data": data})

    async def metrics(request: web.Request) -> web.Response:
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running {engine.running}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting {engine.waiting}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def run(**kwargs: Any) -> tuple[str, int, int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: engine.generate(**kwargs))

    async def completions(request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not JSON")
        name = body.get("model") or engine.served_name
        if name not in engine.names():
            return _error(404, f"The model `{name}` does not exist.")
        kwargs: dict[str, Any] = {
            "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 64),
            "temperature": float(body.get("temperature") or 0.0),
        }
        if chat:
            if not isinstance(body.get("messages"), list):
                return _error(400, "messages must be a list")
            kwargs["messages"] = body["messages"]
        else:
            kwargs["prompt"] = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
        created, ident = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        text, prompt_tokens, completion_tokens = await run(model_name=name, **kwargs)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        obj = "chat.completion" if chat else "text_completion"
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            delta = {"role": "assistant", "content": text} if chat else None
            choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": text}
            chunk = {"id": ident, "object": f"{obj}.chunk", "created": created, "model": name,
                     "choices": [{**choice, "finish_reason": "stop"}], "usage": usage}  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        return web.json_response(
            {
                "id": ident,
                "object": obj,
                "created": created,
                "model": name,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        return await completions(request, chat=True)

    async def complete(request: web.Request) -> web.StreamResponse:
        return await completions(request, chat=False)

    async def tgi_generate(request: web.Request) -> web.Response:
        body = await request.json()
        parameters = body.get("parameters") or {}
        text, _, _ = await run(
            model_name=engine.served_name,
            prompt=str(body.get("inputs", "")),
            max_tokens=int(parameters.get("max_new_tokens") or 64),
            temperature=float(parameters.get("temperature") or 0.0),
        )
        return web.json_response({"generated_text": text})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/generate", tgi_generate)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubetune_sandbox.cluster.standin", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runtime", choices=["vllm", "tgi"], default="vllm")
    parser.add_argument("--model", "--model-id", dest="model", required=True)
    parser.add_argument("--served-model-name", dest="served_name")
    parser.add_argument("--host", "--hostname", dest="host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--lora-modules", nargs="*", default=[])
    args, _unknown = parser.parse_known_args(argv)
    return args


def adapters_from(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    pairs = list(args.lora_modules)
    if args.runtime == "tgi" and env.get("LORA_ADAPTERS"):
        pairs += env["LORA_ADAPTERS"].split(",")
    adapters = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if name and path:
            adapters[name] = path
    return adapters


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    served = args.served_name or Path(args.model).name
    print(f"kubetune sandbox stand-in for {args.runtime}: loading {args.model} as {served!r}", flush=True)
    engine = Engine(args.model, served, adapters_from(args, dict(os.environ)))
    print(f"serving {engine.names()} on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(build_app(engine), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
