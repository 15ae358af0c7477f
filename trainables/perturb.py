"""Seeded text perturbations for robustness evaluation: typos, dropped and stray letters,
contractions, swapped words.

Pure functions of (text, rate, rng): nothing here loads a model or a tokenizer. A perturbation is
a ``(kind, rate)`` pair; ``rate`` is the probability with which each *eligible* unit changes:

==================  ===============================================  ============================
kind                what changes                                     eligible unit
==================  ===============================================  ============================
``swap``            two neighbouring letters of a word trade places  each letter that starts a
                    (``abcd`` at rate 1: ``badc``)                   not-yet-swapped pair
``delete``          the letter is dropped                            each letter
``insert``          a random letter (same case) follows the letter   each letter
``substitute``      the letter becomes another random letter         each letter
``typo``            the letter becomes a QWERTY neighbour            each ASCII letter
``contraction``     "do not" <-> "don't", "i am" <-> "i'm", ...      each table entry found
                    (both directions, case kept: "It is" -> "It's")
``word_swap``       two neighbouring words trade places              each word that starts a
                                                                     not-yet-swapped pair
==================  ===============================================  ============================

Letters are what ``str.isalpha`` says; digits, spaces and punctuation are never touched by the
character kinds. Words (``word_swap``) are runs of non-space characters, so punctuation travels
with its word; the spaces between words stay where they are.

``perturb_texts(texts, perturbations, seed=s)`` draws text ``i``'s randomness from
``numpy.random.default_rng([s, i])``: the same seed and text list give the same output, and one
text's perturbation does not depend on the others or on batch order. With several perturbations
they apply in the order given, each to the previous one's output.

``parse_spec("typo:0.1,delete:0.05")`` reads the command-line / config form.
"""

from __future__ import annotations

import math
import re
import string
from typing import Callable, NamedTuple, Sequence

import numpy as np

from trainables.errors import ConfigError

ALPHABET = string.ascii_lowercase

# Physical neighbours on a US QWERTY keyboard (same row and the staggered rows above/below).
QWERTY_NEIGHBOURS: dict[str, str] = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg", "y": "tugh", "u": "yihj",
    "i": "uojk", "o": "ipkl", "p": "ol",
    "a": "qwsz", "s": "adwezx", "d": "sferxc", "f": "dgrtcv", "g": "fhtyvb", "h": "gjyubn",
    "j": "hkuinm", "k": "jliom", "l": "kop",
    "z": "asx", "x": "zcsd", "c": "xvdf", "v": "cbfg", "b": "vngh", "n": "bmhj", "m": "njk",
}

# (expanded, contracted), lower case; either form is replaced by the other. Ambiguous
# contractions ("he'd": had or would) are left out so that both directions are exact.
CONTRACTIONS: tuple[tuple[str, str], ...] = (
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"),
    ("is not", "isn't"), ("are not", "aren't"), ("was not", "wasn't"), ("were not", "weren't"),
    ("have not", "haven't"), ("has not", "hasn't"), ("had not", "hadn't"),
    ("will not", "won't"), ("would not", "wouldn't"), ("cannot", "can't"),
    ("could not", "couldn't"), ("should not", "shouldn't"),
    ("i am", "i'm"), ("you are", "you're"), ("we are", "we're"), ("they are", "they're"),
    ("it is", "it's"), ("what is", "what's"), ("that is", "that's"), ("there is", "there's"),
    ("where is", "where's"), ("who is", "who's"), ("how is", "how's"),
    ("i will", "i'll"), ("you will", "you'll"), ("we will", "we'll"), ("they will", "they'll"),
    ("i have", "i've"), ("you have", "you've"), ("we have", "we've"), ("they have", "they've"),
    ("let us", "let's"),
)


class Perturbation(NamedTuple):
    """One perturbation kind at one rate (a plain ``(kind, rate)`` tuple)."""

    kind: str
    rate: float

    def describe(self) -> str:
        return f"{self.kind}:{self.rate:g}"


# --------------------------------------------------------------------------- character level

_LETTER_RUN = re.compile(r"[^\W\d_]+")  # letters only: no digits, no underscore


def _same_case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter


def swap_letters(text: str, rate: float, rng: np.random.Generator) -> str:
    """Inside each word, walk left to right: with probability ``rate`` the letter and the next
    one trade places and the walk skips past both (so a letter moves at most once)."""
    def swap_run(match: re.Match) -> str:
        chars = list(match.group())
        i = 0
        while i < len(chars) - 1:
            if rng.random() < rate:
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
                i += 2
            else:
                i += 1
        return "".join(chars)

    return _LETTER_RUN.sub(swap_run, text)


