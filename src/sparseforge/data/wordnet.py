"""WordNet synsets from the Princeton data files (`data.noun`, `data.verb`, `data.adj`,
`data.adv`; Debian/Ubuntu package `wordnet-base`) and a deterministic split by synset. A
synset's gloss is the text after ` | `: a definition, then examples in double quotes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic marker on adjectives: happy(a)
_QUOTED = re.compile(r'"([^"]*)"')


@dataclass(frozen=True)
class Synset:
    offset: int
    pos: str  # n, v, a, s (adjective satellite) or r
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.pos}{self.offset:08d}"


def parse_line(line: str) -> Synset | None:
    """One line of a data file; None for the license header (lines starting with spaces) and
    blank lines. Raises ValueError naming the problem for a malformed line."""
    if not line.strip() or line.startswith(" "):
        return None
    header, sep, gloss = line.rstrip("\n").partition(" | ")
    if not sep:
        header, gloss = header.rstrip(), ""
    fields = header.split()
    if len(fields) < 5:
        raise ValueError(f"not a WordNet data line (too few fields): {line[:80]!r}")
    offset, pos, w_cnt = int(fields[0]), fields[2], int(fields[3], 16)
    raw = fields[4 : 4 + 2 * w_cnt : 2]
    if len(raw) != w_cnt:
        raise ValueError(f"synset {fields[0]} declares {w_cnt} words, has {len(raw)}")
    words = tuple(_ADJ_MARKER.sub("", w).replace("_", " ") for w in raw)
    gloss = gloss.strip()
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
    return Synset(offset, pos, words, definition, examples)


def read_data_file(path: str | Path) -> list[Synset]:
    """Every synset in one WordNet data file, in file order."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                synset = parse_line(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
            if synset is not None:
                out.append(synset)
    return out


def load_wordnet(
    root: str | Path | None = None, parts: Sequence[str] = PARTS_OF_SPEECH
) -> list[Synset]:
    """Synsets of the given parts of speech from `root` (default /usr/share/wordnet)."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    unknown = [p for p in parts if p not in PARTS_OF_SPEECH]
    if unknown:
        raise ValueError(f"unknown part of speech {unknown}; choose from {list(PARTS_OF_SPEECH)}")
    missing = [f"data.{p}" for p in parts if not (root / f"data.{p}").is_file()]
    if missing:
        raise FileNotFoundError(
            f"WordNet data files {missing} not found in {root}; install them with "
            "`apt-get install wordnet-base` (Debian/Ubuntu) or pass root= a folder holding "
            "the Princeton WordNet 3.x data.* files"
        )
    return [s for p in parts for s in read_data_file(root / f"data.{p}")]


def _bucket(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the synset key and seed (same on every machine and order)."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_synsets(
    synsets: Iterable[Synset],
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[list[Synset], list[Synset], list[Synset]]:
    """(train, val, test) by synset: each synset's side depends only on its key and `seed`, so
    adding files or reordering them never moves a synset to another split."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            "and sum to less than 1"
        )
    train, val, test = [], [], []
    for s in synsets:
        u = _bucket(s.key, seed)
        (test if u < test_fraction else val if u < test_fraction + val_fraction else train).append(
            s
        )
    return train, val, test


def sentences(synsets: Iterable[Synset]) -> list[str]:
    """Each synset's definition and examples as separate sentences (empty ones left out)."""
    return [t for s in synsets for t in (s.definition, *s.examples) if t]
