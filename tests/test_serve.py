"""`reficr serve` (pipeline/service/serve.py) on the tiny profile's trained run (conftest ``tiny_run``, built once per
session): every endpoint, every input limit, a forced turn that matches ``Recommender.turn`` and ``reficr recommend``,
a model failure (500 + logged id), concurrent clients, and a schemathesis property run over the OpenAPI schema."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from pipeline.errors import MissingArtifactError
from pipeline.model.base_model import weights_hash
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import GENERATION_ADAPTER, ModelSettings
from pipeline.service.serve import Service
from pipeline.tasks import templates
from pipeline.workflow.fusion import Queries
from tests.conftest import repo_env, run

pytestmark = pytest.mark.slow

SUPERBAD = [{"speaker": "seeker", "text": "Hi! I loved Superbad and The Hangover, any other comedies?"}]
CONVERSATIONS = [
    SUPERBAD,
    [{"speaker": "seeker", "text": "I'm in the mood for a scary movie tonight."},
     {"speaker": "recommender", "text": "Do you like older horror films like The Shining?"},
     {"speaker": "seeker", "text": "Yes! Something like that, maybe with ghosts."}],
]


@pytest.fixture(scope="module")
def client(tiny_app):
    with TestClient(tiny_app) as c:
        yield c


def post(client, body) -> tuple[int, dict]:
    response = client.post("/v1/recommend", json=body)
    return response.status_code, response.json()


def test_a_run_with_a_generation_adapter_embeds_with_one_and_generates_with_the_other(tiny_run, tiny_service, tmp_path):
    """Fine-tuning with a trunk pass keeps the joint steps' adapter apart (``models/reficr/generation``): the loaded
    run embeds with the folder's own adapter and generates (scores, ranks, replies) with that one."""
    repo = tiny_run.copy(tmp_path / "repo")
    tuned = RetrievableLM.load(repo / "models/base", adapter=repo / "models/reficr", trainable=True)
    with torch.no_grad():
        for name, weight in tuned.model.named_parameters():
            if "lora_B" in name:
                weight.mul_(-1.0)  # another adapter on the same layers
    generating = repo / "models/reficr" / GENERATION_ADAPTER
    tuned.save_adapter(generating)
    service = Service.load(repo, "redial")
    system, single = service.system, tiny_service.system
    assert system.lm is not system.encoder.lm and single.lm is single.encoder.lm
    text, prompt, target = ["Seeker: any comedies?"], ["Recommend a comedy."], ["Superbad"]
    assert np.array_equal(system.encoder.lm.embed(text, "x"), single.encoder.lm.embed(text, "x"))
    alone = ModelSettings(**json.loads((repo / "data/eval/redial/recommender.json").read_text())["model"]).load(
        repo / "models/base", adapter=generating, merge=True)
    def loglik(lm) -> float:
        return float(lm.score(prompt, target)[0].sum())

    assert loglik(system.lm) == loglik(alone) != loglik(single.lm)
    assert service.model.generation_adapter_sha256 == weights_hash(generating) != service.model.adapter_sha256


# ----------------------------------------------------------------------------- endpoints
def test_healthz_names_the_loaded_run(client, tiny_run, tiny_service):
    response = client.get("/healthz")
    assert response.status_code == 200
    health = response.json()
    items = pd.read_parquet(tiny_run.repo / "data/interim/redial/items.parquet")
    adapter_manifest = json.loads((tiny_run.repo / "models/reficr/reficr_adapter.json").read_text())
    assert health["status"] == "ok" and health["dataset"] == "redial"
    assert health["corpus_size"] == len(items) == len(tiny_service.system.corpus.item_ids)
    assert health["adapter_sha256"] == weights_hash(tiny_run.repo / "models/reficr")
    assert health["generation_adapter_sha256"] is None  # the tiny profile has no trunk pass: one adapter does both
    assert health["base_weights_sha256"] == adapter_manifest["base_weights_sha256"]
    assert 0 < health["load_seconds"] < 600
    assert health["limits"]["max_top_k"] == tiny_run.params["ranking"]["candidates"] == 10


