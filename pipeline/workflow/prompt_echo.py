"""Text that echoes the generation prompt or talks about it instead of to the seeker (``pipeline.workflow.grounding``
drops it from the reply a person reads, and counts it): ``ECHO_WORDS`` words in a row of an instruction template
("You are an intelligent conversational recommender system."), the system's role paraphrased to the seeker
(``SELF_DESCRIPTION``: "You are designed to provide recommendations ..."), or the prompt talked about
(``META_TALK``: "The user's response should be ...", "The answer to the question ... is", "The answer is:", a
template's heading: "Conversation Context:")."""

from __future__ import annotations

import re
import string

from pipeline.tasks import templates

SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")
ECHO_WORDS = 5  # a sentence with this many words in a row from an instruction template echoes the prompt
# a sentence that tells the seeker what the system is ("You are designed to ...", "I am an AI assistant."): the
# instructions' role paraphrased, never something a recommender says to a person
SELF_DESCRIPTION = re.compile(r"(?i)^\W*(you are|you're|i am|i'm)\s+(?:[\w-]+\s+){0,3}?"
                              r"(designed|programmed|trained|recommender|assistant|system|language model|ai|chatbot)\b")
# the generation templates' headings ("- Conversation Context:", "- Recommended Items:", ...)
HEADINGS = sorted({m.group(1).lower() for t in (templates.RESPONSE, templates.RANKING)
                   for m in re.finditer(r"-\s*([A-Za-z][A-Za-z ]*[A-Za-z]):", t)})
# a sentence about the prompt rather than to the seeker: a recommender says "you", never "the user" ("the user
# reviews" aside); "The answer is:" alone, not "The answer is yes, ..."; a template's heading with its colon
META_TALK = re.compile(r"(?i)\b(the\s+(user|seeker)\b(?!\s+(reviews?|ratings?|scores?)\b)|user's|seeker's|"
                       r"the\s+answer\s+to\s+the\s+question\b)|^\W*the\s+answer\s+is\s*:?\s*$|"
                       r"\b(" + "|".join(r"\s+".join(map(re.escape, h.split())) for h in HEADINGS) + r")\s*:")


def words(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased word, start, end) of each word of ``text``."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in re.finditer(r"[\w']+", text)]


def _instruction_ngrams() -> frozenset[tuple[str, ...]]:
    """Every ECHO_WORDS-word sequence of the generation templates' own words (not across their slots)."""
    grams = set()
    for template in (templates.RESPONSE, templates.RANKING, templates.DIALOGUE_MANAGEMENT):
        for literal, _, _, _ in string.Formatter().parse(template):
            said = [w for w, _, _ in words(literal)]
            grams.update(tuple(said[i: i + ECHO_WORDS]) for i in range(len(said) - ECHO_WORDS + 1))
    return frozenset(grams)


INSTRUCTION_NGRAMS = _instruction_ngrams()


def echoes_prompt(sentence: str) -> bool:
    """Whether ``sentence`` has ECHO_WORDS words in a row of an instruction ("You are an intelligent
    conversational recommender system." echoes "Act as an intelligent conversational recommender system."),
    describes the system to the seeker (``SELF_DESCRIPTION``) or talks about the prompt (``META_TALK``)."""
    if SELF_DESCRIPTION.search(sentence) or META_TALK.search(sentence):
        return True
    said = [w for w, _, _ in words(sentence)]
    return any(tuple(said[i: i + ECHO_WORDS]) in INSTRUCTION_NGRAMS for i in range(len(said) - ECHO_WORDS + 1))


def drop_echo(text: str) -> str:
    """``text`` without its sentences that echo the prompt's instructions; from a sentence that talks about the
    prompt (``META_TALK``) to the end of its line ("The answer to the question "What is best?" is Up" ends past
    the question mark)."""
    lines = []
    for line in text.split("\n"):
        kept = []
        for sentence in SENTENCE.findall(line):
            if META_TALK.search(sentence):
                break
            if not echoes_prompt(sentence):
                kept.append(sentence)
        lines.append("".join(kept))
    return "\n".join(lines)
