"""Is a phrase grounded in a prompt? The word normalisation that the annotation rules and their checks share.

A phrase (an entity name or an attribute) is grounded in a text when each of its *content words*
occurs in that text after normalisation (docs/protocol.md, "Grounding"):

1. case is folded and every character that is not a letter separates words, so hyphens and
   apostrophes split ("leather-bound" -> leather, bound; "Milan's" -> milan, s);
2. one-letter words and the function words in :data:`STOP_WORDS` (articles, pronouns, prepositions,
   conjunctions, auxiliaries) are not content words;
3. two words are the same word when they share a base form: the word itself, or the word minus one
   inflectional suffix (-s, -es, -ies/-y, -ed, -d, -ied/-y, -ing, with a final e restored or a doubled
   consonant undone; -s/-es/-ies only on words of 4+ letters, -ed/-ing on words of 5+), or its entry
   in :data:`IRREGULAR` (held -> hold, taken -> take). Bases shorter than three letters are not
   used. Comparatives and derived words stay distinct (longer ≠ long, seated ≠ sit).

So "lifted by Mina" is grounded in "Mina gently lifts the book"; "navy sweaters" in "his navy
sweater"; "dark green work shirt" is not grounded in a prompt that says only "green shirt".
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

STOP_WORDS = frozenset("""
a an the this that these those
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
one ones who whom whose which what
and or but nor so yet both either neither
of to in on at by for from with without into onto over under above below near beside besides between
among around across along through toward towards against about behind up down off out as than
is are was were be been being am do does did has have had having
""".split())

#: irregular forms -> base (both sides of a comparison are mapped, so "held" matches "holds")
IRREGULAR = {
    "held": "hold", "taken": "take", "took": "take", "given": "give", "gave": "give", "brought": "bring",
    "left": "leave", "kept": "keep", "caught": "catch", "sat": "sit", "stood": "stand", "laid": "lay",
    "put": "put", "set": "set", "cut": "cut", "shut": "shut", "chosen": "choose", "chose": "choose",
    "drawn": "draw", "drew": "draw", "thrown": "throw", "threw": "throw", "written": "write", "wrote": "write",
    "hung": "hang", "spread": "spread", "lit": "light", "read": "read", "found": "find", "made": "make",
    "shown": "show", "showed": "show", "bound": "bind", "worn": "wear", "wore": "wear", "led": "lead",
}

_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-cased letter runs of ``text`` (every other character separates words)."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """The words of ``text`` that must be grounded: not one letter long, not a function word."""
    return [w for w in words(text) if len(w) > 1 and w not in STOP_WORDS]


@lru_cache(maxsize=65536)
def bases(word: str) -> frozenset[str]:
    """The base forms of one lower-case word (itself included); see the module docstring."""
    out = {word}
    if word in IRREGULAR:
        out.add(IRREGULAR[word])
    stems: list[str] = []
    if len(word) >= 4 and (word.endswith("ies") or word.endswith("ied")):
        out.update((word[:-3] + "y", word[:-1]))  # carries -> carry, tied -> tie
    if len(word) >= 4 and word.endswith("es"):
        stems.append(word[:-2])
    if len(word) >= 4 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
    if len(word) >= 5 and word.endswith("ed"):
        stems.append(word[:-2])
        out.add(word[:-1])  # placed -> place
    if len(word) >= 5 and word.endswith("ing"):
        stems.append(word[:-3])
        out.add(word[:-3] + "e")  # placing -> place
    for stem in stems:
        out.add(stem)
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
            out.add(stem[:-1])  # stopped -> stop, setting -> set
    return frozenset(b for b in out if len(b) >= 3 or b == word)


class Grounding:
    """The base forms of one text, to ask whether phrases are grounded in it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._bases = frozenset().union(*(bases(w) for w in words(text))) if text else frozenset()

    def has_word(self, word: str) -> bool:
        return not bases(word).isdisjoint(self._bases)

    def missing(self, phrase: str) -> list[str]:
        """The content words of ``phrase`` that do not occur in this text (empty: grounded)."""
        return [w for w in content_words(phrase) if not self.has_word(w)]

    def grounds(self, phrase: str) -> bool:
        return not self.missing(phrase)


def grounded_in_any(phrase: str, texts: Iterable[Grounding]) -> bool:
    """Is ``phrase`` grounded in one of ``texts`` (all its content words in that one text)?"""
    return any(text.grounds(phrase) for text in texts)
