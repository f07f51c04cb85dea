"""A pairwise judge is an external service: here, a small OpenAI-compatible stub (FastAPI on
uvicorn) whose models are judges of known bias. It reads the prompt ``clients/judge.py`` sends
(request, reference, "Answer A", "Answer B") and answers with one word, as the judge is asked to.

Models: ``first`` always names the answer shown first; ``longer`` names the longer answer (TIE at
equal length); ``fair`` names the answer equal to the reference (TIE when both or neither is).
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from helpers import free_port

JUDGES = ("first", "longer", "fair")
PROMPT = re.compile(
    r"(?:A reference answer: (?P<reference>.*?)\n\n)?Answer A:\n(?P<a>.*?)\n\nAnswer B:\n(?P<b>.*)\n\n"
    r"Which is better\?\Z",
    re.S,
)


def pick(judge: str, first: str, second: str, reference: str | None) -> str:
    """The stub judge's one-word verdict: A, B or TIE."""
    if judge == "first":
        return "A"
    if judge == "longer":
        return "TIE" if len(first) == len(second) else "A" if len(first) > len(second) else "B"
    a, b = first.strip() == reference, second.strip() == reference
    return "A" if a and not b else "B" if b and not a else "TIE"


def judge_app(asked: list[tuple[str, str, str]]):
    """The stub's FastAPI app; every judgment asked is appended to ``asked`` as (model, A, B)."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": j, "object": "model", "owned_by": "stub"} for j in JUDGES]}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        model = body.get("model")
        match = PROMPT.search(body["messages"][-1]["content"])
        if model not in JUDGES or match is None:
            raise HTTPException(400, f"not a judge prompt for a known judge: {model!r}")
        asked.append((model, match["a"], match["b"]))
        reply = pick(model, match["a"], match["b"], match["reference"])
        return {
            "id": f"judge-{len(asked)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


@pytest.fixture(scope="session")
def stub_judge():
    """A running stub judge: yields (base URL ending in /v1, the list of judgments asked)."""
    import uvicorn

    asked: list[tuple[str, str, str]] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(judge_app(asked), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stub judge did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", asked
    server.should_exit = True
    thread.join(timeout=10)
