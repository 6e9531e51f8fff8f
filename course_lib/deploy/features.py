"""Tokenizer and ``input2feature``-style batched preprocessing; GlobalPointer span targets and decoding.

Introduced in ``01_torchscript_triton.ipynb``. The original service's ``input2feature`` did, per text:
``[CLS]`` + characters + ``[SEP]``, truncation to ``max_seq_length``, padding, an attention mask and
segment ids. Here a real ``transformers`` BERT tokenizer does it from the character ``vocab.txt`` in
``data/addresses`` (no download), batched, with character offsets so predicted token spans map back
to the original string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from course_lib.deploy import import_transformers
from course_lib.deploy.data import ENTITY_TYPES, default_dir


def load_tokenizer(vocab: str | Path | None = None):
    """A ``BertTokenizerFast`` over the character vocabulary (``data/addresses/vocab.txt``), offline (notebook 01).

    transformers 5 renamed the constructor argument ``vocab_file`` → ``vocab`` and silently ignores the
    old name (you get a 5-token vocabulary and every character becomes ``[UNK]``); we pass the right one
    and check the size.
    """
    BertTokenizerFast = import_transformers().BertTokenizerFast
    path = Path(vocab) if vocab is not None else default_dir() / "vocab.txt"
    if not path.exists():
        raise FileNotFoundError(f"vocabulary {path} not found; run `python -m course_lib.deploy.data` to write it")
    n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    try:
        tok = BertTokenizerFast(vocab=str(path))  # transformers >= 5
    except TypeError:  # pragma: no cover - transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(path))
    if len(tok) != n:
        tok = BertTokenizerFast(vocab_file=str(path))  # transformers 4.x accepts `vocab` but ignores it
    if len(tok) != n:  # pragma: no cover
        raise RuntimeError(f"tokenizer loaded {len(tok)} tokens from {path}, expected {n}")
    return tok


@dataclass
class Features:
    """One batch of model inputs (int64 tensors, shape ``[batch, seq]``) plus what is needed to map back (notebook 01)."""

    input_ids: "object"
    token_type_ids: "object"
    attention_mask: "object"
    offsets: list[list[tuple[int, int]]]
    texts: list[str]
    truncated: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_tuple(self):
        """``(input_ids, token_type_ids, attention_mask)`` — the model's positional inputs."""
        return self.input_ids, self.token_type_ids, self.attention_mask

    def as_numpy(self) -> dict:
        """The three inputs as int64 numpy arrays keyed by name (what a Triton client sends)."""
        return {
            "input_ids": self.input_ids.numpy(),
            "token_type_ids": self.token_type_ids.numpy(),
            "attention_mask": self.attention_mask.numpy(),
        }


