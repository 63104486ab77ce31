"""Every instruction string of ReFICR (paper Table 1), in one place, and the only way to fill them.

``fill`` refuses a template whose slots differ from the arguments given: the reference code once filled a
3-slot template with 4 arguments. Line breaks between the bullet parts are ours (the paper's
table flattens them); the words are the paper's.
"""

from __future__ import annotations

import string

# Retrieval instructions (embedding side).
CONV2ITEM_QUERY = "Retrieve relevant items based on user conversation history"
CONV2ITEM_SAMPLE = "Represent the item for retrieval"
CONV2CONV_QUERY = "Given a user's conversation history, retrieve conversations from other users with similar intents"
CONV2CONV_SAMPLE = "Represent the conversation context for similar user intention retrieval"

# Generation instructions (prompt side; the model formats them as <|user|>\n...\n<|assistant|>\n).
RANKING = (
    "Rank the candidate items, each identified by a unique number in square brackets, based on their relevance "
    "score to the conversation context and referring to the retrieved knowledge.\n"
    "- Candidate Items:\n{candidates}\n"
    "- Conversation context:\n{context}\n"
    "- Retrieved Knowledge:\n{knowledge}\n"
    "Output the top {top_n} results from most relevant to least relevant, listing the identifiers on separate lines"
)
DIALOGUE_MANAGEMENT = (
    "Analyze the conversation context: {context}. Determine the user's intention and suggest a system dialogue "
    "action. Provide your explanation and suggested action, enclosed in special tokens <a></a>"
)
RESPONSE = (
    "Act as an intelligent conversational recommender system. When responding, adhere to these guidelines:\n"
    "- Conversation Context:\n{context}\n- Use this to inform your dialogue.\n"
    "- Recommended Items:{items}\n- When available, include these in your response.\n"
    "- Response Rules: With Items: Seamlessly incorporate the recommended items within <item></item> into the "
    "response. Without Items: Generate a contextually relevant response that assists the user"
)

NO_KNOWLEDGE = "None"
SPEAKER_NAMES = {"seeker": "Seeker", "recommender": "Recommender"}


def slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fill(template: str, **values) -> str:
    """``template.format(**values)``, but only when the slots and the arguments are the same set."""
    want, have = slots(template), set(values)
    if want != have:
        raise ValueError(f"template slots {sorted(want)} but arguments {sorted(have)}")
    return template.format(**values)


def render_context(context, max_utterances: int, max_chars: int) -> str:
    """'Seeker: ...' lines of the most recent ``max_utterances`` utterances, cut to the last ``max_chars``
    characters (at a line start where possible): a conversation keeps its most recent part."""
    lines = [f"{SPEAKER_NAMES[u['speaker']]}: {u['text']}" for u in list(context)[-max_utterances:]]
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[-max_chars:]
        cut = text.find("\n")
        if 0 <= cut < len(text) - 1:
            text = text[cut + 1:]
    return text


def number_candidates(titles: list[str]) -> str:
    return "\n".join(f"[{i}] {title}" for i, title in enumerate(titles, start=1))


# ----------------------------------------------------------------------------- prompt builders
# The only places a generation prompt is assembled (instructions, mining, evaluation and the CLI use them).
def ranking_prompt(context: str, candidate_titles: list[str], knowledge: str) -> str:
    """The ranking prompt over ``candidate_titles`` (numbered [1]..[N] in the given order)."""
    return fill(RANKING, candidates=number_candidates(candidate_titles), context=context, knowledge=knowledge,
                top_n=len(candidate_titles))


def response_prompt(context: str, item_titles: list[str]) -> str:
    """The response-generation prompt; no items is written ' None' (the slot follows 'Recommended Items:')."""
    return fill(RESPONSE, context=context, items=(" " + ", ".join(item_titles)) if item_titles else " None")


def dialogue_management_prompt(context: str) -> str:
    return fill(DIALOGUE_MANAGEMENT, context=context)
