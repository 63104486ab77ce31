"""What a person reads: the generated reply checked against the turn and cleaned.

A small model's greedy reply can name a film the ranker did not choose (or none of the catalogue at all),
loop (``<item>The <item>The ...``, a line over and over), copy the seeker's own words, or go on writing the
conversation's next turn. ``ground_reply`` makes the reply a person sees:

1. it stops where the model starts another speaker's turn (``Seeker:``, ``<|user|>``, ...) and drops role
   markers it opens with; a last sentence that ends inside a title (the token limit cut "<item>The Ma" or
   "The Matrix (199") goes, and so does a sentence that echoes the prompt's instructions (``ECHO_WORDS`` words in a
   row of a generation template: "You are an intelligent conversational recommender system."), paraphrases the
   system's role to the seeker (``SELF_DESCRIPTION``: "You are designed to provide recommendations ...") or talks
   about the prompt instead of to the seeker (``META_TALK``: "The user's response should be ...", "The answer to
   the question ... is": the rest of its line goes with it); these rules live in ``pipeline.workflow.prompt_echo``.
   A bracketed slot the model writes in place of a title or a turn ("[item]", "[item1] (2007)", "[Greetings]", one
   word left open at a line's end: "[item") goes, a title inside brackets stays without them;
2. loops are cut: a span of 3+ characters repeated 3+ times in a row is kept once, so is a word said twice in a
   row; a line said before (or the start of one) is dropped, and the text ends before the second occurrence of a
   repeated 5-word sequence;
3. a span of ``COPY_WORDS``+ words that a seeker utterance of the context also has is removed; rules 2 and 3
   read a named title as one word (``TitleMask``: "La La Land" is not a loop, nor a title the seeker also
   named a copy);
4. items: a title the reply names (``<item>...</item>``, or a catalogue title with a year written out: its own or
   another, "The Matrix (2017)") that is not one of the turn's recommended items is replaced by a recommended one
   it does not name yet, else removed; a recommended item written with another year gets its own; unmatched
   ``<item>`` tags are removed;
5. what is left with no word of 2+ letters becomes a fixed, counted fallback: the recommended items in one
   sentence, or (without items) a question about what the seeker likes; a reply that names none of the turn's
   recommended items gets that sentence added (counted too): a turn that recommends says what.

``check_reply`` measures the same faults (evaluation reports them for the raw generation and the cleaned reply).
Catalogue titles are matched only where they carry a year, e.g. "Up (2009)": short bare titles ("It", "Up")
would match ordinary words; before a year the catalogue does not give them, only where they are capitalized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from pipeline.workflow.prompt_echo import SENTENCE, drop_echo, echoes_prompt
from pipeline.workflow.prompt_echo import words as _words

ITEM_TAG = re.compile(r"<item>((?:(?!</?item>).)*?)</item>", re.DOTALL)  # a tag pair, nothing nested
STRAY_TAG = re.compile(r"</?item>")
YEAR_TITLE = re.compile(r"\(\d{4}\)\s*$")
YEAR = re.compile(r"\((\d{4})\)")
# a reply cut by the token limit inside a title: an <item> tag never closed, or a year never finished ("(199")
UNFINISHED_TITLE = re.compile(r"(<item>(?:(?!</?item>).)*|\(\d{0,4})\s*$", re.DOTALL)
SENTENCE_END = re.compile(r"[.!?](?=\s|[A-Z])|\n")  # not a "?" inside a quote: 'the question "What is best?" is'
# what may come right before a title's name written with a year it does not have (see Catalogue._name_before)
NAME_AFTER = re.compile(r"((^|\n)\s*[-*]?\s*|[.!?,;\"\u201c\u2018]\s*|\b[a-z][\w']*\s+)$")
PARTIAL_TAG_END = re.compile(r"</?[a-z]{0,4}\s*$")  # "<ite", "</item" where the token limit cut a tag
# another speaker's turn starting inside the reply: "Seeker:", "User:", chat-template and bracketed role markers
NEXT_TURN = re.compile(r"(?im)(^|\s)(seeker|user|human)\s*:|<\|?(user|seeker|im_start|im_end|endoftext)\|?>")
ROLE_MARKER = re.compile(r"(?i)^(\s*(<\|?\s*(recommender|assistant|system)\s*\|?>|\[(recommender|assistant)\]|(recommender|assistant)\s*:))+")
REPEATED_SPAN = re.compile(r"(.{3,}?)\1{2,}", re.DOTALL)
REPEATED_WORD = re.compile(r"(?i)\b(\w+)(?:\s+\1\b)+")
# TitleMask's stand-in for a title: private-use characters around a word, so that a title counts as one word
PLACEHOLDER_OPEN, PLACEHOLDER_CLOSE = "\ue000", "\ue001"
PLACEHOLDER = re.compile("\ue000title[a-z]+\ue001")
PLACEHOLDER_PART = re.compile("\ue000[a-z]*\ue001?|\ue001")
LOOP_NGRAM = 5
COPY_WORDS = 6
# a bracketed slot, with a year written after it ("[item] (2007)"), or one word left open at a line's end ("[item")
SLOT = re.compile(r"\[([^\[\]\n]*)\](?:\s*\(\d{4}\))?|\[([^\[\]\s]*)(?=[ \t]*(?:\n|$))")
NAME_WORDS = 12  # the longest title name looked for before a year the catalogue does not give it
WORD = re.compile(r"[A-Za-z]{2,}")
FALLBACK_WITH_ITEMS = "You might like {items}."
FALLBACK_WITHOUT_ITEMS = "Could you tell me a bit more about what you would like to watch?"


def _lower(text: str) -> str:
    """``text.lower()`` with the offsets kept (a character whose lower case is longer, "İ", stays as it is)."""
    return "".join(c if len(low := c.lower()) != 1 else low for c in text)


def normalize(title: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", title.lower()).strip()


def without_year(title: str) -> str:
    return normalize(YEAR_TITLE.sub("", title))


@dataclass(frozen=True)
class ReplyCheck:
    """The faults of one reply."""

    outside_items: tuple[str, ...]  # titles named that are not among the turn's recommended items
    loop: bool  # a repeated span, line or 5-word sequence
    copied: bool  # a span of COPY_WORDS+ words a seeker utterance also has
    echo: bool  # a sentence with ECHO_WORDS+ words in a row of an instruction template, a SELF_DESCRIPTION or
    # META_TALK, or a bracketed slot ("[item]")


CLEAN = ReplyCheck((), False, False, False)


class Catalogue:
    """Item titles for finding the ones a reply names: tagged ``<item>`` mentions, and catalogue titles with a year
    written out without tags, the catalogue's year or another one ("The Matrix (2017)" names The Matrix (1999))."""

    def __init__(self, titles):
        self.with_year = sorted({t for t in titles if YEAR_TITLE.search(t)}, key=len, reverse=True)
        self.lower = [t.lower() for t in self.with_year]
        self.by_name: dict[str, list[str]] = {}  # a title without its year (normalized) -> the catalogue's titles
        for title in self.with_year:
            self.by_name.setdefault(without_year(title), []).append(title)

    def untagged(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, title) of catalogue titles written with a year outside ``<item>`` tags, not overlapping:
        with the catalogue's year (longest first), then a catalogue title's name before another year."""
        plain = _lower(ITEM_TAG.sub(lambda m: " " * len(m.group(0)), text))
        if "(" not in plain:
            return []
        found, taken = [], []
        for title, low in zip(self.with_year, self.lower):
            start = plain.find(low)
            while start >= 0:
                end = start + len(low)
                boundary = start == 0 or not plain[start - 1].isalnum()
                if boundary and not any(s < end and start < e for s, e in taken):
                    found.append((start, end, title))
                    taken.append((start, end))
                start = plain.find(low, start + 1)
        for year in YEAR.finditer(plain):
            if not any(s < year.end() and year.start() < e for s, e in taken):
                named = self._name_before(text, plain, year.start(), int(year.group(1)))
                if named and not any(s < year.end() and named[0] < e for s, e in taken):
                    found.append((named[0], year.end(), named[1]))
        return sorted(found)

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, title) of every title ``text`` names, in order: ``<item>`` pairs and ``untagged`` ones."""
        return sorted([(m.start(), m.end(), m.group(1)) for m in ITEM_TAG.finditer(text)] + self.untagged(text))

    def _name_before(self, text: str, plain: str, at: int, year: int) -> tuple[int, str] | None:
        """(start, catalogue title) of the longest catalogue title name written right before ``at`` (a year in
        brackets that is not the title's own), capitalized as a title is, with no tag inside, and not the end of a
        longer name: what comes before it is the text's start, a line, a sentence's or clause's end or a lowercase
        word ("Shin Godzilla (2016)", "Spider-Man: Homecoming (2017)" are not Godzilla or Homecoming); the title of
        the nearest year."""
        starts = [m.start() for m in re.finditer(r"[\w']+", plain[:at])][-NAME_WORDS:]
        for start in starts:  # the earliest start first: the longest name
            titles = self.by_name.get(normalize(plain[start:at]))
            if titles and (text[start].isupper() or text[start].isdigit()) and "<" not in text[start:at] \
                    and NAME_AFTER.search(text[:start]):
                return start, min(titles, key=lambda t: (abs(int(YEAR.findall(t)[-1]) - year), t))
        return None


