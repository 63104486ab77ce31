"""A small content check: does the recommender answer what the seeker asks for?

Hand-written requests (written for this check, not taken from any dataset), each asking for one genre, some naming
titles the seeker liked. Each system's top 10 for a request (the items it names left out, as the chat does) is scored
by the share whose catalogue metadata lists the asked genre (``genre precision@10``), beside the catalogue's base rate
of that genre. Genres come from the item descriptions ("... Genres: comedy, romance. ..."), so the check runs where
the catalogue has them (ReDial's metadata).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.retrieval.collaborative import top_without
from pipeline.tasks import templates
from pipeline.workflow.fusion import KnowledgeChoice, KnowledgeScorer, Queries
from pipeline.workflow.reficr import ReFICR

TOP = 10
GENRES = re.compile(r"Genres: ([^.]*)\.")


@dataclass(frozen=True)
class Request:
    text: str
    genre: str
    titles: tuple[str, ...] = ()  # the catalogue titles ("Title (Year)") the text names


REQUESTS = (
    Request("I want something really scary tonight, maybe a haunted house movie.", "horror"),
    Request("Can you recommend a horror movie? I loved The Conjuring (2013).", "horror", ("The Conjuring (2013)",)),
    Request("I'm in the mood for a funny movie that will make me laugh out loud.", "comedy"),
    Request("I loved Superbad (2007) and The Hangover (2009). Any other comedies?", "comedy",
            ("Superbad (2007)", "The Hangover (2009)")),
    Request("Looking for an animated film I can watch with my kids this weekend.", "animation"),
    Request("My kids loved Finding Nemo (2003). What other cartoons would they like?", "animation", ("Finding Nemo (2003)",)),
    Request("I'd like a sweet romantic movie for date night.", "romance"),
    Request("Something like The Notebook (2004), a love story that makes me cry.", "romance", ("The Notebook (2004)",)),
    Request("I want a science fiction movie about space travel and aliens.", "sci-fi"),
    Request("I really enjoyed Interstellar (2014). More sci-fi like that, please.", "sci-fi", ("Interstellar (2014)",)),
    Request("Any good war movies? Something about soldiers in World War II.", "war"),
    Request("Saving Private Ryan (1998) was great. Other war films?", "war", ("Saving Private Ryan (1998)",)),
    Request("I want to watch a documentary, something true and informative.", "documentary"),
    Request("Recommend me an action movie with lots of explosions and car chases.", "action"),
    Request("I liked Die Hard (1988), give me more action films.", "action", ("Die Hard (1988)",)),
    Request("I love westerns with cowboys and gunfights.", "western"),
)


def item_genres(descriptions: pd.Series) -> list[set[str]]:
    return [set(g.strip() for g in m.group(1).split(",")) if (m := GENRES.search(d)) else set() for d in descriptions]


def answerable(requests, titles: dict[str, str], genres: list[set[str]]) -> tuple[list[Request], list[list[str]]]:
    """The requests whose named titles are all in the catalogue ("Title (Year)" as it shows them) and whose genre some
    item has (a slice of the catalogue may lack them), with the item ids each names."""
    by_title = {t: i for i, t in titles.items()}
    known = set().union(*genres) if genres else set()
    kept = [r for r in requests if all(t in by_title for t in r.titles) and r.genre in known]
    return kept, [[by_title[t] for t in r.titles] for r in kept]


def content_check(system: ReFICR, scorer: KnowledgeScorer, choice: KnowledgeChoice, temperature: float, items: pd.DataFrame,
                  requests=REQUESTS) -> dict[str, float]:
    """``content_check.<system>.genre_precision@10`` for popularity, pure Conv2Item ``retrieval`` and
    ``retrieval+knowledge``, and ``content_check.base_rate`` (the catalogue's share of each asked genre, averaged)."""
    if list(items["item_id"]) != scorer.item_ids:
        raise ValueError("content check: the items table and the scorer's catalogue differ; expected the same order")
    listed = item_genres(items["description"])
    genres = dict(zip(scorer.item_ids, listed))
    asked = len(requests)
    requests, named = answerable(requests, system.title, listed)
    if not requests:
        return {"content_check.n": 0, "content_check.skipped": asked}
    texts = [system.render([{"speaker": "seeker", "text": r.text}]) for r in requests]
    vectors = system.encoder.conversations(texts, templates.CONV2ITEM_QUERY)
    queries = Queries(texts, named, vectors, system.corpus.scores(vectors) / temperature)
    fused = scorer.scores(queries, choice.fusion_weights, choice)
    lists = {"popularity": [top_without(scorer.popularity, scorer.item_ids, n, TOP) for n in named],
             "retrieval": [top_without(row, scorer.item_ids, n, TOP) for row, n in zip(queries.retrieval_logits, named)],
             "retrieval+knowledge": [top_without(row, scorer.item_ids, n, TOP) for row, n in zip(fused, named)]}
    out: dict[str, float] = {"content_check.n": len(requests), "content_check.skipped": asked - len(requests)}
    for name, tops in lists.items():
        out[f"content_check.{name}.genre_precision@{TOP}"] = float(np.mean(
            [sum(r.genre in genres[i] for i in top) / TOP for r, top in zip(requests, tops)]))
    out["content_check.base_rate"] = float(np.mean([np.mean([r.genre in g for g in genres.values()]) for r in requests]))
    return out
