"""The ReFICR workflow (pipeline.workflow.reficr) on the small base model and a slice of the real ReDial corpus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.ingest import ingest
from pipeline.model.encoder import Encoder
from pipeline.model.scoring import score_endings
from pipeline.model.settings import ModelSettings, RecommenderSettings
from pipeline.retrieval.corpus import ConversationStore, ItemCorpus, context_item_lists
from pipeline.tasks import templates
from pipeline.workflow.dialogue import dm_evidence
from pipeline.workflow.knowledge import MentionLinker, Recommender
from pipeline.workflow.reficr import ReFICR
from tests.conftest import RAW

SETTINGS = RecommenderSettings(candidates=5, knowledge_utterances=1, top_k=20, items_in_response=3, query_length=48,
                               document_length=32, prompt_length=256, context_max_utterances=12, context_max_chars=1200,
                               embed_batch=8, generation_batch=4, max_new_tokens_dm=12, max_new_tokens_ranking=12,
                               max_new_tokens_response=12)


@pytest.fixture(scope="module")
def system(base_dir):
    tables = ingest("redial", RAW, seed=0, redial_valid_fraction=0.1, iard_heldout_fraction=0.15).tables
    items = tables["items"].head(60).reset_index(drop=True)
    lm = ModelSettings(device="cpu", dtype="float32", quantization=None, inference_dtype="float32").load(base_dir)
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
    reficr, _ = system  # a run without retrieval+knowledge's choice: the candidates are Conv2Item's
    ids = reficr.corpus.item_ids
    recommender = Recommender(reficr, None, None, MentionLinker(reficr.title, np.zeros(len(ids)), ids), 1.0)
    turn = recommender.turn([{"speaker": "seeker", "text": "Hi! Can you recommend a funny movie like Superbad?"}],
                            force_recommend=True)
    query = reficr.encoder.conversations([reficr.render([{"speaker": "seeker", "text": "Hi! Can you recommend a funny "
                                                          "movie like Superbad?"}])], templates.CONV2ITEM_QUERY)
    assert set(turn.candidates) == set(reficr.corpus.top(query, SETTINGS.candidates)[0])
    assert len(turn.candidates) == SETTINGS.candidates and set(turn.candidates) <= set(reficr.corpus.item_ids)
    assert len(turn.recommended) == SETTINGS.items_in_response and set(turn.recommended) <= set(turn.candidates)
    assert turn.knowledge.startswith("Recommended to a user") and isinstance(turn.response, str)
    unforced = recommender.turn([{"speaker": "seeker", "text": "Hello there"}])
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


def summed_logprobs(lm, prompts: list[str], targets: list[str]) -> np.ndarray:
    """log p(target | prompt) per pair, without EOS, through the training code's path (``target_logprobs``)."""
    pairs = lm.tokenize_pairs(prompts, targets, SETTINGS.prompt_length, 64, eos=False)
    with torch.no_grad():
        return np.array([float((lp * m).sum()) for lp, m in zip(*lm.target_logprobs(pairs))])


@pytest.mark.slow
def test_dm_evidence_is_the_log_likelihood_calibrated_by_the_content_free_prompt(system):
    from pipeline.tasks.actions import ACTIONS

    reficr, _ = system
    prompts = [templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight"),
               templates.dialogue_management_prompt("Seeker: thanks, that's all, bye!")]
    choices = [[a] for a in ACTIONS] + [["Recommend", "Explain"]]
    starts = ["".join(f"<a>{a}</a>" for a in c) + "\n" for c in choices]  # the output's start: no EOS, an explanation follows
    evidence = dm_evidence(reficr.lm, prompts, choices, SETTINGS.prompt_length)
    null = summed_logprobs(reficr.lm, [templates.dialogue_management_prompt("")] * len(starts), starts)
    for row, prompt in zip(evidence, prompts):
        np.testing.assert_allclose(row, summed_logprobs(reficr.lm, [prompt] * len(starts), starts) - null, atol=1e-3)
    assert not np.allclose(evidence[0], evidence[1], atol=1e-3)  # the conversation moves it


@pytest.mark.slow
def test_generation_continues_a_forced_start(system):
    reficr, _ = system
    prompt = templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight")
    start = "<a>Recommend</a>\n"
    first = reficr.lm.generate([prompt], max_new_tokens=1, starts=[start])[0]
    pairs = reficr.lm.tokenize_pairs([prompt], [start], SETTINGS.prompt_length, 64, eos=False)
    with torch.no_grad():
        logits = reficr.lm.model(input_ids=torch.tensor([pairs[0][0]])).logits[0, -1]
    assert first == reficr.lm.tokenizer.decode([int(logits.argmax())], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_dialogue_management_starts_with_the_chosen_actions_then_explains(system):
    from dataclasses import asdict, replace

    from pipeline.errors import ParamError
    from pipeline.tasks.actions import ACTIONS, parse_actions

    reficr, _ = system
    choices = [["Recommend", "Explain"], ["Respond", "Chat"], ["Request"]]
    prompts = [templates.dialogue_management_prompt("Seeker: Hi! I want a funny movie for tonight")]
    model_choice = int(np.argmax(dm_evidence(reficr.lm, prompts, choices, SETTINGS.prompt_length)[0]))
    settings = replace(SETTINGS, dm_choices=choices, dm_log_prior=[], dm_weight=1.0)  # uniform prior: the model decides
    chooser = ReFICR(reficr.lm, reficr.corpus, reficr.store, reficr.title, settings)
    assert chooser.choose_actions(prompts) == [choices[model_choice]]
    outputs = chooser.manage_prompts(prompts)
    start = "".join(f"<a>{a}</a>" for a in choices[model_choice]) + "\n"
    explanation = reficr.lm.generate(prompts, max_new_tokens=SETTINGS.max_new_tokens_dm, starts=[start])[0]
    assert outputs == [start + explanation.strip()] and parse_actions(outputs[0], ACTIONS) == choices[model_choice]
    assert chooser.manage(["Seeker: Hi! I want a funny movie for tonight"]) == outputs
    # weight 0: the prior alone, whatever the model says
    other = (model_choice + 1) % len(choices)
    prior = [np.log(0.8) if i == other else np.log(0.1) for i in range(len(choices))]
    majority = ReFICR(reficr.lm, reficr.corpus, reficr.store, reficr.title, replace(settings, dm_log_prior=prior, dm_weight=0.0))
    assert majority.choose_actions(prompts * 2) == [choices[other]] * 2
    # a DM head: a prior per turn, from the turn's words (fitted on three turns of each choice)
    from pipeline.workflow.dialogue import DMHead

    examples = {0: "can you suggest a movie?", 1: "thanks, sounds good", 2: "i do not know what i like"}
    texts = [templates.dialogue_management_prompt(f"Seeker: {examples[c]}") for c in examples for _ in range(3)]
    head = DMHead.fit(texts, [choices[c] for c in examples for _ in range(3)], choices, 0.01)
    headed = ReFICR(reficr.lm, reficr.corpus, reficr.store, reficr.title, replace(majority.settings, dm_head=asdict(head)))
    assert headed.choose_actions(texts[::3]) == choices  # weight 0: the head alone, turn by turn
    with pytest.raises(ParamError, match="head's choices"):
        ReFICR(reficr.lm, reficr.corpus, reficr.store, reficr.title, replace(settings, dm_choices=choices[:2],
                                                                             dm_head=asdict(head)))


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
