"""A web service of the kind users write around gpulanes: FastAPI, its own JSON endpoint with a
per-request deadline, and the KServe v2 app plus /metrics mounted beside it.

    pip install "gpulanes[server]" fastapi
    uvicorn examples.web_service:app --port 8080      # from the repository root
    curl -s localhost:8080/classify -H 'content-type: application/json' \
         -d '{"features": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], "deadline_ms": 50}'

The same models answer tritonclient at localhost:8080/v2/... (HTTP). Tested by
tests/python/test_web_service_example.py.
"""

import asyncio
from contextlib import asynccontextmanager
from typing import List

import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from torch import nn

import gpulanes as gl
from gpulanes import serve

LABELS = ["cat", "dog", "bird", "fish"]


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, len(LABELS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=-1)


def make_runtime() -> gl.Runtime:
    torch.manual_seed(0)
    rt = gl.Runtime(device="auto", cpu_lanes=2)
    rt.register("classifier", torch.jit.script(Classifier().eval()), slo_ms=100,
                example_inputs=torch.zeros(2, 8), max_batch_size=32, max_queue=1000)
    return rt


runtime = make_runtime()


@asynccontextmanager
async def lifespan(app: FastAPI):
    await asyncio.to_thread(runtime.start, False)  # profiles the model; readiness follows it
    yield
    await asyncio.to_thread(runtime.shutdown, True)  # drains what is in flight


app = FastAPI(title="classifier", lifespan=lifespan)


class Query(BaseModel):
    features: List[float] = Field(min_length=8, max_length=8)
    deadline_ms: float = Field(default=100, gt=0, le=60_000)


class Answer(BaseModel):
    label: str
    scores: List[float]


@app.exception_handler(gl.GpuLanesError)
async def gpulanes_error(request, exc: gl.GpuLanesError):
    # Typed errors keep their meaning: 503 shed or full (retry later), 504 late, 400 bad input.
    status = serve.http_status(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)


@app.post("/classify", response_model=Answer)
async def classify(q: Query) -> Answer:
    scores = await runtime.infer_async("classifier", torch.tensor(q.features),
                                       deadline_ms=q.deadline_ms)
    return Answer(label=LABELS[int(scores.argmax())], scores=scores.tolist())


# KServe v2 (for tritonclient and friends) and /metrics, mounted last so /classify wins.
app.mount("/", serve.app(runtime))
