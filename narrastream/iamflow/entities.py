"""The released entity source: an LLM asked for each prompt's characters (reference §3.2).

(The offline alternative, which reads only the prompts, is :mod:`narrastream.iamflow.prompt_names`; the
evaluator's annotations reach the agent only under the oracle configuration, ``model=iamflow_oracle``.)

``iam.entities: llm`` asks the LLM (any judge backend: an OpenAI-compatible endpoint serving e.g.
Qwen3-4B-Instruct-2507, or a local transformers model) for the characters of every prompt **before**
generation, as the release does, and then walks the prompts through a scratch registry so that every
ID-matching question is asked before the DiT starts too. :class:`MatchMemo` keeps those answers, keyed by
the new character and the candidate IDs, so the registry built during generation reaches the same IDs
without asking again (and a verifier's attribute corrections cannot change an ID, as in the release).
A failed question fails the script with the prompt named; nothing is guessed.
"""

from __future__ import annotations

from typing import Sequence

from narrastream.iamflow.questions import extract_entities, match_identity
from narrastream.iamflow.registry import EntityRegistry, ExtractedEntity, RegistryEntry, normalize_name
from narrastream.judges.base import Judge, JudgeError


class EntityExtractionError(RuntimeError):
    """The LLM could not give the characters of a prompt, or could not match one."""


class MatchMemo:
    """The registry's ``disambiguate`` hook: asks the LLM once per (character, candidate IDs)."""

    def __init__(self, llm: Judge) -> None:
        self.llm = llm
        self.answers: dict[tuple, int | None] = {}

    def __call__(self, entity: ExtractedEntity, candidates: Sequence[RegistryEntry]) -> int | None:
        key = (normalize_name(entity.name), tuple(entity.attributes), tuple(sorted(c.global_id for c in candidates)))
        if key not in self.answers:
            self.answers[key] = match_identity(self.llm, entity, candidates)
        return self.answers[key]


def extract_script_entities(llm: Judge, prompts: Sequence[str]) -> tuple[list[list[ExtractedEntity]], MatchMemo]:
    """Every prompt's characters and the ID-matching answers, all asked before generation.

    Raises :class:`EntityExtractionError` naming the prompt (1-based) whose question failed.
    """
    characters: list[list[ExtractedEntity]] = []
    for index, prompt in enumerate(prompts):
        try:
            characters.append(extract_entities(llm, prompt))
        except JudgeError as exc:
            raise EntityExtractionError(f"prompt {index + 1}: entity extraction failed: {exc}") from exc
    memo = MatchMemo(llm)
    scratch = EntityRegistry(memo)
    for index, found in enumerate(characters):
        try:
            scratch.register(index, found)
        except JudgeError as exc:
            raise EntityExtractionError(f"prompt {index + 1}: identity matching failed: {exc}") from exc
    return characters, memo
