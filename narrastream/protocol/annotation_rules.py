"""The rules that build the narrastream-324.v2 narrative annotations from each script's own prompts.

Deterministic and word-list driven: the lists live in ``benchmark_data/annotations/v2/lexicon.yaml``,
the few per-script corrections in ``benchmark_data/annotations/v2/overrides.yaml``, and the rules
are stated in docs/protocol.md ("Narrative annotations"). Every name and attribute produced is a
span (or a participle of a verb) of the script's prompts, so ``narrastream annotations verify``
finds it grounded. ``tools/build_annotations.py`` writes the file; a test rebuilds it byte for byte.

The rules, briefly (ids are those the file's header names):

- e-v2 (segment entities): characters are the cast's first names named in the segment's prompt, in
  order of mention; their attributes are the looks the script gives them (in this segment, else the
  segment that last described that look), then a posture and a held object from this segment.
  Objects are handled things from the lexicon, with their adjectives and the state a verb leaves
  them in ("handed by Ethan"). At most 4 entities: characters first, then acted-on objects, then
  other objects; at most 5 attributes.
- g-v2 (entity groups): a character's group is every segment naming them; an object's group is
  every segment mentioning it, for objects tagged in a segment or mentioned in two or more.
- c-v2 (continuity): a transition keeps continuity when both prompts name the same scene or share a
  named character.
- w-v2 (segment weights): base + turning points + handoffs + state changes + callbacks - repetition
  - setup/wrap-up, clamped to 1..100.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from narrastream.paths import benchmark_data_dir
from narrastream.protocol.annotations import MAX_ATTRIBUTES_PER_ENTITY, MAX_ENTITIES_PER_SEGMENT, prompts_sha256
from narrastream.protocol.grounding import bases

VERSION = "narrastream-324.v2"
RULES_DIR = "annotations/v2"
DOC = "docs/protocol.md"
RULES = {
    "segment_entities": f"e-v2 ({DOC}#entities-rule-e-v2)",
    "entity_groups": f"g-v2 ({DOC}#entity-groups-rule-g-v2)",
    "continuity": f"c-v2 ({DOC}#continuity-rule-c-v2)",
    "segment_weights": f"w-v2 ({DOC}#segment-weights-rule-w-v2)",
}
MAX_LOOKS = 4


def _plural_forms(noun: str) -> set[str]:
    forms = {noun, noun + "s", noun + "es"}
    if noun.endswith("y"):
        forms.add(noun[:-1] + "ies")
    if noun.endswith("fe"):
        forms.add(noun[:-2] + "ves")
    return forms


@dataclass(frozen=True)
class Lexicon:
    """The word lists of ``lexicon.yaml`` (see the comments there)."""

    raw: dict[str, Any]
    sha256: str

    @classmethod
    def load(cls, path: Path | None = None) -> "Lexicon":
        path = path or benchmark_data_dir() / RULES_DIR / "lexicon.yaml"
        data = path.read_bytes()
        return cls(raw=yaml.safe_load(data), sha256=hashlib.sha256(data).hexdigest())

    def words(self, key: str) -> frozenset[str]:
        return frozenset(str(w).lower() for w in self.raw[key])

    @property
    def pronouns(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.raw["pronouns"].items()}

    @property
    def object_forms(self) -> frozenset[str]:
        return frozenset(f for noun in self.raw["objects"] for f in _plural_forms(str(noun)))

    @property
    def ambiguous_forms(self) -> frozenset[str]:
        return frozenset(f for noun in self.raw["ambiguous_objects"] for f in _plural_forms(str(noun).lower()))


@dataclass
class Token:
    text: str
    low: str
    sentence: int
    name: str | None = None  # a cast name (possessive or not)
    possessive: bool = False
    scene: bool = False  # part of the scene's own phrase


_TOKEN = re.compile(r"[A-Za-z]+(?:[-'’][A-Za-z]+)*['’]?|[.,;:!?]")


def tokenize(prompt: str, cast: Sequence[str], scenes: Sequence[str]) -> list[Token]:
    """Words and punctuation of one prompt, with names, possessives, sentences and the scene marked."""
    tokens: list[Token] = []
    sentence = 0
    for m in _TOKEN.finditer(prompt):
        text = m.group(0)
        low = text.lower().replace("’", "'")
        tok = Token(text=text, low=low, sentence=sentence)
        bare = re.sub(r"['’]s?$", "", text)
        if bare in cast:
            tok.name, tok.possessive = bare, bare != text
        tokens.append(tok)
        if text in ".!?":
            sentence += 1
    lows = [t.low for t in tokens]
    for scene in scenes:
        words = scene.lower().split()
        for i in range(len(lows) - len(words) + 1):
            if lows[i:i + len(words)] == words:
                for t in tokens[i:i + len(words)]:
                    t.scene = True
    return tokens


@dataclass
class Mention:
    """One object mention in a prompt."""

    key: str
    head: str
    start: int
    end: int  # exclusive
    adjectives: list[str]
    states: list[str] = field(default_factory=list)
    #: (character, attribute) when a character holds or carries it: ("Luca", "holding book")
    holder: tuple[str, str] | None = None


class ScriptRules:
    """Apply the v2 rules to one script's prompts."""

    def __init__(self, prompts: Sequence[str], lex: Lexicon, cast: Sequence[str], scenes: Sequence[str]) -> None:
        self.prompts = list(prompts)
        self.lex = lex
        self.cast = tuple(cast)
        self.scenes = tuple(scenes)
        self.tokens = [tokenize(p, self.cast, self.scenes) for p in self.prompts]
        self.pronoun_of = lex.pronouns
        self.look_words = lex.words("look_modifiers") | lex.words("look_heads") | lex.words("person_nouns")
        self.object_forms = lex.object_forms
        self.adjectives = lex.words("object_adjectives")
        self.compounds = lex.words("compound_modifiers")
        self.determiners = lex.words("determiners")

    # ------------------------------------------------------------------ characters
    def named(self, k: int) -> list[str]:
        """Characters named in segment k, in order of first mention (possessives count)."""
        return list(dict.fromkeys(t.name for t in self.tokens[k] if t.name))

    def _look_run(self, toks: list[Token], i: int) -> tuple[str | None, int]:
        """The look phrase starting at i (or None) and the index after it."""
        j = i
        while j < len(toks) and toks[j].low in self.look_words and not toks[j].name:
            j += 1
        if j == i:
            return None, i
        run = [t.low for t in toks[i:j]]
        heads, person = self.lex.words("look_heads"), self.lex.words("person_nouns")
        last = run[-1]
        if j < len(toks) and toks[j].low in self.lex.words("look_stop_after"):
            return None, j
        if last in person:
            return (" ".join(run), j) if len(run) > 1 else (None, j)
        if last in heads and (len(run) > 1 or last in self.lex.words("look_bare_heads")):
            return " ".join(run), j
        return None, j

    def _looks_from(self, toks: list[Token], i: int, openers: bool) -> list[str]:
        """The looks of a description starting at token i (after a name or a possessive)."""
        connectors = self.lex.words("look_connectors")
        looks: list[str] = []
        if openers:
            if i < len(toks) and toks[i].low == ",":
                i += 1
            if i >= len(toks) or toks[i].low not in self.lex.words("look_openers"):
                return looks
        while i < len(toks):
            if toks[i].low in connectors and not toks[i].name:
                i += 1
                continue
            look, j = self._look_run(toks, i)
            if look is None:
                break
            looks.append(look)
            i = j
        return looks

    def _pronoun_owner(self, toks: list[Token], i: int) -> str | None:
        """The character a "his"/"her" at i refers to: the only one of that pronoun named before it in
        the sentence, else the only one named before it in the prompt; None when ambiguous."""
        pronoun = toks[i].low
        before = [t for t in toks[:i] if t.name and self.pronoun_of.get(t.name) == pronoun]
        same = list(dict.fromkeys(t.name for t in before if t.sentence == toks[i].sentence))
        if len(same) == 1:
            return same[0]
        if same:
            return None
        anywhere = list(dict.fromkeys(t.name for t in before))
        return anywhere[0] if len(anywhere) == 1 else None

    def looks(self, k: int) -> dict[str, list[str]]:
        """Character -> the looks segment k's prompt gives them, in order."""
        toks = self.tokens[k]
        out: dict[str, list[str]] = {}
        for i, tok in enumerate(toks):
            owner, found = None, []
            if tok.name and tok.possessive:
                owner, found = tok.name, self._looks_from(toks, i + 1, openers=False)
            elif tok.name:
                owner, found = tok.name, self._looks_from(toks, i + 1, openers=True)
            elif tok.low in ("his", "her"):
                looks = self._looks_from(toks, i + 1, openers=False)
                if looks:
                    owner, found = self._pronoun_owner(toks, i), looks
            if owner and found:
                out.setdefault(owner, []).extend(found)
        return out

    def _is_name(self, toks: list[Token], i: int) -> bool:
        return 0 <= i < len(toks) and toks[i].name is not None and not toks[i].possessive

    def _name_list_end(self, toks: list[Token], i: int) -> tuple[list[str], int]:
        """The names of the subject list starting at name token i ("A", "A and B", "A, B, and C"; an
        appositive between commas after a name is skipped) and the index after the list."""
        names, j = [toks[i].name or ""], i + 1
        while j < len(toks):
            if toks[j].low == "," and j + 1 < len(toks) and toks[j + 1].low in ("a", "an", "the", "with", "in",
                                                                                  "wearing"):
                close = next((m for m in range(j + 1, len(toks)) if toks[m].low in (",", ".")), len(toks))
                if close >= len(toks) or toks[close].low != ",":
                    return names, close
                j = close + 1
                if j < len(toks) and toks[j].low == "and" and not self._is_name(toks, j + 1):
                    return names, j
                continue
            if toks[j].low == "," and j + 1 < len(toks) and toks[j + 1].low == "who":
                return names, j + 2
            if toks[j].low == "and" and self._is_name(toks, j + 1):
                names.append(toks[j + 1].name or "")
                j += 2
            elif toks[j].low == "," and self._is_name(toks, j + 1):
                names.append(toks[j + 1].name or "")
                j += 2
            elif toks[j].low == "," and j + 1 < len(toks) and toks[j + 1].low == "and" and self._is_name(toks, j + 2):
                names.append(toks[j + 2].name or "")
                j += 3
            else:
                break
        return names, j

    def postures(self, k: int) -> dict[str, str]:
        """Character -> posture in segment k (rule e-v2)."""
        toks = self.tokens[k]
        posture = {str(a): str(b) for a, b in self.lex.raw["posture"].items()}
        skip = self.lex.words("verb_group_skip")
        out: dict[str, str] = {}
        i = 0
        while i < len(toks):
            tok = toks[i]
            if not tok.name or tok.possessive:
                i += 1
                continue
            names, j = self._name_list_end(toks, i)
            # participle appositive: "Name, standing ...", "Name, still seated ..."
            if j < len(toks) and toks[j].low == "," and len(names) == 1:
                m = j + 1
                while m < len(toks) and toks[m].low in skip:
                    m += 1
                if m < len(toks) and toks[m].low in posture and toks[m].low.endswith(("ing", "ed")):
                    out.setdefault(names[0], posture[toks[m].low])
                    i = m + 1
                    continue
            while j < len(toks) and (toks[j].low in skip or toks[j].low.endswith("ly")):
                j += 1
            if j < len(toks) and toks[j].low in posture:
                group = [posture[toks[j].low]]
                m = j + 1
                while m + 1 < len(toks) and toks[m].low in ("and", "or") and toks[m + 1].low in posture:
                    group.append(posture[toks[m + 1].low])
                    m += 2
                if len(set(group)) == 1:
                    for name in names:
                        out.setdefault(name, group[0])
            i = max(j, i + 1)
        return out

    # ------------------------------------------------------------------ objects
    def _subject(self, toks: list[Token], v: int) -> list[str]:
        """The subject names of the verb at v: the nearest name before it in the same sentence that no
        preposition governs, with the names listed with it ("A and B", "A, B, and C")."""
        blockers = self.lex.words("subject_blockers")
        i = v - 1
        while i >= 0 and toks[i].sentence == toks[v].sentence:
            if not self._is_name(toks, i):
                i -= 1
                continue
            names, m = [toks[i].name or ""], i - 1
            while m >= 0:
                if toks[m].low == "and" and m >= 2 and toks[m - 1].low == "," and self._is_name(toks, m - 2):
                    names.insert(0, toks[m - 2].name or "")
                    m -= 3
                elif toks[m].low in ("and", ",") and self._is_name(toks, m - 1):
                    names.insert(0, toks[m - 1].name or "")
                    m -= 2
                else:
                    break
            if m >= 0 and toks[m].low in blockers:
                i = m - 1
                continue
            return list(dict.fromkeys(names))
        return []

    def _verb_before(self, toks: list[Token], start: int, end: int) -> tuple[str | None, int]:
        """The object-state verb acting on the mention [start, end): (its lexicon key, its index)."""
        keys = {str(k) for k in self.lex.raw["object_states"]}
        i = start - 1
        while i >= 0 and toks[i].low in self.determiners:
            i -= 1
        if i < 0:
            return None, -1
        particle_after = toks[end].low if end < len(toks) else ""
        # "picks up the X", "sets aside the X"
        if i >= 1:
            for base in bases(toks[i - 1].low):
                if f"{base} {toks[i].low}" in keys:
                    return f"{base} {toks[i].low}", i - 1
        for base in bases(toks[i].low):
            if f"{base} {particle_after}" in keys:  # "sets the X aside"
                return f"{base} {particle_after}", i
            if base in keys:
                return base, i
        return None, -1

    def mentions(self, k: int) -> list[Mention]:
        """Object mentions in segment k, in order (rule e-v2)."""
        toks = self.tokens[k]
        blocked = self.lex.words("blocked_next")
        collectives = self.lex.words("collectives")
        holder = {str(a): str(b) for a, b in self.lex.raw["holder_states"].items()}
        states = {str(a): str(b) for a, b in self.lex.raw["object_states"].items()}
        found: list[Mention] = []
        i = 0
        while i < len(toks):
            tok = toks[i]
            if tok.low not in self.object_forms or tok.scene or tok.name:
                i += 1
                continue
            # extend right over compound nouns: the head is the last object noun of the run
            end = i + 1
            while end < len(toks) and toks[end].low in self.object_forms and not toks[end].scene:
                end += 1
            head = end - 1
            if end < len(toks) and toks[end].low in blocked:
                i = end
                continue
            # extend left over adjectives, compound modifiers, "-ly" adverbs and commas between adjectives
            start = i
            while start > 0:
                prev = toks[start - 1]
                if prev.scene or prev.name:
                    break
                if prev.low in self.adjectives or prev.low in self.compounds or prev.low in self.object_forms:
                    start -= 1
                elif prev.low == "," and start >= 2 and toks[start - 2].low in self.adjectives \
                        and toks[start].low in self.adjectives:
                    start -= 1
                elif prev.low.endswith("ly") and toks[start].low in self.adjectives and start < head:
                    start -= 1
                else:
                    break
            before = toks[start - 1].low if start > 0 else ""
            if toks[head].low in self.lex.ambiguous_forms and start == head and before not in self.determiners:
                i = end
                continue
            words = [t.low if t.low in self.adjectives or _sentence_start(toks, m) else t.text
                     for m, t in enumerate(toks[start:end], start) if t.low != ","]
            # the name: the head and the compound modifiers right before it; the rest: adjectives
            n = len(words) - 1
            while n > 0 and words[n - 1].lower() not in self.adjectives and (
                    words[n - 1].lower() in self.compounds or words[n - 1].lower() in self.object_forms):
                n -= 1
            name = " ".join(words[n:])
            adjectives: list[str] = []
            for w in words[:n]:
                if adjectives and adjectives[-1].endswith("ly"):
                    adjectives[-1] = f"{adjectives[-1]} {w}"
                else:
                    adjectives.append(w)
            mention = Mention(key=name, head=toks[head].low.lower(), start=start, end=end, adjectives=adjectives)
            # "a stack of X"
            if before == "of" and start >= 2 and toks[start - 2].low in collectives:
                mention.adjectives.append(f"in a {toks[start - 2].low}")
                verb, v = self._verb_before(toks, start - 2, end)
            else:
                verb, v = self._verb_before(toks, start, end)
            if verb is not None:
                subject = self._subject(toks, v)
                participle = states[verb]
                by = ", ".join(subject[:-1]) + " and " + subject[-1] if len(subject) > 1 else "".join(subject)
                mention.states.append(f"{participle} by {by}" if subject else participle)
                if verb in holder and len(subject) == 1:
                    mention.holder = (subject[0], f"{holder[verb]} {name}")
            found.append(mention)
            i = end
        return found