def input2feature(tokenizer, texts, max_seq_length: int = 64, pad_to_max: bool = False, warn: bool = True) -> Features:
    """Batch-encode ``texts``: ``[CLS] chars [SEP]``, truncation to ``max_seq_length``, padding, mask, segment ids (notebook 01).

    A text longer than ``max_seq_length - 2`` characters is truncated, and *said*: ``Features.notes`` holds
    one line per truncated text (also printed when ``warn``). Empty strings give ``[CLS] [SEP]``; characters
    missing from the vocabulary (emoji, traditional forms, other scripts) become ``[UNK]``.
    """
    import torch

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("input2feature needs at least one text")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}: {t!r}")
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS] x [SEP]), got {max_seq_length}")
    enc = tokenizer(
        texts,
        max_length=max_seq_length,
        truncation=True,
        padding="max_length" if pad_to_max else "longest",
        return_offsets_mapping=True,
        return_overflowing_tokens=False,
        return_tensors="pt",
    )
    offsets = [[tuple(map(int, o)) for o in row] for row in enc["offset_mapping"].tolist()]
    truncated, notes = [], []
    for i, t in enumerate(texts):
        n_tok = len(tokenizer.tokenize(t))
        cut = n_tok > max_seq_length - 2
        truncated.append(cut)
        if cut:
            kept = max(o[1] for o in offsets[i])
            notes.append(
                f"text {i} truncated: {n_tok} tokens > max_seq_length-2 = {max_seq_length - 2}; "
                f"kept the first {kept} of {len(t)} characters"
            )
    if warn:
        for n in notes:
            print("note:", n)
    return Features(
        input_ids=enc["input_ids"].to(torch.int64),
        token_type_ids=enc["token_type_ids"].to(torch.int64),
        attention_mask=enc["attention_mask"].to(torch.int64),
        offsets=offsets,
        texts=texts,
        truncated=truncated,
        notes=notes,
    )


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Token indices (first, last — inclusive) covering characters ``[start, end)``; None if truncated away (notebook 01)."""
    first = last = None
    for k, (s, e) in enumerate(offsets):
        if e <= s:  # special or padding token
            continue
        if first is None and s <= start < e:
            first = k
        if s < end <= e:
            last = k
    if first is None or last is None or last < first:
        return None
    return first, last


def span_targets(features: Features, examples: list[dict], entity_types=ENTITY_TYPES):
    """GlobalPointer targets ``[batch, n_types, seq, seq]`` (1 at (first, last) token of each gold span) (notebook 01)."""
    import torch

    b, n = features.input_ids.shape
    y = torch.zeros(b, len(entity_types), n, n)
    for i, ex in enumerate(examples):
        for ent in ex["entities"]:
            tok = char_span_to_tokens(features.offsets[i], ent["start"], ent["end"])
            if tok is not None:
                y[i, entity_types.index(ent["type"]), tok[0], tok[1]] = 1.0
    return y


def decode_spans(ner_logits, features: Features, entity_types=ENTITY_TYPES, threshold: float = 0.0) -> list[list[dict]]:
    """Predicted entities per text from GlobalPointer logits: ``{"type", "start", "end", "text", "score"}`` (notebook 01)."""
    import numpy as np

    logits = ner_logits.detach().cpu().numpy() if hasattr(ner_logits, "detach") else np.asarray(ner_logits)
    if logits.shape[0] != len(features.texts):
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(features.texts)} texts")
    out: list[list[dict]] = []
    for i, text in enumerate(features.texts):
        ents = []
        offs = features.offsets[i]
        for t, s, e in zip(*np.where(logits[i] > threshold)):
            if s >= len(offs) or e >= len(offs) or offs[s][1] <= offs[s][0] or offs[e][1] <= offs[e][0]:
                continue
            cs, ce = offs[s][0], offs[e][1]
            ents.append({"type": entity_types[t], "start": cs, "end": ce, "text": text[cs:ce],
                         "score": float(logits[i, t, s, e])})
        out.append(sorted(ents, key=lambda d: (d["start"], d["end"])))
    return out


def area_clues(text: str) -> list[dict]:
    """The gazetteer names found in ``text``: ``{"level", "name", "area"}`` per province, city or district (notebook 01).

    Provinces and cities match in full or short form (``江苏省``/``江苏``, ``南京市``/``南京``), districts in full; a
    name with a typo (``成中区``) is not found. What a reader of a misclassified address needs: was a clue that
    names the area there, or did the text only hold ambiguous or misspelled ones?
    """
    from course_lib.deploy.data import GAZETTEER

    found, seen = [], set()
    for full, short, area, cities in GAZETTEER:
        for level, names in (("prov", (full, short)), *(("city", (c, c[:-1] if len(c) > 2 else c)) for c in cities)):
            name = next((n for n in names if n in text), None)
            if name and (level, names[0]) not in seen:
                seen.add((level, names[0]))
                found.append({"level": level, "name": name, "area": area})
        for districts in cities.values():
            for d in districts:
                if d in text and ("district", d, area) not in seen:
                    seen.add(("district", d, area))
                    found.append({"level": "district", "name": d, "area": area})
    # a municipality's province and city are one name: keep it once, as the city
    cities_found = {f["name"] for f in found if f["level"] == "city"}
    return [f for f in found if not (f["level"] == "prov" and f["name"] in cities_found)]
