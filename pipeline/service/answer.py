"""One conversation turn answered for a person or a program: what ``reficr recommend`` writes per line, what
``reficr chat`` shows and what ``POST /v1/recommend`` returns (``pipeline.service.serve``) are the same record.

- ``Conversation`` / ``request_model``: the input contract and its limits (pydantic, so the service's OpenAPI
  schema documents them and the batch CLI checks a whole file against the same rules before it loads a model);
- ``answer_turn``: ``Recommender.turn`` (``pipeline.workflow.knowledge``: retrieval+knowledge's candidates, the items the
  conversation names left out unless asked for) with each stage timed and each candidate's score and title;
  ``Recommendation``: its result.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from pipeline.workflow.knowledge import Recommender
from pipeline.workflow.reficr import RUN_MANIFEST

# Input limits. A turn only reads the most recent utterances (``context_max_utterances``, ``context_max_chars``
# of the run's settings), so these only bound what a client may send, not what the model sees.
MAX_UTTERANCES = 50
MAX_UTTERANCE_CHARS = 2000
DEFAULT_TOP_K = 10


# ----------------------------------------------------------------------------- input
class Utterance(BaseModel):
    speaker: Literal["seeker", "recommender"] = Field(description="who said it: the seeker (user) or the recommender")
    text: str = Field(min_length=1, max_length=MAX_UTTERANCE_CHARS, description="what was said")


class Conversation(BaseModel):
    context: list[Utterance] = Field(min_length=1, max_length=MAX_UTTERANCES,
                                     description="the conversation so far, oldest utterance first")


class RecommendOptions(Conversation):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "context": [{"speaker": "seeker", "text": "Hi! I loved Superbad and The Hangover. Any other comedies?"}],
        "force_recommend": True, "top_k": 5}]})

    force_recommend: bool = Field(False, description="retrieve, rank and recommend even when dialogue management does not say to")
    include_named: bool = Field(False, description="also recommend items the conversation already names (left out by default)")


def request_model(max_top_k: int) -> type[RecommendOptions]:
    """The body of ``POST /v1/recommend`` and of one line of ``reficr recommend``'s input, for a run that ranks
    ``max_top_k`` candidates: ``top_k`` in 1..``max_top_k``, default ``min(10, max_top_k)``."""
    top_k = Field(min(DEFAULT_TOP_K, max_top_k), ge=1, le=max_top_k,
                  description=f"how many of the {max_top_k} retrieved candidates to list (the model ranks all of them)")
    return create_model("RecommendRequest", __base__=RecommendOptions, top_k=(int, top_k))


def run_candidate_count(root: str | Path, dataset: str) -> int | None:
    """The candidate count (``ranking.candidates``) of the run ``evaluate@<dataset>`` saved, read without loading
    the model; None when there is no run."""
    manifest = Path(root) / "data/eval" / dataset / RUN_MANIFEST
    return json.loads(manifest.read_text())["settings"]["candidates"] if manifest.exists() else None


def validation_problems(error) -> list[str]:
    """A pydantic ``ValidationError`` as one line per problem: where, what is wrong, what was given."""
    out = []
    for e in error.errors(include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "(the line)"
        given = e.get("input")
        shown = f" (got {json.dumps(given)[:60]})" if e["type"] != "missing" and not isinstance(given, (dict, list)) else ""
        out.append(f"{where}: {e['msg']}{shown}")
    return out


# ----------------------------------------------------------------------------- output
class Candidate(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="the candidate's score: retrieval+knowledge's mixture (a probability over the catalogue) "
                                     "where the run has one, else the retrieval score (cosine, + the item bias when learned)")


class RecommendedItem(BaseModel):
    item_id: str
    title: str


class StageTimings(BaseModel):
    """Milliseconds per stage; 0 for the stages a turn without a recommendation skips."""

    dm: float = Field(description="rendering the context and dialogue management")
    retrieve: float = Field(description="Conv2Item and the knowledge scores: embedding the conversation, scoring the item corpus")
    knowledge: float = Field(description="Conv2Conv: collaborative knowledge from a similar conversation")
    rank: float = Field(description="the model's ranking of the candidates")
    respond: float = Field(description="response generation")


class Recommendation(BaseModel):
    actions: list[str] = Field(description="dialogue actions dialogue management chose")
    dm_output: str = Field(description="dialogue management's <a>action</a> tags, then its explanation")
    candidates: list[Candidate] = Field(description="retrieved candidates, best first (top_k of them); empty without a recommendation")
    knowledge: str = Field(description="collaborative knowledge shown to the ranker ('None' without a recommendation)")
    ranking_output: str = Field(description="the ranker's raw output")
    recommended: list[RecommendedItem] = Field(description="the ranked items the response names, in the model's order")
    response: str = Field(description="the recommender's reply")
    timings_ms: StageTimings


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round((time.perf_counter() - start) * 1000, 3)


def answer_turn(recommender: Recommender, context: list[dict], force_recommend: bool = False,
                top_k: int | None = None, include_named: bool = False) -> Recommendation:
    """``Recommender.turn`` with per-stage timings, the candidates' scores and titles. ``top_k`` cuts the listed
    candidates (default: all ``settings.candidates`` the model ranks); the turn itself does not change."""
    timings = dict.fromkeys(StageTimings.model_fields, 0.0)
    system = recommender.system
    turn = recommender.turn(context, force_recommend, include_named, timed=lambda stage: _timed(timings, stage))
    candidates = [Candidate(item_id=i, title=system.title[i], score=round(score, 6))
                  for i, score in list(zip(turn.candidates, turn.candidate_scores))[:top_k]]
    return Recommendation(actions=turn.actions, dm_output=turn.dm_output, candidates=candidates, knowledge=turn.knowledge,
                          ranking_output=turn.ranking_output,
                          recommended=[RecommendedItem(item_id=i, title=system.title[i]) for i in turn.recommended],
                          response=turn.response, timings_ms=StageTimings(**timings))
