"""``reficr serve``: the trained recommender as an HTTP service (FastAPI, run by uvicorn) and a web chat page.

    reficr serve --host 127.0.0.1 --port 8000 --dataset redial --root .
    curl -s localhost:8000/v1/recommend -H 'content-type: application/json' \\
         -d '{"context": [{"speaker": "seeker", "text": "Any comedies like Superbad?"}], "force_recommend": true}'

- ``GET /healthz``: dataset, corpus size, the model's identity (base and adapter weight hashes), load time;
- ``POST /v1/recommend``: one turn (``pipeline.service.answer``: the same record ``reficr recommend`` writes per line);
- ``GET /``: the chat page (``pipeline/service/static/chat.html``; the conversation lives in the page, sent whole each turn);
- ``GET /openapi.json``, ``/docs``: FastAPI's own description of all of it.

One process holds one trained run (one model, or two where fine-tuning kept the adapter that generates apart from
the one that embeds: ``pipeline.model.settings.generation_adapter``). Generation is not thread-safe, so model calls
are serialized by a lock: concurrent requests wait their turn (up to ``queue_timeout_s``, then 503; beyond
``max_queue`` waiting, 503 at once). The page and ``/healthz`` are answered on the event loop, never behind queued
model calls. Bad requests get a 4xx naming the problem and what is allowed (422 from the request schema, 413 for a
body over ``max_body_bytes``); a failure inside the model gets a 500 whose ``request_id`` is also in the server log.
To scale out, run more processes behind a load balancer: the service keeps no state between requests.
"""

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from pipeline import __version__
from pipeline.model.base_model import weights_hash
from pipeline.model.lm import ADAPTER_MANIFEST
from pipeline.model.settings import generation_adapter
from pipeline.service.answer import (
    DEFAULT_TOP_K,
    MAX_UTTERANCE_CHARS,
    MAX_UTTERANCES,
    Recommendation,
    answer_turn,
    request_model,
)
from pipeline.workflow.knowledge import Recommender
from pipeline.workflow.reficr import ReFICR

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # above any body the schema allows (50 utterances x 2,000 characters, JSON-escaped)
QUEUE_TIMEOUT_S = 300.0  # how long a request may wait for the model before a 503
MAX_QUEUE = 16  # requests waiting for the model beyond this get a 503 at once (the thread pool holds 40)


# ----------------------------------------------------------------------------- what the service loads
@dataclass(frozen=True)
class ModelIdentity:
    adapter: str  # the adapter folder
    adapter_sha256: str  # its safetensors weights (LoRA + item bias), as ``weights_hash`` computes it
    base_weights_sha256: str | None  # the base model the adapter was trained on (its manifest)
    generation_adapter_sha256: str | None = None  # the adapter that generates, where fine-tuning kept it apart


@dataclass
class Service:
    """A loaded trained run and what ``/healthz`` says about it."""

    recommender: Recommender
    dataset: str
    model: ModelIdentity
    load_seconds: float

    @property
    def system(self) -> ReFICR:
        return self.recommender.system

    @classmethod
    def load(cls, root: str | Path, dataset: str) -> "Service":
        """``Recommender.load`` (MissingArtifactError naming the `dvc repro` target when the run is missing), timed."""
        start = time.perf_counter()
        recommender = Recommender.load(root, dataset)
        adapter = Path(root) / "models/reficr"
        manifest = adapter / ADAPTER_MANIFEST
        base = json.loads(manifest.read_text()).get("base_weights_sha256") if manifest.exists() else None
        generating = generation_adapter(adapter)
        identity = ModelIdentity(str(adapter), weights_hash(adapter), base,
                                 weights_hash(generating) if generating != adapter else None)
        return cls(recommender, dataset, identity, round(time.perf_counter() - start, 3))


# ----------------------------------------------------------------------------- response records
class Limits(BaseModel):
    max_body_bytes: int
    max_utterances: int
    max_utterance_chars: int
    max_top_k: int = Field(description="the run's candidate count")
    default_top_k: int


class Health(BaseModel):
    status: str = Field(description="'ok' once the model is loaded (the service answers only then)")
    dataset: str
    corpus_size: int = Field(description="items the recommender retrieves from")
    conversations: int = Field(description="training conversations Conv2Conv retrieves knowledge from")
    adapter: str
    adapter_sha256: str
    base_weights_sha256: str | None
    generation_adapter_sha256: str | None = Field(
        description="the adapter that generates, where fine-tuning kept it apart from the one that embeds (else null)")
    load_seconds: float = Field(description="seconds it took to load the model and the run's embeddings")
    limits: Limits


class ErrorMessage(BaseModel):
    detail: str = Field(description="what was wrong and what is allowed")


class ServerError(BaseModel):
    detail: str
    request_id: str = Field(description="also in the server log, with the traceback")