# ---------------------------------------------------------------------------------------------------
def _sentence_start(toks: list[Token], i: int) -> bool:
    return i == 0 or toks[i - 1].low in (".", "!", "?")


def _dedupe_looks(looks: Iterable[str]) -> list[str]:
    """Looks in order of first description, one per head noun: a later look with the same head
    replaces the earlier one's words (in its place) unless its words are all in the earlier one."""
    by_head: dict[str, str] = {}
    for look in looks:
        head = look.split()[-1]
        if head not in by_head or not set(look.split()) <= set(by_head[head].split()):
            by_head[head] = look  # "navy sweater" after "navy knit sweater" keeps the fuller look
    return list(by_head.values())


def build_script(prompts: Sequence[str], lex: Lexicon, cast: Sequence[str], scenes: Sequence[str],
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The v2 annotation of one script (a JSON-ready dict, keys in file order, no script_id)."""
    rules = ScriptRules(prompts, lex, cast, scenes)
    n = len(prompts)
    overrides = overrides or {}
    # ---- characters
    seen_looks: dict[str, list[str]] = {}
    char_attrs: list[dict[str, list[str]]] = []
    mentions = [rules.mentions(k) for k in range(n)]
    for k in range(n):
        for name, looks in rules.looks(k).items():
            seen_looks[name] = _dedupe_looks([*seen_looks.get(name, []), *looks])
        postures = rules.postures(k)
        held: dict[str, list[str]] = {}
        for m in mentions[k]:
            if m.holder:
                held.setdefault(m.holder[0], []).append(m.holder[1])
        attrs = {}
        for name in rules.named(k):
            looks = seen_looks.get(name, [])[:MAX_LOOKS]
            extra = ([postures[name]] if name in postures else []) + held.get(name, [])
            attrs[name] = list(dict.fromkeys(looks + extra))[:MAX_ATTRIBUTES_PER_ENTITY]
        char_attrs.append(attrs)
    # ---- objects: one entity per name; a bare head joins the latest entity with that head
    last_adjectives: dict[str, list[str]] = {}  # where each object was last described
    heads: dict[str, str] = {}
    seg_objects: list[dict[str, list[str]]] = []
    acted: list[set[str]] = []
    groups_obj: dict[str, list[int]] = {}
    for k in range(n):
        adjectives: dict[str, list[str]] = {}
        states: dict[str, list[str]] = {}
        acted_k: set[str] = set()
        for m in mentions[k]:
            key = heads[m.head] if m.key.lower() == m.head and m.head in heads else m.key
            heads[m.head] = key
            adjectives.setdefault(key, []).extend(a for a in m.adjectives if a not in adjectives[key])
            states.setdefault(key, []).extend(a for a in m.states if a not in states[key])
            if m.states:
                acted_k.add(key)
            if k not in groups_obj.setdefault(key, []):
                groups_obj[key].append(k)
        objs: dict[str, list[str]] = {}
        for key in adjectives:
            if adjectives[key]:
                last_adjectives[key] = adjectives[key]
            looks = adjectives[key] or last_adjectives.get(key, [])
            objs[key] = list(dict.fromkeys(looks + states[key]))[:MAX_ATTRIBUTES_PER_ENTITY]
        seg_objects.append(objs)
        acted.append(acted_k)
    # ---- the segment lists: characters first, then acted-on objects, then the others; cap 4
    segment_entities = []
    tagged_objects: set[str] = set()
    for k in range(n):
        chars = [{"name": c, "attributes": a} for c, a in char_attrs[k].items()]
        order = sorted(seg_objects[k], key=lambda key: (key not in acted[k], list(seg_objects[k]).index(key)))
        objs = [{"name": key, "attributes": seg_objects[k][key]} for key in order]
        entities = (chars + objs)[:MAX_ENTITIES_PER_SEGMENT]
        tagged_objects.update(e["name"] for e in entities[len(chars):])
        segment_entities.append(entities)
    # ---- groups (g-v2)
    groups: dict[str, list[int]] = {}
    for k in range(n):
        for name in rules.named(k):
            groups.setdefault(name, []).append(k)
    for key, ks in groups_obj.items():
        if key in tagged_objects or len(ks) >= 2:
            groups[key] = sorted(ks)
    line = {
        "prompts_sha256": prompts_sha256(prompts),
        "segment_weights": segment_weights(rules, lex),
        "continuity": continuity(rules),
        "entity_groups": groups,
        "segment_entities": segment_entities,
    }
    return apply_overrides(line, overrides)


def continuity(rules: ScriptRules) -> list[bool]:
    """c-v2: keep when both prompts name the same scene or share a named character."""
    def scene(k: int) -> str | None:
        text = rules.prompts[k].lower()
        return next((s for s in rules.scenes if s in text), None)

    keep = []
    for k in range(len(rules.prompts) - 1):
        same_scene = scene(k) is not None and scene(k) == scene(k + 1)
        keep.append(same_scene or bool(set(rules.named(k)) & set(rules.named(k + 1))))
    return keep


def weight_features(rules: ScriptRules, lex: Lexicon, k: int) -> dict[str, list[str]]:
    """w-v2's features of segment k: per feature, the distinct words of its list that the prompt uses
    (exact word forms, outside the scene's phrase, not right after a determiner: "his hands" is no handoff)."""
    cfg = lex.raw["weights"]
    determiners = lex.words("determiners")
    toks = rules.tokens[k]
    used = [t.low for i, t in enumerate(toks) if not t.scene and not (i > 0 and toks[i - 1].low in determiners)]
    out = {}
    for feature in ("turning_point", "handoff", "state_change", "callback", "repetition", "closure"):
        vocab = {str(w) for w in cfg[feature]["words"]}
        out[feature] = list(dict.fromkeys(w for w in used if w in vocab))
    return out


def segment_weights(rules: ScriptRules, lex: Lexicon) -> list[int]:
    """w-v2: the planner's criteria as points on the segment's own words (docs/protocol.md)."""
    cfg = lex.raw["weights"]
    n = len(rules.prompts)
    out = []
    for k in range(n):
        score = int(cfg["base"])
        for feature, hits in weight_features(rules, lex, k).items():
            if hits:
                spec = cfg[feature]
                score += int(spec["points"]) * min(len(hits), int(spec.get("max_count", 1)))
        if k == 0:
            score += int(cfg["setup"]["points"])
        if k == n - 1 and n > 1:
            score += int(cfg["wrap_up"]["points"])
        if 0 < k < n - 1:
            score += int(cfg["development"]["points"])
        out.append(max(1, min(100, score)))
    return out


# ---------------------------------------------------------------------------------------------------
def load_overrides(path: Path | None = None) -> tuple[dict[int, list[dict[str, Any]]], str]:
    """Per-script corrections (``overrides.yaml``) and the file's sha256."""
    path = path or benchmark_data_dir() / RULES_DIR / "overrides.yaml"
    data = path.read_bytes()
    raw = yaml.safe_load(data) or {}
    out: dict[int, list[dict[str, Any]]] = {}
    for entry in raw.get("overrides", []):
        out.setdefault(int(entry["script"]), []).append(entry)
    return out, hashlib.sha256(data).hexdigest()


def apply_overrides(line: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """Apply one script's override entries (see overrides.yaml for the operations)."""
    applied = []
    for entry in overrides or []:
        k = int(entry["segment"])
        entities = line["segment_entities"][k]
        if "drop" in entry:
            entities[:] = [e for e in entities if e["name"] != entry["drop"]]
            if not any(entry["drop"] in [e["name"] for e in seg] for seg in line["segment_entities"]):
                line["entity_groups"].pop(entry["drop"], None)
            elif entry["drop"] in line["entity_groups"]:
                line["entity_groups"][entry["drop"]] = [i for i in line["entity_groups"][entry["drop"]] if i != k]
        if "add" in entry:
            add = entry["add"]
            entities[:] = [e for e in entities if e["name"] != add["name"]]
            entities.append({"name": add["name"], "attributes": list(add.get("attributes", []))})
            if len(entities) > MAX_ENTITIES_PER_SEGMENT:
                raise ValueError(f"override {entry['id']}: segment {k} would hold more than "
                                 f"{MAX_ENTITIES_PER_SEGMENT} entities")
        if "attributes" in entry:
            for e in entities:
                if e["name"] == entry["entity"]:
                    e["attributes"] = list(entry["attributes"])
        applied.append(str(entry["id"]))
    if applied:
        line["overrides"] = applied
    return line


def header(lex: Lexicon, overrides_sha256: str, scripts_sha256: str) -> str:
    inputs = {"scripts_sha256": scripts_sha256, "lexicon_sha256": lex.sha256, "overrides_sha256": overrides_sha256}
    return (
        f"# NarraStream-Bench narrative annotations {VERSION}: one JSON object per script, keyed by script_id.\n"
        "# Built by tools/build_annotations.py from each script's own prompts (the official scripts file) and\n"
        f"# the rules' word lists and per-script overrides in benchmark_data/{RULES_DIR}/; not the official\n"
        "# planner's outputs. Every name and attribute is grounded in its script's prompts\n"
        "# (`narrastream annotations verify`). Rules and normalisation: docs/protocol.md.\n"
        f"# version: {VERSION}\n"
        f"# rules: {json.dumps(RULES)}\n"
        f"# inputs: {json.dumps(inputs)}\n"
    )


def build_file(scripts: Iterable[Any], scripts_sha256: str, lex: Lexicon | None = None,
               overrides_path: Path | None = None) -> str:
    """The whole v2 file as text (``scripts``: objects with ``id`` and ``prompts``)."""
    from narrastream.data import load_taxonomy

    lex = lex or Lexicon.load()
    taxonomy = load_taxonomy()
    overrides, overrides_sha = load_overrides(overrides_path)
    lines = []
    for script in scripts:
        body = build_script(script.prompts, lex, taxonomy.cast, taxonomy.scenes, overrides.get(script.id))
        lines.append(json.dumps({"script_id": script.id, **body}, ensure_ascii=False))
    return header(lex, overrides_sha, scripts_sha256) + "\n".join(lines) + "\n"
