"""Simulated seekers (``pipeline.evaluation.seeker``, ``pipeline.evaluation.simulation``, stage ``simulate``): the
seeker's attributes and leak audit on hand-made and real (committed slice) data, the loop and its metrics on
hand-made recommenders worked out by hand, then the real recommenders of the tiny run and the stage's outputs."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from pipeline.data.ingest import ingest
from pipeline.evaluation.seeker import Attributes, MetadataIndex, ModelSeeker, TemplateSeeker, leaks
from pipeline.evaluation.simulation import (
    Action,
    ReFICRPolicy,
    ScoredPolicy,
    SimDialogue,
    sim_dialogues,
    simulate,
    simulation_metrics,
    success_curve,
)
from pipeline.evaluation.summary import simulation_table
from tests.conftest import RAW, repo_env, run

PETER_PAN = ("Peter Pan (2003). Genres: adventure, family, fantasy. Director: P.J. Hogan. Cast: Jeremy Sumpter, "
             "Jason Isaacs, Olivia Williams. Plot: The Darling family children receive a visit from Peter Pan.")


def items_table(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "title", "year", "description", "metadata_source"])


def test_attributes_come_from_the_description_and_from_another_catalogue_by_title_and_year():
    redial = items_table([("r:1", "Peter Pan", 2003, PETER_PAN, "id2info.json"),
                          ("r:2", "Headhunter", 2009, "Headhunter (2009).", "title_only")])
    inspired = items_table([("i:1", "Peter Pan", 2003, "Peter Pan (2003).", "title_only"),
                            ("i:2", "Peter Pan", 1953, "Peter Pan (1953).", "title_only")])
    index = MetadataIndex([inspired, redial])
    expected = Attributes(("adventure", "family", "fantasy"), "P.J. Hogan", ("Jeremy Sumpter", "Jason Isaacs", "Olivia Williams"),
                          "2000s")
    assert index.attributes("Peter Pan", 2003) == expected  # INSPIRED's title-only row gets ReDial's metadata
    assert index.attributes("Peter Pan", 1953) == Attributes(decade="1950s")  # another year: another film
    assert index.attributes("Headhunter", 2009).facts() == [("decade", "2000s")]
    assert expected.facts() == [("genre", "adventure"), ("genre", "family"), ("director", "P.J. Hogan"),
                                ("actor", "Jeremy Sumpter"), ("actor", "Jason Isaacs"), ("decade", "2000s")]


def test_leaks_finds_titles_as_whole_words_ignoring_case_and_punctuation():
    assert leaks("I loved it!", ["It"]) == ["It"]
    assert leaks("Something like the hangover part ii?", ["The Hangover", "Superbad"]) == ["The Hangover"]
    assert leaks("I'm a fan of Seth Rogen", ["Superbad", "Up"]) == []
    assert leaks("Italian food", ["It"]) == []  # a word, not a prefix


def test_the_seeker_answers_misses_with_new_facts_and_accepts_a_target():
    seeker = TemplateSeeker(seed=0, opening="template")
    attributes = Attributes(("comedy",), "Greg Mottola", ("Jonah Hill",), "2000s")
    state = seeker.start("d1", ["x:1"], ["Superbad"], attributes, "Hi")
    opening = seeker.open(state)
    assert "comedy" in opening and state.told == [("genre", "comedy")]
    said = [seeker.reply(state, turn, ["x:9"])[1] for turn in (1, 2, 3)]
    told = [value for _, value in state.told[1:]]
    assert sorted(told) == ["2000s", "Greg Mottola", "Jonah Hill"]  # each fact once, in the seeker's seeded order
    assert all(value in text for value, text in zip(told, said))
    accepted, text = seeker.reply(state, 4, ["x:5", "x:1"])
    assert accepted and not leaks(text, ["Superbad"])
    again = seeker.start("d1", ["x:1"], ["Superbad"], attributes, "Hi")  # the same seed: the same words
    assert seeker.open(again) == opening and [seeker.reply(again, t, ["x:9"])[1] for t in (1, 2, 3)] == said


def test_an_opening_or_a_fact_that_names_a_target_is_replaced_and_counted():
    seeker = TemplateSeeker(seed=3)
    attributes = Attributes(("comedy",), "", ("Will Smith",), "1990s")  # an actor who is also a target's title
    state = seeker.start("d2", ["x:1", "x:2"], ["Hitch", "Will Smith"], attributes, "I loved Hitch, anything similar?")
    opening = seeker.open(state)
    assert "Hitch" not in opening and "comedy" in opening and state.replaced == 1
    said = [seeker.reply(state, turn, [])[1] for turn in (1, 2)]
    assert state.replaced == 2 and "1990s" in said[0] and not any(leaks(s, ["Hitch", "Will Smith"]) for s in said)


class Fixed:
    """A hand-made recommender: per dialogue, the items it recommends at each turn (nothing = it asks)."""

    decides = True

    def __init__(self, name, plan):
        self.name, self.plan, self.turn = name, plan, {}

    def act(self, conversations):
        out = []
        for c in conversations:
            t = self.turn[c.dialogue_id] = self.turn.get(c.dialogue_id, 0) + 1
            shown = self.plan[c.dialogue_id][t - 1]
            out.append(Action(shown, shown + ["z:0"], "How about these?" if shown else "What do you like?"))
        return out


def dialogue(dialogue_id, targets):
    return SimDialogue(dialogue_id, targets, [f"Title {t}" for t in targets], Attributes(("drama",), decade="1980s"),
                       "Hello there", [])


def test_a_recommender_that_answers_fewer_conversations_than_it_was_given_is_an_error():
    class Short(Fixed):
        def act(self, conversations):
            return super().act(conversations)[:1]

    with pytest.raises(ValueError, match="1 actions for 2 conversations"):
        simulate(Short("short", {"a": [["x"]], "b": [["y"]]}), [dialogue("a", ["t"]), dialogue("b", ["u"])],
                 TemplateSeeker(0), turns=1)


def test_the_loop_and_its_metrics_on_hand_made_recommenders():
    dialogues = [dialogue("a", ["t:1"]), dialogue("b", ["t:2", "t:3"])]
    oracle = Fixed("oracle", {"a": [["t:1"]], "b": [["t:3", "x"]]})
    late = Fixed("late", {"a": [[], ["x"], ["t:1"]], "b": [["x"], ["y"], ["w"]]})  # asks, misses, hits a at 3; never b
    results = {o.name: simulate(o, dialogues, TemplateSeeker(0), turns=3) for o in (oracle, late)}
    assert [o.success_turn for o in results["oracle"]] == [1, 1]
    assert [o.success_turn for o in results["late"]] == [3, None]
    assert len(results["late"][1].turns) == 3 and results["late"][1].last_list == ["w", "z:0"]
    m = simulation_metrics(results, 3, "oracle", bootstrap=50, seed=0)
    assert m["simulate.oracle.success@1"] == 1.0 and m["simulate.late.success@1"] == 0.0
    assert m["simulate.late.success@3"] == 0.5 and m["simulate.late.mean_turns_to_success"] == 3.0
    assert m["simulate.late.mean_turns_to_success.n"] == 1
    assert m["simulate.paired.oracle-late.success@3"] == 0.5 and m["simulate.paired.oracle-late.success@3.n"] == 2
    # last list: a's ['t:1', 'z:0'] holds its target; b's ['w', 'z:0'] none of its two
    assert m["simulate.late.last_list.recall@10"] == 0.5 and m["simulate.oracle.last_list.recall@10"] == 0.75
    assert m["simulate.late.recommend_share"] == 5 / 6  # a: asks, x, t:1; b: x, y, w
    assert m["simulate.late.asked_first.n"] == 1 and m["simulate.late.asked_first.success@3"] == 1.0
    assert success_curve(results, 3) == [{"turn": 1, "oracle": 1.0, "late": 0.0}, {"turn": 2, "oracle": 1.0, "late": 0.0},
                                         {"turn": 3, "oracle": 1.0, "late": 0.5}]


def test_systems_that_act_alike_meet_the_same_seeker_word_for_word():
    dialogues = [dialogue("a", ["t:1"]), dialogue("b", ["t:2"])]
    plan = {"a": [["x"], [], ["y"]], "b": [[], ["t:2"], []]}
    first, second = (simulate(Fixed(name, plan), dialogues, TemplateSeeker(7), turns=3) for name in ("one", "two"))
    assert [[r.seeker for r in o.turns] for o in first] == [[r.seeker for r in o.turns] for o in second]
    assert [o.success_turn for o in first] == [None, 2]
    other_seed = simulate(Fixed("three", plan), dialogues, TemplateSeeker(8), turns=3)
    assert [[r.seeker for r in o.turns] for o in other_seed] != [[r.seeker for r in o.turns] for o in first]


def test_the_summary_table_shows_a_mean_over_nothing_as_a_dash():
    m = {"simulate.turns": 2, "simulate.dialogues.simulated": 2, "simulate.seeker": "template", "simulate.opening": "dialogue"}
    for name, values in (("reficr", [0.5, 1.0]), ("popularity", [0.0, 0.0])):
        m.update({f"simulate.{name}.success@{t}": v for t, v in zip((1, 2), values)})
        m.update({f"simulate.{name}.last_list.recall@{k}": 0.25 for k in (10, 50)})
        m[f"simulate.{name}.recommend_share"] = 1.0
    m.update({"simulate.reficr.mean_turns_to_success": 1.5, "simulate.reficr.mean_turns_to_success.n": 2,
              "simulate.popularity.mean_turns_to_success": float("nan"), "simulate.popularity.mean_turns_to_success.n": 0,
              "simulate.paired.reficr-popularity.success@2": 1.0})
    lines = simulation_table("ReDial", m)
    assert "| popularity | 0.000 | 0.000 | – (0) | 0.250 | 0.250 | 100% of turns |" in lines
    assert "| reficr | 0.500 | 1.000 | 1.500 (2) | 0.250 | 0.250 | 100% of turns |" in lines
    assert any(line.endswith("success@2, paired over the same seekers: popularity 1.000") for line in lines)


def test_every_seeker_utterance_on_the_real_slices_names_no_target():
    tables = ingest("redial", RAW, seed=0, redial_valid_fraction=0.1, iard_heldout_fraction=0.15).tables
    dialogues, counts = sim_dialogues(tables["dialogues"], tables["rec_turns"], tables["items"], [], 0, seed=0)
    assert counts["simulated"] == len(dialogues) > 0
    assert counts["test_dialogues_with_gold"] == counts["simulated"] + counts["no_seeker_utterance"] + counts["no_target_left"]
    for opening in ("dialogue", "template"):
        never = Fixed("never", {d.dialogue_id: [["nothing:0"]] * 6 for d in dialogues})
        outcomes = simulate(never, dialogues, TemplateSeeker(0, opening), turns=6)
        for d, o in zip(dialogues, outcomes):
            said = [o.opening] + [r.seeker for r in o.turns]
            # an audit of its own (the seeker's is `leaks`): a title as a whole word, any case, in the raw text
            named = [t for t in d.target_titles for text in said if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text, re.I)]
            assert not named, (d.dialogue_id, named, said)
            assert o.success_turn is None and len(o.turns) == 6


class Scripted:
    """Stands in for the language model's ``generate`` to reach the seeker's regeneration branch: each call's
    outputs in turn (the real model's path is the tiny-run test below)."""

    def __init__(self, *calls):
        self.calls, self.prompts = list(calls), []

    def generate(self, prompts, **kwargs):
        self.prompts.append(list(prompts))
        return self.calls.pop(0)


def test_a_model_seeker_utterance_naming_a_target_is_regenerated_then_replaced_by_the_template():
    lm = Scripted(["I want Superbad!", "Something funny with teenagers.", "Hitch is nice"],
                  ["Superbad, obviously", "Anything by Hitch"])
    seeker = ModelSeeker(0, "dialogue", lm, lambda c: "\n".join(u["text"] for u in c), batch_size=4, prompt_length=64,
                         max_new_tokens=8)
    states = [seeker.start(d, [f"x:{d}"], [title], Attributes(("comedy",), decade="2000s"), "Hi")
              for d, title in (("a", "Superbad"), ("b", "Knocked Up"), ("c", "Hitch"))]
    planned = TemplateSeeker(0, "dialogue").replies(
        [TemplateSeeker(0).start(s.dialogue_id, s.targets, s.target_titles, Attributes(("comedy",), decade="2000s"), "Hi")
         for s in states], 1, [[], [], []], [[]] * 3)
    out = seeker.replies(states, 1, [[], [], []], [[{"speaker": "seeker", "text": "Hi"}]] * 3)
    assert out[1] == (False, "Something funny with teenagers.")
    assert out[0] == planned[0] and out[2] == planned[2]  # leaked twice: the template's words, never the model's
    assert [s.regenerated for s in states] == [2, 0, 2]
    assert len(lm.prompts[1]) == 2 and all("Never mention" in p for p in lm.prompts[1])  # only the leaking ones again
    assert all(planned[i][1] in lm.prompts[0][i] for i in range(3))  # the template's intent is in the model's prompt


# ----------------------------------------------------------------------------- the tiny run
@pytest.mark.slow
def test_the_model_seeker_on_the_tiny_run_never_sends_a_target(tiny_service):
    rec = tiny_service.recommender
    s = rec.system.settings
    seeker = ModelSeeker(0, "dialogue", rec.system.lm, rec.system.render, batch_size=s.generation_batch,
                         prompt_length=s.prompt_length, max_new_tokens=12)
    items = list(rec.system.title.items())[:3]
    dialogues = [SimDialogue(f"m{i}", [item], [title.rsplit(" (", 1)[0]], Attributes(("drama",), decade="1990s"),
                             "Hello, any ideas for tonight?", []) for i, (item, title) in enumerate(items)]
    outcomes = simulate(ScoredPolicy("popularity", rec, {"popularity": 1.0}), dialogues, seeker, turns=2)
    for d, o in zip(dialogues, outcomes):
        assert o.turns and all(r.seeker and not leaks(r.seeker, d.target_titles) for r in o.turns)
        assert len(o.turns) == 2 or o.success_turn == 1
    # popularity is one row of scores for every context: each seeker still gets its own list, the same at turn 1
    assert len({tuple(o.turns[0].recommended) for o in outcomes}) == 1


@pytest.mark.slow
def test_a_target_the_recommender_ranks_first_succeeds_at_turn_1_and_a_named_one_never(tiny_service):
    rec = tiny_service.recommender
    weights = rec.choice.fusion_weights
    for policy in (ScoredPolicy("retrieval+knowledge", rec, weights), ReFICRPolicy("ranked+knowledge", rec, decide=False)):
        probe = SimDialogue("probe", ["none"], ["none"], Attributes(("comedy",)), "Any good comedies for tonight?", [])
        first = simulate(policy, [probe], TemplateSeeker(0), turns=1)[0].turns[0].recommended
        assert len(first) == rec.system.settings.items_in_response
        hit = SimDialogue("hit", [first[0]], [rec.system.title[first[0]]], Attributes(("comedy",)),
                          "Any good comedies for tonight?", [])
        # the same target, but the opening names it: it is never recommended back
        named = SimDialogue("named", [first[0]], ["zzz"], Attributes(("comedy",)), "Any good comedies for tonight?", [first[0]])
        a, b = simulate(policy, [hit, named], TemplateSeeker(0), turns=3)
        assert a.success_turn == 1
        assert b.success_turn is None and len(b.turns) == 3
        shown = [i for r in b.turns for i in r.recommended]
        assert first[0] not in shown and len(shown) == len(set(shown))  # nothing named or rejected comes back


@pytest.mark.slow
def test_the_stage_ran_and_gives_byte_identical_outputs_again(tiny_run, tmp_path):
    repo = tiny_run.repo
    metrics = json.loads((repo / "metrics/simulate_redial.json").read_text())
    turns = tiny_run.params["simulate"]["turns"]
    recorded = pd.read_parquet(repo / "data/simulate/redial/turns.parquet")
    n = metrics["simulate.dialogues.simulated"]
    for system in ("reficr", "ranked+knowledge", "retrieval+knowledge", "retrieval", "co_mention", "conversation_knn",
                   "collaborative_mix", "popularity"):
        rows = recorded[recorded["system"] == system]
        curve = [metrics[f"simulate.{system}.success@{t}"] for t in range(1, turns + 1)]
        assert curve == sorted(curve) and all(metrics[f"simulate.{system}.success@{t}.n"] == n > 0 for t in range(1, turns + 1))
        # the metrics agree with the recorded turns: every seeker talked, the accepted ones stopped there
        assert rows["dialogue_id"].nunique() == n and curve[-1] == rows["accepted"].sum() / n
        assert all(len(g) == turns or g["accepted"].iloc[-1] for _, g in rows.groupby("dialogue_id"))
        assert f"simulate.paired.reficr-{system}.success@{turns}" in metrics or system == "reficr"
    summary = (repo / "metrics/summary.md").read_text()
    assert "simulated seekers" in summary and "| reficr |" in summary
    title = dict(pd.read_parquet(repo / "data/interim/redial/items.parquet", columns=["item_id", "title"]).values)
    assert len(recorded) and not any(leaks(s, [title[t] for t in targets])
                                     for s, targets in zip(recorded["seeker"], recorded["targets"]))
    copy = tiny_run.copy(tmp_path / "repo")
    before = {p: (copy / p).read_bytes() for p in ("metrics/simulate_redial.json", "plots/simulate_redial.csv",
                                                   "data/simulate/redial/transcripts.md", "data/simulate/redial/turns.parquet")}
    shutil.rmtree(copy / "data/simulate/redial")
    run(["python", "-m", "stages.simulate", "redial"], copy, repo_env(copy))
    assert {p: (copy / p).read_bytes() for p in before} == before