# ----------------------------------------------------------------------------- the app
class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 before the app reads it (the body is read
    here, up to the limit, whether or not a Content-Length came with it)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self.too_large(int(declared), scope, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self.too_large(None, scope, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def too_large(self, size: int | None, scope, send) -> None:
        said = f"{size:,} bytes" if size is not None else "more than that"
        detail = f"request body too large: at most {self.max_bytes:,} bytes allowed, got {said}"
        await JSONResponse({"detail": detail}, status_code=413)(scope, None, send)


def create_app(service: Service, *, max_body_bytes: int = MAX_BODY_BYTES, queue_timeout_s: float = QUEUE_TIMEOUT_S,
               max_queue: int = MAX_QUEUE) -> FastAPI:
    """The FastAPI app over a loaded ``Service`` (tests build it on the tiny profile's run)."""
    system = service.system
    max_top_k = system.settings.candidates
    RecommendRequest = request_model(max_top_k)
    model_lock = threading.Lock()
    places = threading.BoundedSemaphore(max_queue + 1)  # the request at the model and those waiting for it
    limits = Limits(max_body_bytes=max_body_bytes, max_utterances=MAX_UTTERANCES, max_utterance_chars=MAX_UTTERANCE_CHARS,
                    max_top_k=max_top_k, default_top_k=min(DEFAULT_TOP_K, max_top_k))
    health = Health(status="ok", dataset=service.dataset, corpus_size=len(system.corpus.item_ids),
                    conversations=len(system.store.queries), adapter=service.model.adapter,
                    adapter_sha256=service.model.adapter_sha256, base_weights_sha256=service.model.base_weights_sha256,
                    generation_adapter_sha256=service.model.generation_adapter_sha256,
                    load_seconds=service.load_seconds, limits=limits)
    page = resources.files("pipeline.service").joinpath("static/chat.html").read_text(encoding="utf-8")

    app = FastAPI(title="reficr", version=__version__,
                  description="ReFICR conversational recommender: one trained run, one turn per request.")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/", response_class=HTMLResponse, summary="The chat page")
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", response_model=Health, summary="What is loaded")
    async def healthz() -> Health:
        return health

    @app.post("/v1/recommend", response_model=Recommendation, summary="One turn of the recommender",
              responses={400: {"model": ErrorMessage, "description": "a body that cannot be read as JSON text (e.g. not UTF-8)"},
                         413: {"model": ErrorMessage, "description": "body too large"},
                         500: {"model": ServerError, "description": "the model failed; the id is in the server log"},
                         503: {"model": ErrorMessage, "description": "the model stayed busy past the queue timeout, or "
                                                                    "too many requests were already waiting"}})
    def recommend(body: RecommendRequest):  # type: ignore[valid-type]
        """The recommender's action, candidates (with their scores), knowledge, ranked items and reply for the
        conversation in ``context`` (sent whole each turn), with per-stage timings. Items the conversation names are
        not recommended unless ``include_named``. Model calls are serialized."""
        request_id = uuid.uuid4().hex[:12]
        start = time.perf_counter()
        if not places.acquire(blocking=False):
            log.warning("%s: %d requests already waiting, answered 503", request_id, max_queue)
            return JSONResponse({"detail": f"{max_queue} requests are already waiting for the model; try again later"},
                                status_code=503)
        try:
            if not model_lock.acquire(timeout=queue_timeout_s):
                log.warning("%s: model busy for %.0f s, answered 503", request_id, queue_timeout_s)
                return JSONResponse({"detail": f"the model stayed busy for {queue_timeout_s:.0f} s; try again"}, status_code=503)
            try:
                context = [u.model_dump() for u in body.context]
                result = answer_turn(service.recommender, context, force_recommend=body.force_recommend, top_k=body.top_k,
                                     include_named=body.include_named)
            except Exception:
                log.exception("%s: the model failed on a %d-utterance context", request_id, len(body.context))
                return JSONResponse({"detail": "the recommender failed on this request; the server log has the details",
                                     "request_id": request_id}, status_code=500)
            finally:
                model_lock.release()
        finally:
            places.release()
        log.info("%s: %d utterances, force_recommend=%s -> %s in %.0f ms", request_id, len(body.context),
                 body.force_recommend, result.actions or "(no action)", (time.perf_counter() - start) * 1000)
        return result

    return app


def serve(root: str | Path, dataset: str, host: str, port: int, max_body_bytes: int = MAX_BODY_BYTES,
          queue_timeout_s: float = QUEUE_TIMEOUT_S, max_queue: int = MAX_QUEUE) -> None:
    """Load the run once, then answer on ``host:port`` with one uvicorn worker (one trained run in memory)."""
    import uvicorn

    service = Service.load(root, dataset)
    log.info("loaded %s (%d items) in %.1f s; adapter %s", dataset, len(service.system.corpus.item_ids),
             service.load_seconds, service.model.adapter_sha256[:12])
    uvicorn.run(create_app(service, max_body_bytes=max_body_bytes, queue_timeout_s=queue_timeout_s, max_queue=max_queue),
                host=host, port=port, workers=1, log_level="info")
