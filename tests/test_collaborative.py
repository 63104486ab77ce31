"""The collaborative signals and their mixtures (``pipeline.retrieval.collaborative``, ``pipeline.workflow.fusion``), the mention linker
(``pipeline.workflow.knowledge``) and the content check's helpers, on numbers worked out by hand; then the signals on the
committed ReDial slice."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.content_check import REQUESTS, answerable, item_genres
from pipeline.retrieval.collaborative import (
    CoMention,
    ConversationKNN,
    as_distribution,
    choose_weights,
    gold_ranks,
    mixture,
    neighbour_votes,
    popularity_distribution,
    simplex_grid,
    softmax_rows,
    top_without,
    validation_score,
)
from pipeline.workflow.fusion import KnowledgeChoice, KnowledgeGrid, KnowledgeScorer, Queries, context_items
from pipeline.workflow.knowledge import MentionLinker

ITEMS = ["a", "b", "c", "d"]


def test_co_mention_counts_dialogues_naming_both_items_normalised_by_hand():
    # n: a 2, b 3, c 2, d 0; together: a-b 2, a-c 1, b-c 2 (the item itself never counts)
    co = CoMention([["a", "b"], ["a", "b", "c", "a"], ["b", "c"]], ITEMS)
    assert co.dialogues.tolist() == [2, 3, 2, 0]
    assert co.scores([["a"]], 0.0)[0] == pytest.approx([0, 2 / math.sqrt(2), 1 / math.sqrt(2), 0])
    assert co.scores([["a"]], 1.0)[0] == pytest.approx([0, 2 / math.sqrt(2) / 3, 1 / math.sqrt(2) / 2, 0])
    # two named items add up: a's row + c's row (c: a 1, b 2) / sqrt(2) each
    assert co.scores([["a", "c"]], 0.0)[0] == pytest.approx([1 / math.sqrt(2), 4 / math.sqrt(2), 1 / math.sqrt(2), 0])
    assert co.scores([[], ["zz"]], 0.0).tolist() == [[0.0] * 4, [0.0] * 4]  # nothing named, or nothing known: abstains


def test_neighbour_votes_weigh_each_neighbours_gold_by_its_similarity():
    similarity = np.array([[0.9, 0.5, -0.2]], dtype=np.float32)
    gold = [[0], [1, 2], [2]]
    assert neighbour_votes(similarity, gold, 3, 2, 1.0)[0] == pytest.approx([0.9, 0.5, 0.5])
    assert neighbour_votes(similarity, gold, 3, 2, 2.0)[0] == pytest.approx([0.81, 0.25, 0.25])
    assert neighbour_votes(similarity, gold, 3, 3, 1.0)[0] == pytest.approx([0.9, 0.5, 0.5])  # a negative one votes 0
    assert neighbour_votes(similarity, gold, 3, 1, 1.0)[0] == pytest.approx([0.9, 0.0, 0.0])


def test_conversation_knn_finds_the_contexts_sharing_words_and_items():
    knn = ConversationKNN(["a scary ghost house", "a funny comedy to laugh", "scary haunted ghost story"],
                          [[], ["b"], []], [["a"], ["b"], ["c"]], ITEMS)
    similarity = knn.similarity(["ghost, something scary"], [[]])
    assert similarity[0, 1] == 0 and similarity[0, 0] > 0 and similarity[0, 2] > 0
    votes = knn.scores(similarity, 3)[0]
    assert votes[1] == 0 and votes[0] > 0 and votes[2] > 0 and votes[3] == 0
    # an item named in the context is a word too: it finds the context that named it
    assert knn.similarity(["hello"], [["b"]])[0].argmax() == 1


def test_distributions_and_mixtures():
    assert as_distribution(np.array([[1.0, 3.0], [0.0, 0.0]])).tolist() == [[0.25, 0.75], [0.0, 0.0]]
    assert softmax_rows(np.array([[0.0, math.log(3)]])) == pytest.approx(np.array([[0.25, 0.75]]))
    assert popularity_distribution(np.array([1.0, 0.0, 2.0])) == pytest.approx([2 / 6, 1 / 6, 3 / 6])
    parts = {"x": np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), "p": np.array([0.5, 0.5], dtype=np.float32)}
    assert mixture(parts, {"x": 0.5, "p": 0.5}).tolist() == [[0.75, 0.25], [0.25, 0.75]]


def test_gold_ranks_count_ties_against_the_gold_item_and_the_score_is_the_mean_recall():
    scores = np.array([[0.1, 0.5, 0.3, 0.3]])
    assert gold_ranks(scores, [[2, 1]]).tolist() == [2, 0]  # item 2 ties with item 3: counted behind it
    assert validation_score(scores, [[2, 1]], cutoffs=(1, 3)) == pytest.approx((0.5 + 1.0) / 2)
    assert math.isnan(validation_score(scores, [[]]))
    assert gold_ranks(scores, [[2], [1]]).tolist() == [2, 0]  # one row of scores (popularity) serves every query


def test_the_weight_grid_covers_the_simplex_and_the_best_weights_win():
    grid = simplex_grid(["a", "b", "c"], 0.5)
    assert len(grid) == 6 and all(sum(w.values()) == pytest.approx(1) for w in grid)
    assert {tuple(w.values()) for w in grid} == {(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)}
    good = np.zeros((1, 60), dtype=np.float32)
    good[0, 59] = 1.0  # the gold item (59) first, the others tied behind it
    bad = np.concatenate([np.linspace(1.0, 0.5, 59), [0.0]])[None, :].astype(np.float32)  # the gold item last
    weights, score, tried = choose_weights({"good": good, "bad": bad}, [[59]], 0.25)
    # good 0 or 0.25: every bad item outscores the gold one (Recall@10 and @50 both 0); good 0.5: one does (both 1)
    assert tried == 5 and weights == {"good": 0.5, "bad": 0.5} and score == 1.0


CATALOGUE = ITEMS + [f"pad{i}" for i in range(56)]  # more items than the validation cut-offs (10, 50)


def fitted_scorer() -> KnowledgeScorer:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    return KnowledgeScorer(CATALOGUE, [["a", "b"], ["a", "c"], ["a", "b"]], ["ghost scary", "comedy funny"], [[], []],
                           [["c"], ["d"]], vectors, [["b"], ["d"]], np.array([3.0, 0.0, 1.0, 0.0] + [2.0] * 56))


def test_the_scorer_chooses_on_validation_and_scores_every_signal():
    scorer = fitted_scorer()
    # one validation context: names a, asks for something scary; its gold item: b (a co-mention of a)
    logits = np.zeros((1, len(CATALOGUE)), dtype=np.float32)
    logits[0, 3], logits[0, 1] = 5.0, -5.0  # retrieval likes d and puts b last
    queries = Queries(["something scary, a ghost"], [["a"]], np.array([[1.0, 0.0]], dtype=np.float32), logits)
    grid = KnowledgeGrid(co_mention_beta=[0.0], text_neighbours=[1], encoder_neighbours=[1], neighbour_power=[1.0], weight_step=0.5)
    choice = scorer.choose(queries, [[scorer.row["b"]]], grid)
    parts = scorer.parts(queries, choice)
    assert parts["co_mention"][0, :4] == pytest.approx([0, 2 / 3, 1 / 3, 0])  # a-b in 2 dialogues, a-c in 1
    assert parts["text_neighbours"][0, :4] == pytest.approx([0, 0, 1, 0])  # the scary context's gold: c
    assert parts["encoder_neighbours"][0, :4] == pytest.approx([0, 1, 0, 0])  # the nearest embedded context's gold: b
    assert all(p[0, 4:].sum() == 0 for n, p in parts.items() if n not in ("retrieval", "popularity"))
    assert parts["retrieval"][0].argmax() == 3
    # b is first by co-mention and by the encoder's neighbours, last by retrieval
    assert choice.validation["co_mention"] == 1.0 and choice.validation["encoder_neighbours"] == 1.0
    assert choice.validation["retrieval"] == 0.0
    assert choice.validation["retrieval+knowledge"] == 1.0 and choice.validation["collaborative_mix"] == 1.0
    assert choice.validation["popularity"] == 0.0 and choice.validation["text_neighbours"] == 0.0  # b is behind 50 there
    assert choice.fusion_weights["co_mention"] + choice.fusion_weights["encoder_neighbours"] > 0
    fused = scorer.scores(queries, choice.fusion_weights, choice)
    assert fused[0].argmax() == scorer.row["b"]
    assert KnowledgeChoice.from_json(choice.to_json()) == choice
    assert choice.metrics()["knowledge.validation_n"] == 1


def test_context_items_are_the_items_named_before_the_turn_once_each():
    dialogues = pd.DataFrame({"dialogue_id": ["redial:1"] * 4, "turn_index": [0, 1, 2, 3],
                              "item_ids": [["a"], ["b", "a"], [], ["c"]]})
    assert context_items(dialogues, ["redial:1#3"]) == [["a", "b"]]
    assert context_items(dialogues, ["redial:1#1"]) == [["a"]]


def test_the_linker_finds_titles_with_and_without_their_year():
    titles = {"r:1": "Superbad (2007)", "r:2": "The Hangover (2009)", "r:3": "The Hangover (2011)", "r:4": "Up (2009)",
              "r:5": "Jaws (1975)"}
    linker = MentionLinker(titles, np.array([5.0, 9.0, 1.0, 7.0, 2.0]), list(titles))
    assert linker.items("Hi! I loved Superbad and The Hangover, any other comedies?") == ["r:1", "r:2"]  # the popular one
    assert linker.items("I saw The Hangover (2011) and Jaws.") == ["r:3", "r:5"]  # a year picks that film
    assert linker.items("I got up early; the hangover was bad.") == []  # not written as titles
    assert linker.items("Up was fine. Jaws was better.") == []  # one word at a sentence's start: a word, not a title
    assert linker.items("I liked Up (2009) a lot") == ["r:4"]


def test_content_check_helpers():
    genres = item_genres(pd.Series(["X (2000). Genres: comedy, romance. Plot: y.", "Z (2001).", "W. Genres: horror."]))
    assert genres == [{"comedy", "romance"}, set(), {"horror"}]
    assert top_without(np.array([0.1, 0.9, 0.5, 0.7]), ITEMS, ["b"], k=2) == ["d", "c"]
    titles = {"r:1": "Superbad (2007)", "r:2": "The Hangover (2009)"}
    kept, named = answerable(REQUESTS, titles, [{"comedy"}, {"horror"}])
    assert all(r.genre in ("comedy", "horror") for r in kept) and ["r:1", "r:2"] in named
    assert not any(r.titles and r.titles != ("Superbad (2007)", "The Hangover (2009)") for r in kept)


def test_context_embeddings_round_trip_and_say_which_stage_makes_them(tmp_path):
    from pipeline.errors import DataError, MissingArtifactError
    from pipeline.retrieval.context_embeddings import ContextEmbeddings, training_contexts

    pairs = pd.DataFrame({"instance_id": ["d1#1", "d1#1", "d2#3", "d3#1"], "dialogue_id": ["d1", "d1", "d2", "d3"],
                          "query": ["q1", "q1", "q2", "q3"], "gold_item_ids": [["a", "b"], ["a", "b"], ["c"], ["d"]]})
    turns = training_contexts(pairs, 0, seed=0)
    assert turns.instance_id.tolist() == ["d1#1", "d2#3", "d3#1"]  # one row per turn, every turn
    assert turns.gold_seen_in_context.tolist() == [[False, False], [False], [False]]
    sample = training_contexts(pairs, 2, seed=0)
    assert len(sample) == 2 and sample.instance_id.tolist() == training_contexts(pairs, 2, seed=0).instance_id.tolist()
    folder = tmp_path / "redial"
    folder.mkdir()
    with pytest.raises(MissingArtifactError, match=r"dvc repro embed_contexts@redial"):
        ContextEmbeddings.load(folder, "train")
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    ContextEmbeddings(turns, vectors).save(folder, "train")
    back = ContextEmbeddings.load(folder, "train")
    assert back.vectors.tolist() == vectors.tolist() and back.contexts.instance_id.tolist() == turns.instance_id.tolist()
    assert [list(g) for g in back.contexts.gold_item_ids] == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(DataError, match="one row each"):
        ContextEmbeddings(turns, vectors[:2])