def _is_allowed(title: str, allowed: list[str]) -> str | None:
    """The allowed title ``title`` names (with or without its year), else None."""
    key, bare = normalize(title), without_year(title)
    for a in allowed:
        if key == normalize(a) or (bare and bare == without_year(a)):
            return a
    return None


def named_titles(text: str, catalogue: Catalogue) -> list[str]:
    return [m.strip() for m in ITEM_TAG.findall(text)] + [t for _, _, t in catalogue.untagged(text)]


def seeker_utterances(context: str) -> list[str]:
    """The seeker's utterances of a rendered context (``templates.render_context``: 'Seeker: ...' lines)."""
    return [line.split(":", 1)[1].strip() for line in context.split("\n") if line.startswith("Seeker:")]


def copied_span(reply: str, seeker: list[str]) -> tuple[int, int] | None:
    """(start, end) in ``reply`` of the longest run of COPY_WORDS+ words that a seeker utterance also has."""
    words = _words(reply)
    tokens = [w for w, _, _ in words]
    best = None
    for utterance in seeker:
        theirs = [w for w, _, _ in _words(utterance)]
        match = SequenceMatcher(None, tokens, theirs, autojunk=False).find_longest_match(0, len(tokens), 0, len(theirs))
        if match.size >= COPY_WORDS and (best is None or match.size > best.size):
            best = match
    if best is None:
        return None
    return words[best.a][1], words[best.a + best.size - 1][2]