def delete_letters(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each letter is dropped with probability ``rate``."""
    return "".join(c for c in text if not (c.isalpha() and rng.random() < rate))


def insert_letters(text: str, rate: float, rng: np.random.Generator) -> str:
    """After each letter, with probability ``rate``, a random letter of the same case."""
    out = []
    for c in text:
        out.append(c)
        if c.isalpha() and rng.random() < rate:
            out.append(_same_case(ALPHABET[rng.integers(len(ALPHABET))], c))
    return "".join(out)


def substitute_letters(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each letter, with probability ``rate``, becomes a different random letter of the same case."""
    out = []
    for c in text:
        if c.isalpha() and rng.random() < rate:
            own = ALPHABET.find(c.lower())
            pick = int(rng.integers(len(ALPHABET) - 1 if own >= 0 else len(ALPHABET)))
            if own >= 0 and pick >= own:
                pick += 1  # skip the letter itself: a substitution always changes the text
            c = _same_case(ALPHABET[pick], c)
        out.append(c)
    return "".join(out)


def keyboard_typos(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each ASCII letter, with probability ``rate``, becomes one of its QWERTY neighbours
    (``QWERTY_NEIGHBOURS``), keeping its case."""
    out = []
    for c in text:
        near = QWERTY_NEIGHBOURS.get(c.lower())
        if near is not None and rng.random() < rate:
            c = _same_case(near[rng.integers(len(near))], c)
        out.append(c)
    return "".join(out)


# --------------------------------------------------------------------------- word level


def _contraction_lookup() -> tuple[re.Pattern, dict[str, str]]:
    other = {}
    for expanded, contracted in CONTRACTIONS:
        other[expanded] = contracted
        other[contracted] = expanded
    # longest first, so "what is" wins over a shorter entry starting at the same place
    forms = sorted(other, key=len, reverse=True)
    alternatives = [re.escape(f).replace(r"\ ", r"\s+").replace("'", "['’]") for f in forms]
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE), other


_CONTRACTION_RE, _CONTRACTION_OTHER = _contraction_lookup()


def _match_case(source: str, target: str) -> str:
    """``target`` written in ``source``'s case: ALL CAPS, Capitalised or as it is (lower)."""
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def toggle_contractions(text: str, rate: float, rng: np.random.Generator) -> str:
    """Each form of the ``CONTRACTIONS`` table found in the text (either direction, any case,
    straight or curly apostrophe), with probability ``rate``, is replaced by the other form."""
    def toggle(match: re.Match) -> str:
        found = match.group()
        if not rng.random() < rate:
            return found
        key = " ".join(found.lower().replace("’", "'").split())
        return _match_case(found, _CONTRACTION_OTHER[key])

    return _CONTRACTION_RE.sub(toggle, text)


def swap_words(text: str, rate: float, rng: np.random.Generator) -> str:
    """Walk the words left to right: with probability ``rate`` a word and the next one trade
    places and the walk skips past both. The whitespace between them stays where it was."""
    parts = re.split(r"(\s+)", text)  # words at even positions (possibly ''), spaces at odd
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    k = 0
    while k < len(words) - 1:
        if rng.random() < rate:
            a, b = words[k], words[k + 1]
            parts[a], parts[b] = parts[b], parts[a]
            k += 2
        else:
            k += 1
    return "".join(parts)


# --------------------------------------------------------------------------- registry and spec

KINDS: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "swap": swap_letters,
    "delete": delete_letters,
    "insert": insert_letters,
    "substitute": substitute_letters,
    "typo": keyboard_typos,
    "contraction": toggle_contractions,
    "word_swap": swap_words,
}
SPEC_FORM = "KIND:RATE[,KIND:RATE...], e.g. typo:0.1,delete:0.05"


def parse_spec(spec: str, *, what: str = "perturbation spec") -> list[Perturbation]:
    """``"typo:0.1,delete:0.05"`` -> ``[Perturbation("typo", 0.1), Perturbation("delete", 0.05)]``.

    Raises ``ConfigError`` naming ``what``, the bad item and the rule: known kinds only (listed),
    a rate in (0, 1] after each kind, no item twice."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{what} is empty: expected {SPEC_FORM}; kinds: {', '.join(KINDS)}")
    parsed: list[Perturbation] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"{what} {spec!r} has an empty item (two commas, or one at an end); "
                              f"expected {SPEC_FORM}")
        kind, sep, rate_text = (part.strip() for part in item.partition(":"))
        if kind not in KINDS:
            raise ConfigError(f"{what} {spec!r}: unknown kind {kind!r}; known kinds: "
                              f"{', '.join(KINDS)}")
        if not sep or not rate_text:
            raise ConfigError(f"{what} {spec!r}: {item!r} has no rate; write {kind}:RATE with RATE "
                              f"in (0, 1], e.g. {kind}:0.1")
        try:
            rate = float(rate_text)
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
            raise ConfigError(f"{what} {spec!r}: the rate of {kind!r} must be a number in (0, 1] "
                              f"(a probability per letter or word), but got {rate_text!r}")
        if (kind, rate) in parsed:
            raise ConfigError(f"{what} {spec!r} names {kind}:{rate:g} twice; give each once")
        parsed.append(Perturbation(kind, rate))
    return parsed


def describe(perturbations: Sequence[Perturbation]) -> str:
    """The spec string of ``perturbations`` (``parse_spec``'s inverse, rates written with %g)."""
    return ",".join(Perturbation(*p).describe() for p in perturbations)


def perturb_text(text: str, perturbations: Sequence[Perturbation], rng: np.random.Generator) -> str:
    """``text`` with each perturbation applied in turn, drawing from ``rng``."""
    for kind, rate in perturbations:
        text = KINDS[kind](text, rate, rng)
    return text


def perturb_texts(texts: Sequence[str], perturbations: Sequence[Perturbation], *,
                  seed: int) -> list[str]:
    """Every text perturbed; text ``i`` with ``numpy.random.default_rng([seed, i])``, so its
    result depends on (seed, i, text) only."""
    return [perturb_text(text, perturbations, np.random.default_rng([seed, i]))
            for i, text in enumerate(texts)]
