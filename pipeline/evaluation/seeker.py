"""A simulated seeker for interactive evaluation (``pipeline.evaluation.simulation``), grounded in item metadata.

The seeker is given the target items of one test dialogue (the gold items of its recommendation turns) and talks
the way iEvaLM's "ask" mode does: it opens with the dialogue's first seeker utterance (or a request built from the
target's metadata), answers a question with one more attribute of the target (a genre, the director, an actor, the
decade), accepts a recommendation naming a target, and otherwise rejects it and adds an attribute. It never names a
target: every utterance passes ``leaks`` before it is sent, and an utterance that would leak is replaced (counted).

``TemplateSeeker`` is deterministic: its wording comes from templates picked by an RNG seeded with the run's seed,
the dialogue and the turn, so every recommender meets the same seeker. ``ModelSeeker`` lets the language model
write the utterances from the same attributes (its leaking outputs are counted and replaced by the template's).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.evaluation.content_check import GENRES
from pipeline.workflow.grounding import normalize

DIRECTOR = re.compile(r"Director: (.*?)\.(?: [A-Z][a-z]+:|$)")
CAST = re.compile(r"Cast: (.*?)\.(?: [A-Z][a-z]+:|$)")
MAX_GENRES, MAX_ACTORS = 2, 2

OPENINGS = ("Hi! Can you recommend {a_genre} movie?", "Hello, I'm looking for a good {genre} film.",
            "Hey, I'd like to watch {a_genre} movie tonight. Any ideas?")
PLAIN_OPENINGS = ("Hi! Can you recommend a movie?", "Hello, I'm looking for a good film to watch.")
ANSWERS = {
    "genre": ("I'm in the mood for {a_value} movie.", "I like {value} movies.", "{A_value} film would be great."),
    "director": ("I like films directed by {value}.", "Maybe something by {value}?", "I'm a fan of {value}'s work."),
    "actor": ("I'd like a movie with {value} in it.", "I'm a big fan of {value}.", "Something starring {value}, maybe?"),
    "decade": ("Ideally something from the {value}.", "I'd prefer a film from the {value}.", "Something from the {value}, please."),
}
REJECTIONS = ("Hmm, not really what I'm looking for.", "I don't think those are for me.", "No, not quite.")
NOTHING_MORE = ("Anything else you could suggest?", "Do you have other ideas?", "What else would you recommend?")
ACCEPTANCES = ("That sounds great, I'll watch it. Thanks!", "Perfect, that's the one I wanted. Thank you!")


def with_article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def decade(year) -> str:
    return "" if pd.isna(year) else f"{int(year) // 10 * 10}s"


def item_key(title: str, year) -> tuple[str, int | None]:
    return normalize(title), None if pd.isna(year) else int(year)


@dataclass(frozen=True)
class Attributes:
    """What the seeker may say about a target: its genres, director, actors and decade (as metadata has them)."""

    genres: tuple[str, ...] = ()
    director: str = ""
    actors: tuple[str, ...] = ()
    decade: str = ""

    def facts(self) -> list[tuple[str, str]]:
        """(kind, value) pairs, the first genre first (a request names a genre before anything else)."""
        out = [("genre", g) for g in self.genres[:MAX_GENRES]]
        out += [("director", self.director)] if self.director else []
        out += [("actor", a) for a in self.actors[:MAX_ACTORS]]
        out += [("decade", self.decade)] if self.decade else []
        return out


class MetadataIndex:
    """Attributes of every item of one or more catalogues (``items`` tables), found by title and year, so that an
    item whose own catalogue lists only its title (INSPIRED's) gets the metadata another catalogue has for it."""

    def __init__(self, tables: Sequence[pd.DataFrame]):
        self.by_key: dict[tuple[str, int | None], Attributes] = {}
        for items in tables:
            for row in items.itertuples(index=False):
                found = self._parse(row.description, row.year)
                key = item_key(row.title, row.year)
                if len(found.facts()) > len(self.by_key.get(key, Attributes()).facts()):
                    self.by_key[key] = found

    @staticmethod
    def _parse(description: str, year) -> Attributes:
        genres = GENRES.search(description)  # in the description's order (the content check keeps a set)
        director = DIRECTOR.search(description)
        cast = CAST.search(description)
        return Attributes(tuple(g.strip() for g in genres.group(1).split(",") if g.strip()) if genres else (),
                          director.group(1).strip() if director else "",
                          tuple(a.strip() for a in cast.group(1).split(",") if a.strip()) if cast else (), decade(year))

    def attributes(self, title: str, year) -> Attributes:
        return self.by_key.get(item_key(title, year), Attributes(decade=decade(year)))


def leaks(text: str, titles: Sequence[str]) -> list[str]:
    """The ``titles`` (without their year) that ``text`` contains as whole words, ignoring case and punctuation."""
    padded = f" {normalize(text)} "
    return [t for t in titles if normalize(t) and f" {normalize(t)} " in padded]


@dataclass
class SeekerState:
    """One simulated seeker: the dialogue it comes from, its targets (ids and titles), the facts it has left to
    tell, and what it has said."""

    dialogue_id: str
    targets: list[str]
    target_titles: list[str]
    facts: list[tuple[str, str]]
    opening: str
    told: list[tuple[str, str]] = field(default_factory=list)
    replaced: int = 0  # utterances replaced because they would have named a target
    regenerated: int = 0  # the model seeker's utterances that named a target (regenerated, never sent)


def rng_for(seed: int, dialogue_id: str, turn: int) -> np.random.Generator:
    """The seeker's RNG at one turn of one dialogue: the same for every recommender it talks to."""
    return np.random.default_rng([seed, zlib.crc32(dialogue_id.encode()), turn])


class TemplateSeeker:
    """The deterministic seeker: templates picked by ``rng_for``; every utterance audited by ``leaks``."""

    def __init__(self, seed: int, opening: str = "dialogue"):
        if opening not in ("dialogue", "template"):
            raise ValueError(f"opening: {opening!r}; expected dialogue or template")
        self.seed, self.opening = seed, opening

    def start(self, dialogue_id: str, targets: list[str], target_titles: list[str], attributes: Attributes,
              first_utterance: str) -> SeekerState:
        """A seeker for one dialogue; its facts in an order drawn from its RNG (a genre first where it has one)."""
        rng = rng_for(self.seed, dialogue_id, 0)
        facts = attributes.facts()
        first = facts[:1] if facts and facts[0][0] == "genre" else []
        rest = facts[len(first):]
        rest = [rest[i] for i in rng.permutation(len(rest))]
        return SeekerState(dialogue_id, targets, target_titles, first + rest, first_utterance)

    def openings(self, states: Sequence[SeekerState]) -> list[str]:
        return [self.open(s) for s in states]

    def replies(self, states: Sequence[SeekerState], turn: int, recommended: Sequence[list[str]],
                conversations: Sequence[list[dict]]) -> list[tuple[bool, str]]:
        """``reply`` for every seeker still talking (``conversations``: each one so far, for a seeker that reads it)."""
        return [self.reply(s, turn, r) for s, r in zip(states, recommended)]

    def open(self, state: SeekerState) -> str:
        """The first utterance: the dialogue's own (where it names no target), else a request from the metadata."""
        if self.opening == "dialogue" and state.opening.strip() and not leaks(state.opening, state.target_titles):
            return state.opening
        if self.opening == "dialogue" and state.opening.strip():
            state.replaced += 1
        rng = rng_for(self.seed, state.dialogue_id, 0)
        genre = next((v for k, v in state.facts if k == "genre"), None)
        if genre is not None:
            state.told.append(("genre", genre))
            return self._say(state, [t.format(genre=genre, a_genre=with_article(genre)) for t in OPENINGS], rng)
        return self._say(state, list(PLAIN_OPENINGS), rng)

    def reply(self, state: SeekerState, turn: int, recommended: list[str]) -> tuple[bool, str]:
        """(accepted, utterance) after the recommender's turn: ``recommended`` its items (empty: it asked or chatted)."""
        rng = rng_for(self.seed, state.dialogue_id, turn)
        if set(recommended) & set(state.targets):
            return True, self._say(state, list(ACCEPTANCES), rng)
        lead = REJECTIONS[int(rng.integers(len(REJECTIONS)))] + " " if recommended else ""
        fact = self.next_fact(state)
        if fact is None:
            return False, self._say(state, [lead + t for t in NOTHING_MORE], rng)
        kind, value = fact
        return False, self._say(state, [lead + t.format(value=value, a_value=with_article(value),
                                                        A_value=with_article(value).capitalize()) for t in ANSWERS[kind]], rng)

    def next_fact(self, state: SeekerState) -> tuple[str, str] | None:
        """The first fact not told yet whose wording names no target (one that would is skipped, counted)."""
        for fact in state.facts:
            if fact in state.told:
                continue
            state.told.append(fact)
            if leaks(fact[1], state.target_titles):  # an actor named like a target film
                state.replaced += 1
                continue
            return fact
        return None

    def _say(self, state: SeekerState, options: list[str], rng: np.random.Generator) -> str:
        """One of ``options`` drawn by ``rng``; the first that names no target where the drawn one would."""
        start = int(rng.integers(len(options)))
        for option in options[start:] + options[:start]:
            if not leaks(option, state.target_titles):
                return option
        state.replaced += 1
        return "..."


# the conversation first: a prompt longer than the model's limit loses its start, and the instruction must survive
SEEKER_PROMPT = ("The conversation so far:\n{context}\n\nYou are the seeker in this conversation, a person looking for "
                 "a movie you have not named. Write your next message, one or two short sentences, saying this: "
                 "\"{intent}\" Do not name any movie title.")
STRICT = " Never mention the movie you have in mind by its title."


class ModelSeeker(TemplateSeeker):
    """The seeker's words written by a language model (``lm.generate``, greedy, batched): the template seeker decides
    what to say (accept, or which fact to tell) and the model says it in its own words, with the conversation so far in
    its prompt. A generated utterance that names a target is counted and regenerated under a stricter prompt; if that
    one names it too, the template's wording is sent. Openings and acceptances keep the template's wording."""

    def __init__(self, seed: int, opening: str, lm, render, *, batch_size: int, prompt_length: int, max_new_tokens: int):
        super().__init__(seed, opening)
        self.lm, self.render = lm, render
        self.batch_size, self.prompt_length, self.max_new_tokens = batch_size, prompt_length, max_new_tokens

    def replies(self, states, turn, recommended, conversations):
        planned = super().replies(states, turn, recommended, conversations)
        todo = [i for i, (accepted, _) in enumerate(planned) if not accepted]
        out = list(planned)
        for strict in (False, True):
            if not todo:
                break
            prompts = [SEEKER_PROMPT.format(intent=planned[i][1], context=self.render(conversations[i])) + (STRICT if strict else "")
                       for i in todo]
            written = self.lm.generate(prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                       max_prompt_length=self.prompt_length)
            again = []
            for i, text in zip(todo, written):
                text = text.strip().split("\n")[0].strip()
                if text and not leaks(text, states[i].target_titles):
                    out[i] = (False, text)
                else:
                    states[i].regenerated += 1
                    again.append(i)
            todo = again
        return out
