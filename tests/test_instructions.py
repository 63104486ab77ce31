"""Templates (exact slot counts), context rendering, and instruction building on the committed slices."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.data.ingest import ingest
from pipeline.data.splits import seeded_sample
from pipeline.tasks import templates
from pipeline.tasks.instructions import (
    ACTION_OF_CODE,
    ContextLimits,
    InstructionCaps,
    build_conv2conv,
    build_conv2item,
    build_dm,
    build_instruction_tables,
    build_response,
    build_turns,
    dm_target,
    wrap_mentions,
)
from tests.conftest import RAW


@pytest.mark.parametrize("template, names", [
    (templates.RANKING, {"candidates", "context", "knowledge", "top_n"}),
    (templates.DIALOGUE_MANAGEMENT, {"context"}),
    (templates.RESPONSE, {"context", "items"}),
])
def test_every_template_has_exactly_its_slots(template, names):
    assert templates.slots(template) == names
    filled = templates.fill(template, **{n: f"<{n}>" for n in names})
    assert all(f"<{n}>" in filled for n in names) and "{" not in filled
    with pytest.raises(ValueError, match="template slots"):
        templates.fill(template, **{n: "x" for n in names}, extra="y")
    with pytest.raises(ValueError, match="template slots"):
        templates.fill(template, **{n: "x" for n in sorted(names)[1:]})


def test_retrieval_instructions_are_the_papers():
    assert templates.CONV2ITEM_QUERY == "Retrieve relevant items based on user conversation history"
    assert templates.CONV2CONV_SAMPLE == "Represent the conversation context for similar user intention retrieval"


def test_context_keeps_the_most_recent_part():
    context = [{"speaker": "seeker", "text": f"utterance {i}"} for i in range(10)]
    assert templates.render_context(context, 3, 1000) == "Seeker: utterance 7\nSeeker: utterance 8\nSeeker: utterance 9"
    assert templates.render_context(context, 10, 40) == "Seeker: utterance 8\nSeeker: utterance 9"


def test_cap_is_deterministic_and_order_preserving():
    frame = pd.DataFrame({"instance_id": [f"x{i}" for i in range(50)]})
    a, b = seeded_sample(frame, 10, seed=0), seeded_sample(frame, 10, seed=0)
    assert a.equals(b) and len(a) == 10
    assert list(a.instance_id) == sorted(a.instance_id, key=lambda s: int(s[1:]))
    assert not a.equals(seeded_sample(frame, 10, seed=1))
    assert len(seeded_sample(frame, None, 0)) == 50


@pytest.fixture(scope="module")
def redial():
    return ingest("redial", RAW)


def test_conv2item_one_pair_per_gold_item(redial):
    turns = build_turns("redial", redial.tables["rec_turns"], ContextLimits(max_utterances=12, max_chars=1200))
    pairs = build_conv2item(turns, redial.tables["items"])
    assert len(pairs) == sum(len(g) for g in turns.gold_item_ids)
    row = pairs[pairs.instance_id == "redial:20001#1"].iloc[0]
    assert row.query == "Seeker: Hi I am looking for a movie like Super Troopers (2001)"
    assert row.positive.startswith("Police Academy (1984).") and row.item_id == "redial:151656"


def test_conv2conv_documents_are_training_contexts_of_other_dialogues(redial):
    turns = build_turns("redial", redial.tables["rec_turns"], ContextLimits(max_utterances=12, max_chars=1200))
    train = turns[turns.split == "train"].reset_index(drop=True)
    test = turns[turns.split == "test"].reset_index(drop=True)
    pairs, lonely = build_conv2conv(test, train, seed=0)
    assert len(pairs) + lonely == len(test)
    train_ids = set(train.instance_id)
    for p in pairs.itertuples():
        assert p.positive_instance_id in train_ids and not p.positive_instance_id.startswith(p.dialogue_id + "#")
        assert set(p.gold_item_ids) & set(p.positive_gold_item_ids)


def test_dm_targets_map_every_iard_code_and_explain():
    iard = ingest("iard", RAW)
    codes = iard.tables["iard_codes"]
    assert set(ACTION_OF_CODE) == set(codes[codes.role == "recommender"].code)
    target, actions = dm_target(["REJ", "CRI-A"], ["REC-S", "EXP-I"], codes)
    assert actions == ["Recommend", "Explain"]
    # the actions first (the paper's example, section 3.4), then the explanation
    assert target.startswith("<a>Recommend</a><a>Explain</a>\nThe user's intention: Reject (seeker dislikes the recommended "
                             "item); Critique-Add")
    assert target.endswith(".") and target.count("<a>") == 2
    dm = build_dm(iard.tables["iard_turns"], codes, ContextLimits(max_utterances=12, max_chars=1200))
    assert len(dm) == len(iard.tables["iard_turns"]) and dm.prompt.str.startswith("Analyze the conversation context: ").all()
    with pytest.raises(ValueError, match="has no ReFICR action"):
        dm_target([], ["XYZ"], codes)


def test_response_targets_wrap_item_mentions(redial):
    resp = build_response("redial", redial.tables["dialogues"], redial.tables["items"], ContextLimits(max_utterances=12, max_chars=1200))
    row = resp[resp.instance_id == "redial:20001#1"].iloc[0]
    assert row.target == "You should watch <item>Police Academy (1984)</item>"
    assert "- Recommended Items: Police Academy (1984)\n" in row.prompt
    assert (resp.item_ids.map(len) == 0).any()  # turns without items are response instances too
    assert wrap_mentions("I liked Knives Out a lot", [("Knives Out (2019)", "Knives Out")]) == "I liked <item>Knives Out</item> a lot"


def test_prompt_builders_fill_the_papers_templates():
    assert templates.response_prompt("Seeker: hi", []) == templates.fill(templates.RESPONSE, context="Seeker: hi", items=" None")
    assert "Recommended Items: Heat (1995), Up (2009)\n" in templates.response_prompt("Seeker: hi", ["Heat (1995)", "Up (2009)"])
    ranking = templates.ranking_prompt("Seeker: hi", ["Heat (1995)", "Up (2009)"], "None")
    assert "[1] Heat (1995)\n[2] Up (2009)" in ranking and "Output the top 2 results" in ranking
    assert templates.dialogue_management_prompt("Seeker: hi").startswith("Analyze the conversation context: Seeker: hi.")


def test_catalogue_pairs_cover_every_training_turn_while_the_mined_turns_are_capped(redial):
    iard = ingest("iard", RAW)
    t = redial.tables
    tables, counts = build_instruction_tables({"redial": (t["items"], t["dialogues"], t["rec_turns"])}, iard.tables["iard_turns"],
                                              iard.tables["iard_codes"], ContextLimits(max_utterances=12, max_chars=1200),
                                              InstructionCaps(max_train_turns={"redial": 5}, max_response=10, max_dm=10, seed=0))
    every_train_turn = build_turns("redial", t["rec_turns"], ContextLimits(max_utterances=12, max_chars=1200)).query("split == 'train'")
    assert len(every_train_turn) > 5 and len(tables["turns_train"]) == 5
    assert set(tables["conv2item_train"].instance_id) == set(tables["turns_train"].instance_id)
    catalogue = tables["catalogue_train"]
    assert set(catalogue.instance_id) == set(every_train_turn.instance_id)  # every training turn, no other split
    assert len(catalogue) == sum(len(g) for g in every_train_turn.gold_item_ids)  # one pair per gold item
    assert counts["catalogue_train"]["redial"] == {"before_cap": len(catalogue), "kept": len(catalogue)}
    assert "catalogue_valid" not in tables and "catalogue_test" not in tables
