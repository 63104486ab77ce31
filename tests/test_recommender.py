"""The ReFICR workflow (pipeline.recommender) on the small base model and a slice of the real ReDial corpus."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import templates
from pipeline.data.ingest import ingest
from pipeline.encoder import Encoder
from pipeline.recommender import ConversationStore, ItemCorpus, ReFICR, context_item_lists, dm_choices, score_endings
from pipeline.settings import ModelSettings, RecommenderSettings

from tests.conftest import RAW

SETTINGS = RecommenderSettings(candidates=5, knowledge_utterances=1, top_k=20, items_in_response=3, query_length=48,
                               document_length=32, prompt_length=256, context_max_utterances=12, context_max_chars=1200,
                               embed_batch=8, generation_batch=4, max_new_tokens_dm=12, max_new_tokens_ranking=12,
                               max_new_tokens_response=12)


@pytest.fixture(scope="module")
def system(base_dir):
    tables = ingest("redial", RAW, seed=0, redial_valid_fraction=0.1, iard_heldout_fraction=0.15).tables
    items = tables["items"].head(60).reset_index(drop=True)
    lm = ModelSettings("cpu", "float32", None, "float32").load(base_dir)
    encoder = Encoder(lm, SETTINGS.query_length, SETTINGS.document_length, SETTINGS.embed_batch)
    conversations = ["Seeker: I love space horror\nRecommender: Try Alien", "Seeker: a cartoon for my kids\nRecommender: Up is great",
                     "Seeker: a heist film please\nRecommender: Heat"]
    ids = items["item_id"].tolist()
    store = ConversationStore(conversations, [[ids[0]], [ids[1]], [ids[2]]], ["d1", "d2", "d3"],
                              encoder.conversations(conversations, templates.CONV2CONV_SAMPLE))
    title = {i: t for i, t in zip(ids, items["title"])}
    return ReFICR(lm, ItemCorpus(ids, encoder.items(items["description"].tolist())), store, title, SETTINGS), tables


@pytest.mark.slow
def test_retrieve_is_exact_search_over_the_embedded_corpus(system):
    reficr, _ = system
    texts = ["Seeker: any good comedies?", "Seeker: I liked a scary movie last week"]
    lists = reficr.retrieve(texts)
    query = reficr.encoder.conversations(texts, templates.CONV2ITEM_QUERY)
    expected = np.argsort(-(query @ reficr.corpus.vectors.T), axis=1, kind="stable")[:, : SETTINGS.top_k]
    assert [len(x) for x in lists] == [SETTINGS.top_k] * 2
    assert lists == [[reficr.corpus.item_ids[i] for i in row] for row in expected]


@pytest.mark.slow
def test_knowledge_comes_from_the_nearest_conversation_of_another_dialogue(system):
    reficr, _ = system
    text = "Seeker: I love space horror\nRecommender: Try Alien"
    query = reficr.encoder.conversations([text], templates.CONV2CONV_QUERY)[0]
    order = np.argsort(-(reficr.store.vectors @ query), kind="stable")  # store rows, nearest first
    nearest, second = (int(j) for j in order[:2])
    elsewhere, own = reficr.knowledge([text, text], ["elsewhere", reficr.store.dialogue_ids[nearest]])
    last_words = lambda j: reficr.store.queries[j].split("\n")[-1]  # noqa: E731 (knowledge_utterances = 1)
    assert elsewhere.endswith(last_words(nearest)) and reficr.title[reficr.store.gold[nearest][0]] in elsewhere
    assert own.endswith(last_words(second))  # the query's own dialogue is skipped


@pytest.mark.slow
def test_a_forced_turn_recommends_ranked_candidates_and_answers(system):
    reficr, _ = system
    turn = reficr.turn([{"speaker": "seeker", "text": "Hi! Can you recommend a funny movie like Superbad?"}], force_recommend=True)
    assert len(turn.candidates) == SETTINGS.candidates and set(turn.candidates) <= set(reficr.corpus.item_ids)
    assert len(turn.recommended) == SETTINGS.items_in_response and set(turn.recommended) <= set(turn.candidates)
    assert turn.knowledge.startswith("Recommended to a user") and isinstance(turn.response, str)
    unforced = reficr.turn([{"speaker": "seeker", "text": "Hello there"}])
    assert bool(unforced.candidates) == ("Recommend" in unforced.actions)  # recommends only when DM says so
    assert unforced.recommended == [] or "Recommend" in unforced.actions


def test_context_items_are_those_before_the_turn():
    tables = ingest("redial", RAW, seed=0, redial_valid_fraction=0.1, iard_heldout_fraction=0.15).tables
    turns, dialogues = tables["rec_turns"], tables["dialogues"]
    row = next(t for t in turns.itertuples() if any(t.gold_seen_in_context))  # a turn that repeats an earlier item
    lists = context_item_lists(dialogues, [row.instance_id])[0]
    start = int(row.instance_id.rsplit("#", 1)[1])
    assert len(lists) == start
    seen = {i for ids in lists for i in ids}
    assert [g in seen for g in row.gold_item_ids] == list(row.gold_seen_in_context)


def test_from_run_names_the_dvc_target_that_makes_a_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate@inspired"):
        ReFICR.from_run(tmp_path, "inspired")


@pytest.mark.slow
def test_dialogue_management_scores_an_action_where_generation_names_none(system):
    from pipeline.instructions import ACTIONS
    from pipeline.metrics import parse_actions

    reficr, _ = system
    prompts = [templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight")]
    free = reficr.generate(prompts, SETTINGS.max_new_tokens_dm)
    assert parse_actions(free[0], ACTIONS) is None  # the un-tuned model does not answer in <a></a> tags
    outputs, scored = reficr.manage_prompts(prompts)
    assert scored == [True] and outputs[0].endswith(free[0].strip())
    starts = [f"<a>{a}</a>\n" for a in ACTIONS]  # each action as the output's start (no EOS: an explanation follows)
    pairs = reficr.lm.tokenize_pairs(prompts * len(ACTIONS), starts, SETTINGS.prompt_length, 64, eos=False)
    loglik = [float((lp * m).sum()) for lp, m in zip(*reficr.lm.target_logprobs(pairs))]
    assert parse_actions(outputs[0], ACTIONS) == [ACTIONS[int(np.argmax(loglik))]]
    assert outputs[0] == starts[int(np.argmax(loglik))] + free[0].strip()
    assert reficr.manage(["Seeker: Hi! I want a funny movie for tonight"]) == outputs


def test_dm_choices_are_the_frequent_training_sequences():
    train = [["Recommend", "Explain"]] * 5 + [["Chat"]] * 3 + [["Explain", "Recommend"]] * 1 + [["Request"]] * 1 + [[]]
    assert dm_choices(train, min_share=0.1) == [["Recommend", "Explain"], ["Chat"], ["Explain", "Recommend"], ["Request"]]
    assert dm_choices(train, min_share=0.2) == [["Recommend", "Explain"], ["Chat"]]  # 5 and 3 of 10 with an action


@pytest.mark.slow
def test_scoring_endings_on_a_shared_prefix_equals_scoring_each_whole_sequence(system):
    reficr, _ = system
    prompt = templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight")
    endings = ["The user asks. <a>Recommend</a>", "The user asks. <a>Recommend</a><a>Explain</a>", "The user asks. <a>Chat</a>",
               "Something else entirely"]  # the last shares only the prompt
    fast = score_endings(reficr.lm, prompt, endings, SETTINGS.prompt_length, 64)
    whole = [s.sum() for s in reficr.lm.score([prompt] * len(endings), endings, max_prompt_length=SETTINGS.prompt_length)]
    np.testing.assert_allclose(fast, whole, atol=1e-3)
    assert len(set(np.round(fast, 3))) == len(endings)  # different endings, different scores


@pytest.mark.slow
def test_dialogue_management_can_choose_two_actions(system):
    from dataclasses import replace

    from pipeline.instructions import ACTIONS
    from pipeline.metrics import parse_actions

    reficr, _ = system
    two = [["Recommend", "Explain"], ["Respond", "Chat"]]
    chooser = ReFICR(reficr.lm, reficr.corpus, reficr.store, reficr.title, replace(SETTINGS, dm_choices=two))
    prompts = [templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight")]
    outputs, scored = chooser.manage_prompts(prompts)
    starts = ["".join(f"<a>{a}</a>" for a in c) + "\n" for c in two]
    best = two[int(np.argmax(score_endings(reficr.lm, prompts[0], starts, SETTINGS.prompt_length, 64, eos=False)))]
    assert scored == [True] and parse_actions(outputs[0], ACTIONS) == best and len(best) == 2
