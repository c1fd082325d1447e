"""``iam.entities: prompt_names``: an offline entity source that reads only the script's prompts.

The released method asks an LLM for each prompt's characters (``iam.entities: llm``). Where no LLM can
run (``preset=tiny``: CPU tests with random weights, no server, no checkpoint), this deliberately simple
rule stands in for it, and the run's identity says so (``entities: prompt_names``):

* a *name* is a capitalised word (an upper-case letter, then lower-case letters; a possessive ``'s`` is
  dropped) that occurs somewhere in the script's prompts where only a name would be capitalised: inside
  a sentence, or in the possessive ("Clara's"), or opening a sentence directly followed by a comma or by
  "and" plus another capitalised word ("Mina, a young woman...", "Luca, Milan, and Dario...", "Miles
  and Luna..."), unless it ends in "-ly" ("Suddenly,"). Other sentence starts are skipped: any word is
  capitalised there ("In", "The", "Glass");
* each prompt's characters are the names it mentions (anywhere, sentence starts included), in order of
  first mention, with no attributes.

Nothing else is read: not the narrative annotations, not a cast list. Its limits are plain: a name that
only ever opens sentences before a verb ("Clara enters.") is missed; a capitalised place or brand
mid-sentence, or an opening word before a comma ("Satisfied, ..."), is taken for a character;
and no looks are extracted (the registry matches by name; the token weights need only the name's place
in the prompt). A reproduction of the paper's numbers uses ``llm``.
"""

from __future__ import annotations

import re
from typing import Sequence

from narrastream.iamflow.registry import ExtractedEntity

_WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)?")
_NAME = re.compile(r"[A-Z][a-z]+")
_SENTENCE = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
_OPENS_LIST = re.compile(r",|\s+and\s+[A-Z][a-z]")  # after a sentence's first word: "Mina, ..." / "Miles and Luna"


def _bare(word: str) -> str:
    """The word without a possessive ending (``Mina's`` -> ``Mina``)."""
    return re.sub(r"['’][a-z]*$", "", word)


def script_names(prompts: Sequence[str]) -> set[str]:
    """The capitalised words that the prompts use as names (module docstring)."""
    names: set[str] = set()
    for prompt in prompts:
        for sentence in _SENTENCE.split(prompt.strip()):
            for index, match in enumerate(_WORD.finditer(sentence)):
                bare = _bare(match.group())
                if not _NAME.fullmatch(bare):
                    continue
                opens_list = bool(_OPENS_LIST.match(sentence, match.end())) and not bare.endswith("ly")
                if index > 0 or bare != match.group() or opens_list:
                    names.add(bare)
    return names


def prompt_name_entities(prompts: Sequence[str]) -> list[list[ExtractedEntity]]:
    """Each prompt's characters: the script's names (:func:`script_names`) it mentions, in order."""
    names = script_names(prompts)
    characters: list[list[ExtractedEntity]] = []
    for prompt in prompts:
        seen: list[str] = []
        for word in _WORD.findall(prompt):
            bare = _bare(word)
            if bare in names and bare not in seen:
                seen.append(bare)
        characters.append([ExtractedEntity(name) for name in seen])
    return characters
