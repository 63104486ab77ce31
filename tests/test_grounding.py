"""pipeline/workflow/grounding.py: the reply a person reads names only the turn's recommended items, has no loop, does not
copy the seeker and does not write the seeker's next turn (examples worked out by hand, from the faults seen in
the default run's generation sample, and a hypothesis property over arbitrary replies)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.workflow.grounding import (
    FALLBACK_WITHOUT_ITEMS,
    Catalogue,
    Reply,
    check_reply,
    cut_loops,
    ground_reply,
    has_loop,
    seeker_utterances,
)

CATALOGUE = Catalogue(["The Hangover (2009)", "Superbad (2007)", "Step Brothers (2008)", "Godzilla (2014)",
                       "Godzilla (1998)", "Die Hard (1988)", "It (2017)", "Up (2009)"])
ALLOWED = ["Superbad (2007)", "Step Brothers (2008)"]
CONTEXT = ("Seeker: Hi! I'm looking for a funny movie to watch tonight. I loved The Hangover (2009).\n"
           "Recommender: What else do you like?\nSeeker: Anything with Will Ferrell.")


def ground(raw: str, allowed=ALLOWED) -> str:
    return ground_reply(raw, allowed, CONTEXT, CATALOGUE).text


def test_seeker_utterances_are_read_from_the_rendered_context():
    assert seeker_utterances(CONTEXT) == ["Hi! I'm looking for a funny movie to watch tonight. I loved The Hangover (2009).",
                                          "Anything with Will Ferrell."]


def test_a_copy_of_the_seeker_is_removed_and_an_item_outside_the_list_replaced():
    raw = "Hi! I'm looking for a funny movie to watch tonight. I loved The Hangover (2009). You should watch <item>Superbad (2007)</item>"
    check = check_reply(raw, ALLOWED, CONTEXT, CATALOGUE)
    assert check.copied and check.outside_items == ("The Hangover (2009)",) and not check.loop
    assert ground(raw) == "You should watch <item>Superbad (2007)</item>"


def test_tagged_items_outside_the_list_become_unnamed_recommended_items_or_go():
    raw = "Try <item>The Hangover (2009)</item> and <item>Superbad</item>!"  # Superbad without its year is allowed
    assert ground(raw) == "Try <item>Step Brothers (2008)</item> and <item>Superbad</item>!"
    assert ground("Watch <item>Godzilla (2014)</item> or <item>Die Hard (1988)</item>.", ["Superbad (2007)"]) == \
        "Watch <item>Superbad (2007)</item> or."
    # a reply that names none of the recommended items gets them added
    reply = ground_reply("What a great choice!", ["Superbad (2007)"], CONTEXT, CATALOGUE)
    assert reply.appended and reply.text == "What a great choice! You might like <item>Superbad (2007)</item>."
    assert not ground_reply("What a great choice!", [], CONTEXT, CATALOGUE).appended
    # untagged catalogue titles with their year count too; bare short titles ("It", "Up") are ordinary words
    assert check_reply("Die Hard (1988) is fun. It is up to you.", ALLOWED, CONTEXT, CATALOGUE).outside_items == ("Die Hard (1988)",)
    assert ground("Die Hard (1988) is fun. It is up to you.") == "<item>Superbad (2007)</item> is fun. It is up to you."


@pytest.mark.parametrize("raw, expected", [
    ("<item>The <item>The <item>The <item>The <item>The", FALLBACK_WITHOUT_ITEMS),  # a title cut off: nothing left
    ("ChatChatChatChatChatChatChat", "Chat"),
    ("I think you would like it. I think you would like it a lot.", "I think you would like it."),
    ("What a great pick\nWhat a great pick\nWhat a great pi", "What a great pick"),
])
def test_loops_are_cut(raw, expected):
    assert has_loop(raw)
    assert ground(raw, []) == expected and not has_loop(ground(raw, [])) and not has_loop(cut_loops(raw))


def test_the_next_turn_and_role_markers_go_and_an_empty_reply_falls_back():
    assert ground("[recommender] Sure, <item>Superbad (2007)</item> is a classic. Seeker: thanks! Recommender: bye") == \
        "Sure, <item>Superbad (2007)</item> is a classic."
    reply = ground_reply("<|recommender>\n[recommender]\n[recommender]", ALLOWED, CONTEXT, CATALOGUE)
    assert reply.fallback and reply.text == "You might like <item>Superbad (2007)</item> or <item>Step Brothers (2008)</item>."
    assert ground("<|user|>", []) == FALLBACK_WITHOUT_ITEMS


def test_a_clean_reply_is_left_as_it_is():
    raw = "Since you like Will Ferrell, <item>Step Brothers (2008)</item> is a must. Have you seen it?"
    assert check_reply(raw, ALLOWED, CONTEXT, CATALOGUE) == check_reply("", ALLOWED, CONTEXT, CATALOGUE)
    reply = ground_reply(raw, ALLOWED, CONTEXT, CATALOGUE)
    assert reply.text == raw and not reply.fallback and not reply.appended


pieces = st.sampled_from(["<item>", "</item>", "The Hangover (2009)", "Superbad (2007)", "Die Hard (1988)", "Seeker:",
                          "I loved The Hangover (2009).", "Anything with Will Ferrell.", "\n", " ", "the", "Chat", "!",
                          "Superbad (2017)", "Die Hard (19", "(", "2009)", "You are an intelligent conversational recommender system.",
                          "[item]", "[", "]", "The user's response is", "The answer to the question"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(st.one_of(pieces, st.text(max_size=12)), max_size=30), st.lists(st.sampled_from(ALLOWED), max_size=2, unique=True))
def test_any_reply_comes_out_grounded(parts, allowed):
    """Whatever the model writes, the reply names only recommended items, has no loop and copies no seeker words."""
    reply = ground_reply("".join(parts), allowed, CONTEXT, CATALOGUE)
    check = check_reply(reply.text, allowed, CONTEXT, CATALOGUE)
    assert not check.outside_items and not check.loop and not check.copied and not check.echo, (reply, check)
    assert not reply.unclean, reply  # cleaning itself got there, not the safety net's fallback
    assert reply.text.strip()


# titles whose own words repeat, or long titles the seeker also named: found in the default run's replies
TITLES = Catalogue(["La La Land (2016)", "Liar Liar (1997)", "Harry Potter and the Chamber of Secrets (2002)", "Up (2009)"])
POTTER = "Harry Potter and the Chamber of Secrets (2002)"


def test_a_title_with_repeated_words_is_no_loop():
    raw = "You should see <item>La La Land (2016)</item>, it is great."
    assert not check_reply(raw, ["La La Land (2016)"], "Seeker: hi", TITLES).loop
    assert ground_reply(raw, ["La La Land (2016)"], "Seeker: hi", TITLES) == Reply(raw, raw, False)
    untagged = "Liar Liar (1997) is fun. I like it. I like it. I like it. I like it."  # the sentence loops, the title does not
    assert ground_reply(untagged, ["Liar Liar (1997)"], "Seeker: hi", TITLES).text == "Liar Liar (1997) is fun. I like it."


def test_the_same_title_over_and_over_is_still_a_loop():
    raw = " ".join(["I think <item>Up (2009)</item> is a good one."] * 2)  # a 5-word sequence, the title one word of it
    assert check_reply(raw, ["Up (2009)"], "Seeker: hi", TITLES).loop
    assert ground_reply(raw, ["Up (2009)"], "Seeker: hi", TITLES).text == "I think <item>Up (2009)</item> is a good one."
    assert ground_reply("<item>Up (2009)</item>" * 4, ["Up (2009)"], "Seeker: hi", TITLES).text == "<item>Up (2009)</item>"


def test_naming_a_long_title_the_seeker_named_is_no_copy_but_their_sentence_around_it_is():
    context = f"Seeker: I loved {POTTER} so much, what else is like it?"
    raw = f"Then watch <item>{POTTER}</item> again!"
    assert not check_reply(raw, [POTTER], context, TITLES).copied
    assert ground_reply(raw, [POTTER], context, TITLES).text == raw
    copy = f"I loved <item>{POTTER}</item> so much, what else is like it? Try <item>Up (2009)</item>."
    assert check_reply(copy, ["Up (2009)"], context, TITLES).copied
    assert ground_reply(copy, ["Up (2009)"], context, TITLES).text == "Try <item>Up (2009)</item>."


def test_a_title_written_with_another_year_is_still_that_title():
    # "The Matrix (2017)" names The Matrix: outside the list it is replaced; a recommended one gets its own year
    assert check_reply("Die Hard (2017) is fun.", ALLOWED, CONTEXT, CATALOGUE).outside_items == ("Die Hard (1988)",)
    assert ground("Die Hard (2017) is fun.") == "<item>Superbad (2007)</item> is fun."
    assert ground("Superbad (2017) and <item>Step Brothers (2011)</item> are fun.") == \
        "Superbad (2007) and <item>Step Brothers (2008)</item> are fun."
    # a remake: the catalogue's other year of a recommended item is the recommended one
    assert ground("Watch Godzilla (1998)!", ["Godzilla (2014)"]) == "Watch Godzilla (2014)!"
    # the nearest year where a name has several; a bare word before a year only when capitalized
    assert CATALOGUE.untagged("Godzilla (2000)") == [(0, 15, "Godzilla (1998)")]
    assert CATALOGUE.untagged("it came out in (2017), up (2010)") == []


def test_a_title_cut_by_the_token_limit_takes_its_sentence_with_it():
    assert ground("Great taste! You will love <item>Superbad (2007)</item> and <item>Step Bro", []) == "Great taste!"
    assert ground("Great taste! You will love The Hangover (20", []) == "Great taste!"
    # the sentence, not a question quoted in it
    assert ground('Hi.\nThe answer to "What is the best movie?" is <item>Step Bro', []) == "Hi."
    # a title complete but for its closing tag is kept
    assert ground("Great taste! You will love <item>Superbad (2007)") == "Great taste! You will love Superbad (2007)"
    reply = ground_reply("You will love <item>Superbad (20", ALLOWED, CONTEXT, CATALOGUE)
    assert reply.fallback and reply.text == "You might like <item>Superbad (2007)</item> or <item>Step Brothers (2008)</item>."


def test_a_sentence_echoing_the_instructions_goes():
    raw = "You are an intelligent conversational recommender system. How about <item>Superbad (2007)</item>?"
    assert check_reply(raw, ALLOWED, CONTEXT, CATALOGUE).echo
    assert ground(raw) == "How about <item>Superbad (2007)</item>?"
    # five words in a row of a template echo it; four, or words a recommender says anyway, do not
    assert check_reply("Seamlessly incorporate the recommended items.", [], CONTEXT, CATALOGUE).echo
    for said in ("These are the recommended items for you.", "You could include these in your movie night.",
                 "Based on the conversation context and your love of comedy, try <item>Superbad (2007)</item>.",
                 "I picked these based on their relevance to you: <item>Superbad (2007)</item>."):
        assert not check_reply(said, ALLOWED, CONTEXT, CATALOGUE).echo and ground(said).startswith(said), said


def test_a_sentence_describing_the_system_to_the_seeker_goes():
    raw = "You are designed to provide recommendations based on user preferences. You might like <item>Superbad (2007)</item>."
    assert check_reply(raw, ALLOWED, CONTEXT, CATALOGUE).echo
    assert ground(raw) == "You might like <item>Superbad (2007)</item>."
    for said in ("I am an AI assistant.", "You're a recommender system that helps.", "I'm trained to find films."):
        assert check_reply(said, [], CONTEXT, CATALOGUE).echo, said
    # "you are" / "I'm" about the seeker's or the system's taste stays
    for said in ("You are going to love <item>Superbad (2007)</item>.", "I'm a big fan of comedies too.",
                 "You are a fan of the system of the world, I see."):
        assert not check_reply(said, ALLOWED, CONTEXT, CATALOGUE).echo and ground(said).startswith(said), said


def test_a_sentence_about_the_prompt_goes_with_the_rest_of_its_line():
    # seen in the default run's replies: the model talks about the prompt instead of to the seeker
    raw = "The user's response should be in the format of a title. Try <item>Superbad (2007)</item>.\nGreat choice!"
    assert check_reply(raw, ALLOWED, CONTEXT, CATALOGUE).echo
    reply = ground_reply(raw, ALLOWED, CONTEXT, CATALOGUE)
    assert reply.text == "Great choice! You might like <item>Superbad (2007)</item> or <item>Step Brothers (2008)</item>."
    assert reply.appended and not reply.fallback
    # past a question mark inside the quoted question, to the end of the line
    reply = ground_reply('The answer to the question "What is the best comedy?" is <item>Superbad (2007)</item>', ALLOWED,
                         CONTEXT, CATALOGUE)
    assert reply.fallback and reply.text == "You might like <item>Superbad (2007)</item> or <item>Step Brothers (2008)</item>."
    assert ground("The answer is:\n[item] Try <item>Superbad (2007)</item>.") == "Try <item>Superbad (2007)</item>."
    # a heading of the prompt's template, with its colon
    assert ground("Conversation Context:\nTry <item>Superbad (2007)</item>.") == "Try <item>Superbad (2007)</item>."
    assert ground_reply("- Recommended Items: <item>Superbad (2007)</item>", ALLOWED, CONTEXT, CATALOGUE).fallback
    for said in ("Users loved <item>Superbad (2007)</item>.", "You will love <item>Superbad (2007)</item>, trust me.",
                 "The answer is yes, <item>Superbad (2007)</item> is hilarious.",
                 "Read the user reviews of <item>Superbad (2007)</item> first."):
        assert not check_reply(said, ALLOWED, CONTEXT, CATALOGUE).echo and ground(said) == said, said


def test_bracketed_slots_go_and_a_title_in_brackets_keeps_its_words():
    assert check_reply("[item] Try it.", [], CONTEXT, CATALOGUE).echo
    assert ground("[item] How about <item>Superbad (2007)</item>?") == "How about <item>Superbad (2007)</item>?"
    assert ground("[Greetings]\nHello there!\n[Superbad (2007)]") == "Hello there!\nSuperbad (2007)"
    assert ground("Try <item>Superbad (2007)</item> [item1] now.\n[item") == "Try <item>Superbad (2007)</item> now."
    # a year written after a slot goes with it; an open bracket mid-line takes only itself
    assert ground("[item] (2007) is a classic. Try <item>Superbad (2007)</item>.") == \
        "is a classic. Try <item>Superbad (2007)</item>."
    assert ground("Sure [smiles. Try <item>Superbad (2007)</item>.") == "Sure smiles. Try <item>Superbad (2007)</item>."
    # a catalogue title's own brackets are no slot
    rec = Catalogue(["[REC] (2007)", "Superbad (2007)"])
    assert not check_reply("Try [REC] (2007).", ["[REC] (2007)"], "Seeker: hi", rec).echo
    assert ground_reply("Try [REC] (2007).", ["[REC] (2007)"], "Seeker: hi", rec).text == "Try [REC] (2007)."


# titles with a full stop, titles whose name ends with another title's name, found by review
ODD = Catalogue(["Mr. Smith Goes to Washington (1939)", "Godzilla (2014)", "Homecoming (2009)", "Go (1999)",
                 "(500) Days of Summer (2009)", "Die Hard (1988)", "Superbad (2007)"])
SMITH = "Mr. Smith Goes to Washington (1939)"


def test_a_full_stop_inside_a_title_ends_no_sentence():
    raw = f"Great. Try <item>{SMITH}</item> or <item>Super"
    assert ground_reply(raw, [SMITH], "Seeker: hi", ODD).text == f"Great. You might like <item>{SMITH}</item>."
    said = f"I picked these based on their relevance score to the conversation context: <item>{SMITH}</item>."
    assert ground_reply(said, [SMITH], "Seeker: hi", ODD).text == f"You might like <item>{SMITH}</item>."  # one sentence
    # a tag cut after a whole title only loses the tag
    assert ground_reply("Love it. Try <item>Superbad (2007)</item", ["Superbad (2007)"], "Seeker: hi", ODD).text == \
        "Love it. Try Superbad (2007)"


def test_another_year_needs_the_whole_name_and_no_tag_inside_it():
    for text in ("Try Shin Godzilla (2016), it is great.", "Spider-Man: Homecoming (2017) is fun.",
                 "(500) Days of Summer (2010) is sweet.", "Go <item>Superbad</item> (2007) now."):
        assert ODD.untagged(text) == [], text
    assert ODD.untagged("I loved Godzilla (2016).") == [(8, 23, "Godzilla (2014)")]
    # offsets hold where lower case is longer than the letter ("İ".lower() has 2 characters)
    assert check_reply("İİ, Die Hard (2017) is fun.", [], "Seeker: hi", ODD).outside_items == ("Die Hard (1988)",)


def test_grounding_metrics_count_each_fault_before_and_after_grounding():
    from pipeline.evaluation.conversation import grounding_metrics

    raws = ["You are an intelligent conversational recommender system. Try <item>Superbad (2007)</item>.",
            "Die Hard (2017) is fun to watch. Die Hard (2017) is fun to watch.",
            "You will love <item>Step Bro"]
    replies = [ground_reply(r, ALLOWED, CONTEXT, CATALOGUE) for r in raws]
    m = grounding_metrics(replies, [ALLOWED] * 3, [CONTEXT] * 3, CATALOGUE)
    # by hand: the echo in reply 1; the other-year title outside the list and the loop in reply 2; reply 3 is cut to
    # nothing and falls back; reply 2 keeps "... is fun to watch." naming Superbad, so none has the items appended
    assert (m["response.raw.echo_rate"], m["response.raw.outside_items_rate"], m["response.raw.loop_rate"]) == (1 / 3, 1 / 3, 1 / 3)
    assert all(m[f"response.reply.{k}_rate"] == 0 for k in ("echo", "outside_items", "loop", "copy"))
    assert (m["response.reply.fallback_rate"], m["response.reply.items_appended_rate"]) == (1 / 3, 0)
    assert [r.text for r in replies] == ["Try <item>Superbad (2007)</item>.", "<item>Superbad (2007)</item> is fun to watch.",
                                         "You might like <item>Superbad (2007)</item> or <item>Step Brothers (2008)</item>."]