def test_the_chat_page_is_served_at_root(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="message"' in page and 'id="force"' in page and "/v1/recommend" in page and "/healthz" in page


def test_openapi_documents_the_endpoints_and_the_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/", "/healthz", "/v1/recommend"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    request = schemas["RecommendRequest"]["properties"]
    assert request["top_k"]["minimum"] == 1 and request["top_k"]["maximum"] == 10 and request["top_k"]["default"] == 10
    assert request["context"]["minItems"] == 1 and request["context"]["maxItems"] == 50
    assert schemas["Utterance"]["properties"]["text"]["maxLength"] == 2000
    assert schemas["Utterance"]["properties"]["speaker"]["enum"] == ["seeker", "recommender"]
    assert {"413", "422", "500", "503"} <= set(spec["paths"]["/v1/recommend"]["post"]["responses"])
    assert set(schemas["Recommendation"]["required"]) >= {"actions", "candidates", "knowledge", "recommended", "response", "timings_ms"}


# ----------------------------------------------------------------------------- a turn
def test_a_forced_turn_is_the_recommenders_turn_with_scores_and_timings(client, tiny_service):
    system, recommender = tiny_service.system, tiny_service.recommender
    assert recommender.scorer is not None and recommender.choice is not None  # evaluate saved retrieval+knowledge's choice
    status, answer = post(client, {"context": SUPERBAD, "force_recommend": True, "top_k": 5})
    assert status == 200, answer
    expected = recommender.turn(SUPERBAD, force_recommend=True)  # the library's own turn: same content
    assert answer["actions"] == expected.actions and answer["dm_output"] == expected.dm_output
    assert [c["item_id"] for c in answer["candidates"]] == expected.candidates[:5]
    assert [r["item_id"] for r in answer["recommended"]] == expected.recommended
    assert answer["knowledge"] == expected.knowledge and answer["ranking_output"] == expected.ranking_output
    assert answer["response"] == expected.response
    assert all(c["title"] == system.title[c["item_id"]] for c in answer["candidates"] + answer["recommended"])
    # each score is the item's retrieval+knowledge score (what the candidates are ranked by), best first
    text = system.render(SUPERBAD)
    vector = system.encoder.conversations([text], templates.CONV2ITEM_QUERY)
    logits = system.corpus.scores(vector) / recommender.temperature
    queries = Queries([text], [recommender.named(SUPERBAD)], vector, logits)
    scores = recommender.scorer.scores(queries, recommender.choice.fusion_weights, recommender.choice)[0]
    row = {item: i for i, item in enumerate(system.corpus.item_ids)}
    assert [c["score"] for c in answer["candidates"]] == pytest.approx([float(scores[row[c["item_id"]]]) for c in answer["candidates"]], abs=1e-5)
    assert all(a["score"] >= b["score"] - 1e-5 for a, b in zip(answer["candidates"], answer["candidates"][1:]))
    assert set(answer["timings_ms"]) == {"dm", "retrieve", "knowledge", "rank", "respond"}
    assert all(v > 0 for v in answer["timings_ms"].values())


def test_items_the_conversation_names_are_not_recommended_unless_asked_for(client, tiny_service, monkeypatch):
    """With popularity alone deciding, the most popular item heads the candidates; named in the conversation, it is
    left out by default and kept with ``include_named`` (the service and the library's turn alike)."""
    recommender = tiny_service.recommender
    monkeypatch.setattr(recommender, "choice", dataclasses.replace(recommender.choice, fusion_weights={"popularity": 1.0}))
    top = recommender.system.corpus.item_ids[int(recommender.scorer.popularity.argmax())]
    context = [{"speaker": "seeker", "text": f"I loved {recommender.system.title[top]}. Anything like it?"}]
    assert recommender.named(context) == [top]
    kept = recommender.turn(context, force_recommend=True, include_named=True)
    assert kept.candidates[0] == top
    default = recommender.turn(context, force_recommend=True)
    assert top not in default.candidates and top not in default.recommended and default.candidates == kept.candidates[1:] + default.candidates[-1:]
    for body, present in (({"context": context, "force_recommend": True}, False),
                          ({"context": context, "force_recommend": True, "include_named": True}, True)):
        status, answer = post(client, body)
        assert status == 200 and (top in [c["item_id"] for c in answer["candidates"]]) == present, answer


def test_reficr_recommend_writes_what_the_service_answers(client, tiny_run, tmp_path):
    lines = [{"context": c, "force_recommend": True} for c in CONVERSATIONS]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run([str(Path(sys.executable).parent / "reficr"), "recommend", "--dataset", "redial", "--input", str(tmp_path / "in.jsonl"),
         "--output", str(tmp_path / "out.jsonl"), "--root", str(tiny_run.repo)], tiny_run.repo, repo_env(tiny_run.repo))
    written = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    served = [post(client, body)[1] for body in lines]
    for w, s in zip(written, served, strict=True):
        for answer in (w, s):
            answer.pop("timings_ms")
            answer["scores"] = [c.pop("score") for c in answer["candidates"]]
        assert w.pop("scores") == pytest.approx(s.pop("scores"), abs=1e-5)  # another process: same up to rounding
        assert w == s


def test_reficr_recommend_reports_every_bad_line_before_loading_a_model(tmp_path):
    (tmp_path / "in.jsonl").write_text("\n".join([
        json.dumps({"context": SUPERBAD}),
        "{not json",
        json.dumps({"context": [{"speaker": "bot", "text": "hi"}]}),
        json.dumps({"context": []}),
        json.dumps({"context": SUPERBAD, "top_k": 0}),
    ]) + "\n")
    # no trained run under tmp_path: the input is checked first, so the answer is about the input
    from typer.testing import CliRunner

    from pipeline.service.cli import app

    result = CliRunner().invoke(app, ["recommend", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                                      "--root", str(tmp_path)])
    assert result.exit_code == 2
    said = result.output
    assert "4 problem(s), nothing was run" in said and "  line 1:" not in said
    assert "line 2: (the line): Invalid JSON" in said
    assert "line 3: context.0.speaker: Input should be 'seeker' or 'recommender'" in said
    assert "line 4: context: List should have at least 1 item" in said
    assert "line 5: top_k: Input should be greater than or equal to 1" in said
    assert not (tmp_path / "o.jsonl").exists()


def test_reficr_recommend_names_the_dvc_target_of_a_missing_run(tmp_path):
    from typer.testing import CliRunner

    from pipeline.service.cli import app

    (tmp_path / "in.jsonl").write_text(json.dumps({"context": SUPERBAD}) + "\n")
    result = CliRunner().invoke(app, ["recommend", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                                      "--root", str(tmp_path)])
    # `dvc repro evaluate@redial` makes it (the installed `reficr` prints it as one `error:` line: test_reliability)
    assert result.exit_code != 0 and isinstance(result.exception, MissingArtifactError)
    assert "`dvc repro evaluate@redial` makes it" in str(result.exception)


# ----------------------------------------------------------------------------- limits
TOO_MANY = [{"speaker": "seeker", "text": "hi"}] * 51


@pytest.mark.parametrize("body, where, says", [
    ({"context": []}, ["body", "context"], "at least 1 item"),
    ({}, ["body", "context"], "Field required"),
    ({"context": TOO_MANY}, ["body", "context"], "at most 50 items"),
    ({"context": [{"speaker": "seeker", "text": "x" * 2001}]}, ["body", "context", 0, "text"], "at most 2000 characters"),
    ({"context": [{"speaker": "seeker", "text": ""}]}, ["body", "context", 0, "text"], "at least 1 character"),
    ({"context": [{"speaker": "bot", "text": "hi"}]}, ["body", "context", 0, "speaker"], "'seeker' or 'recommender'"),
    ({"context": SUPERBAD, "top_k": 0}, ["body", "top_k"], "greater than or equal to 1"),
    ({"context": SUPERBAD, "top_k": 11}, ["body", "top_k"], "less than or equal to 10"),
    ({"context": SUPERBAD, "forceRecommend": True}, ["body", "forceRecommend"], "Extra inputs are not permitted"),
], ids=["empty-context", "no-context", "too-many-utterances", "utterance-too-long", "empty-utterance", "unknown-speaker",
        "top-k-0", "top-k-over-candidates", "unknown-field"])
def test_a_bad_request_gets_a_422_naming_the_problem(client, body, where, says):
    status, answer = post(client, body)
    assert status == 422
    assert any(d["loc"] == where and says in d["msg"] for d in answer["detail"]), answer


def test_invalid_json_gets_a_422(client):
    response = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in json.dumps(response.json())


def test_a_body_over_the_limit_gets_a_413_with_or_without_a_length(client):
    big = json.dumps({"context": [{"speaker": "seeker", "text": "x" * 2000}] * 600}).encode()
    assert len(big) > 1 << 20
    response = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "at most 1,048,576 bytes" in response.json()["detail"]
    chunked = client.post("/v1/recommend", content=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                          headers={"content-type": "application/json"})  # no Content-Length: counted as it comes
    assert chunked.status_code == 413 and "too large" in chunked.json()["detail"]


# ----------------------------------------------------------------------------- failures and concurrency
def test_a_model_failure_is_a_500_with_an_id_in_the_log(client, tiny_service, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("injected generation failure")

    monkeypatch.setattr(tiny_service.system, "respond", fail)  # the real recommender, failing in its last step
    with caplog.at_level(logging.ERROR, logger="pipeline.service.serve"):
        status, answer = post(client, {"context": SUPERBAD})
    assert status == 500 and answer["request_id"] and "server log" in answer["detail"]
    logged = [r for r in caplog.records if answer["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info and "injected generation failure" in str(logged[0].exc_info[1])
    monkeypatch.undo()
    assert post(client, {"context": SUPERBAD})[0] == 200  # the lock was released


def test_concurrent_clients_all_get_their_own_correct_answer(live_server):
    def call(body: dict) -> dict:
        request = urllib.request.Request(f"{live_server}/v1/recommend", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.load(response)
        answer.pop("timings_ms")
        return answer

    bodies = [{"context": c, "force_recommend": True} for c in CONVERSATIONS]
    alone = [call(b) for b in bodies]
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, call(bodies[i % 2]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [results.get(i) for i in range(4)] == [alone[i % 2] for i in range(4)]


def test_health_answers_while_the_model_is_busy_and_a_full_queue_is_refused_at_once(tiny_service, monkeypatch):
    from pipeline.service.serve import create_app

    entered, release = threading.Event(), threading.Event()
    respond = tiny_service.system.respond

    def slow(*args, **kwargs):  # the real reply, held until the test lets it go
        entered.set()
        release.wait(timeout=120)
        return respond(*args, **kwargs)

    monkeypatch.setattr(tiny_service.system, "respond", slow)
    with TestClient(create_app(tiny_service, max_queue=0)) as client:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(status=post(client, {"context": SUPERBAD, "force_recommend": True})[0]))
        worker.start()
        assert entered.wait(timeout=120)  # the model is busy with the first request
        try:
            assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
            status, answer = post(client, {"context": SUPERBAD})
            assert status == 503 and "already waiting" in answer["detail"]
        finally:
            release.set()
            worker.join(timeout=300)
    assert first == {"status": 200}


# ----------------------------------------------------------------------------- property-based: schemathesis
# schemathesis' lazy pytest plugin (``schemathesis.pytest.from_fixture``) reads ``request.node._nodeid``, which
# pytest 9 removed; the test drives each operation's hypothesis strategy itself instead.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_property_run(tiny_app, mode):
    """Every operation of the app's own /openapi.json, called in-process (ASGI) with generated requests: no 5xx;
    status codes, content types and bodies as the schema says; invalid input rejected, valid input accepted.
    Few examples: each valid body costs a model turn (~1 s on the tiny model), invalid ones only validation."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", tiny_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("GET", "/healthz"), ("POST", "/v1/recommend")}
    if mode is GenerationMode.NEGATIVE:  # a GET without parameters has nothing to make invalid
        operations = [op for op in operations if len(op.body) or len(op.query) or len(op.path_parameters)]
        assert [(op.method.upper(), op.path) for op in operations] == [("POST", "/v1/recommend")]
    calls = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=12, derandomize=True,
                  database=None)
        def check(case):
            calls.append(case.call_and_validate(timeout=120).status_code)  # schemathesis' 10 s is one slow model turn

        check()
    assert len(calls) >= len(operations)
    assert all(code < 500 for code in calls), calls
    if mode is GenerationMode.NEGATIVE:  # some generated bodies are invalid and were refused as the schema says
        assert any(400 <= code < 500 for code in calls), calls