def strip_slots(masked: str) -> str:
    """``masked`` (titles masked by ``TitleMask``) without its bracketed slots: a slot that holds a title keeps the
    title, any other goes, and so does a bracket left alone."""
    text = SLOT.sub(lambda m: m.group(1) if m.group(1) and PLACEHOLDER.search(m.group(1)) else "", masked)
    return text.replace("[", "").replace("]", "")


def cut_unfinished_title(text: str, catalogue: Catalogue) -> str:
    """``text`` without its last sentence where that ends inside a title (the token limit cut "<item>The Ma" or
    "The Matrix (199"): what is left of the title would read as a word or a different film. A full stop inside a
    title ("Mr. Smith Goes to Washington (1939)") ends no sentence; a tag cut after a whole title just goes."""
    text = PARTIAL_TAG_END.sub("", text)
    m = UNFINISHED_TITLE.search(text)
    if m is None or YEAR_TITLE.search(m.group(0)):
        return text
    titles = catalogue.spans(text)
    ends = [e.end() for e in SENTENCE_END.finditer(text, 0, m.start()) if not any(a <= e.start() < b for a, b, _ in titles)]
    return text[: ends[-1] if ends else 0]


def _repeated_ngram_start(text: str) -> int | None:
    """Character offset of the second occurrence of the first 5-word sequence that occurs twice."""
    words = _words(text)
    seen = {}
    for i in range(len(words) - LOOP_NGRAM + 1):
        gram = tuple(w for w, _, _ in words[i: i + LOOP_NGRAM])
        if gram in seen and seen[gram] + LOOP_NGRAM <= i:
            return words[i][1]
        seen.setdefault(gram, i)
    return None


def has_loop(text: str) -> bool:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return bool(REPEATED_SPAN.search(text)) or len(lines) != len(set(lines)) or _repeated_ngram_start(text) is not None


def cut_loops(text: str) -> str:
    text = REPEATED_SPAN.sub(lambda m: m.group(1), text)
    text = REPEATED_WORD.sub(lambda m: m.group(1), text)
    kept, seen = [], set()
    for line in text.split("\n"):  # a line said before, or the start of one (a repeat cut by the token limit)
        key = line.strip()
        if key and (key in seen or (len(key) >= 10 and any(earlier.startswith(key) for earlier in seen))):
            continue
        seen.add(key)
        kept.append(line)
    text = "\n".join(kept)
    cut = _repeated_ngram_start(text)
    return text[:cut] if cut is not None else text


class TitleMask:
    """Each title a text names (an ``<item>`` pair, or a catalogue title with its year) replaced by one placeholder
    word per distinct title, the same in the reply and the seeker's utterances: the loop and copy rules then read a
    title as one word ("La La Land" is no loop; recommending a film the seeker named is no copy, repeating their
    sentence around it is), and the same title said over and over is still a loop. ``restore`` puts them back."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self.keys: list[str] = []  # normalized titles, in the order first seen
        self.pieces: dict[str, str] = {}  # placeholder -> the text it stands for (its first occurrence)

    def protect(self, text: str) -> str:
        text = text.replace(PLACEHOLDER_OPEN, "").replace(PLACEHOLDER_CLOSE, "")
        out, at = [], 0
        for start, end, title in self.catalogue.spans(text):
            key = normalize(title)
            if key not in self.keys:
                self.keys.append(key)
            word = _placeholder(self.keys.index(key))
            self.pieces.setdefault(word, text[start:end])
            out += [text[at:start], word]
            at = end
        return "".join(out + [text[at:]])

    def restore(self, text: str) -> str:
        """``protect`` undone; a placeholder a loop cut left incomplete goes."""
        return PLACEHOLDER_PART.sub("", PLACEHOLDER.sub(lambda m: self.pieces.get(m.group(0), ""), text))


def _placeholder(index: int) -> str:
    letters = ""
    while True:
        index, digit = divmod(index, 26)
        letters += chr(ord("a") + digit)
        if not index:
            return f"{PLACEHOLDER_OPEN}title{letters}{PLACEHOLDER_CLOSE}"


def check_reply(reply: str, allowed: list[str], context: str, catalogue: Catalogue) -> ReplyCheck:
    outside = tuple(t for t in named_titles(reply, catalogue) if _is_allowed(t, allowed) is None)
    mask = TitleMask(catalogue)
    masked = mask.protect(reply)
    seeker = [mask.protect(u) for u in seeker_utterances(context)]
    # a title's full stop ends no sentence; a title's own brackets ("[REC] (2007)") are masked
    echo = any(echoes_prompt(s) for s in SENTENCE.findall(masked)) or "[" in masked or "]" in masked
    return ReplyCheck(outside, has_loop(masked), copied_span(masked, seeker) is not None, echo)


def _tidy(text: str) -> str:
    text = REPEATED_WORD.sub(lambda m: m.group(1), re.sub(r"[ \t]+", " ", text))
    text = re.sub(r" +([,.!?;:])", r"\1", text)
    text = re.sub(r"^[\s,.;:!?-]+", "", text)
    return "\n".join(line.strip() for line in text.split("\n") if line.strip()).strip()


def strip_stray_tags(text: str) -> str:
    """``text`` without the ``<item>`` / ``</item>`` tags that are not part of a pair."""
    out, at = [], 0
    for m in ITEM_TAG.finditer(text):
        out += [STRAY_TAG.sub("", text[at: m.start()]), m.group(0)]
        at = m.end()
    return "".join(out + [STRAY_TAG.sub("", text[at:])])


def _ground_items(text: str, allowed: list[str], catalogue: Catalogue) -> str:
    # tags left open or closed alone (a reply cut mid-title, tags in a loop): the tag goes, the words stay
    text = strip_stray_tags(text)
    named = {a for t in named_titles(text, catalogue) if (a := _is_allowed(t, allowed))}
    spare = [a for a in allowed if a not in named]

    def replace(title: str) -> str:
        if (a := _is_allowed(title, allowed)) is not None:  # written with a year: the recommended item's own
            return f"<item>{a if YEAR_TITLE.search(title) else title}</item>"
        return f"<item>{spare.pop(0)}</item>" if spare else ""

    text = ITEM_TAG.sub(lambda m: replace(m.group(1).strip()), text)
    for start, end, title in reversed(catalogue.untagged(text)):
        if (a := _is_allowed(title, allowed)) is None:
            text = text[:start] + (f"<item>{spare.pop(0)}</item>" if spare else "") + text[end:]
        elif normalize(text[start:end]) != normalize(a):  # another year ("The Matrix (2017)"): the item's own
            text = text[:start] + a + text[end:]
    return text


def fallback(allowed: list[str]) -> str:
    if not allowed:
        return FALLBACK_WITHOUT_ITEMS
    tagged = [f"<item>{a}</item>" for a in allowed]
    items = tagged[0] if len(tagged) == 1 else ", ".join(tagged[:-1]) + " or " + tagged[-1]
    return FALLBACK_WITH_ITEMS.format(items=items)


@dataclass(frozen=True)
class Reply:
    text: str  # what a person reads
    raw: str  # what the model generated
    fallback: bool  # nothing usable was left of ``raw``: the fixed sentence instead
    unclean: bool = False  # the fallback was taken because cleaning left a fault (a bug if it ever happens)
    appended: bool = False  # the reply named none of the recommended items: the fallback sentence was added


def _clean(text: str, allowed: list[str], seeker: list[str], catalogue: Catalogue) -> str:
    mask = TitleMask(catalogue)
    # masked: a title's full stop ends no sentence, its own brackets are no slot
    text = cut_loops(drop_echo(strip_slots(mask.protect(strip_stray_tags(text)))))
    seeker = [mask.protect(u) for u in seeker]
    span = copied_span(text, seeker)
    while span is not None:  # the copied words go, with the punctuation that closed them
        end = span[1] + len(re.match(r"[)\].,!?;:\s]*", text[span[1]:]).group(0))
        text = text[: span[0]] + " " + text[end:]
        span = copied_span(text, seeker)
    text = _ground_items(mask.restore(text), allowed, catalogue)
    mask = TitleMask(catalogue)  # afresh: grounding may have swapped titles
    return mask.restore(_tidy(mask.protect(text)))


def ground_reply(raw: str, allowed: list[str], context: str, catalogue: Catalogue) -> Reply:
    """The reply a person reads for ``raw`` (see the module docstring); ``allowed``: the turn's recommended titles."""
    turn = NEXT_TURN.search(raw)
    text = cut_unfinished_title(ROLE_MARKER.sub("", raw[: turn.start()] if turn else raw), catalogue)
    seeker = seeker_utterances(context)
    for _ in range(5):  # each pass can only shorten the text or swap a title; a second pass is rarely needed
        cleaned = _clean(text, allowed, seeker, catalogue)
        if cleaned == text:
            break
        text = cleaned
    if not WORD.search(text):
        return Reply(fallback(allowed), raw, True)
    if check_reply(text, allowed, context, catalogue) != CLEAN:  # not expected (tests/test_grounding.py); a safety net
        return Reply(fallback(allowed), raw, True, unclean=True)
    if allowed and not named_titles(text, catalogue):  # a turn that recommends names what it recommends
        return Reply(f"{text} {fallback(allowed)}", raw, False, appended=True)
    return Reply(text, raw, False)
