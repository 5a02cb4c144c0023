"""Token pieces to text, and stop sequences: pure functions on bytes and strings."""
from __future__ import annotations

import codecs
from typing import Iterable, Sequence


class PieceDecoder:
    """Turns token pieces (bytes) into text so that the texts of all tokens join to the whole text.

    A multi-byte character split over several tokens belongs to the token that completes it;
    the tokens before it get "" (byte-fallback tokens, emoji, CJK).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        """Text completed by this piece."""
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """Bytes still pending at the end, as U+FFFD replacement characters."""
        return self._decoder.decode(b"", final=True)


def piece_texts(pieces: Iterable[bytes]) -> list[str]:
    """Texts of a whole token sequence, pending bytes flushed into the last token."""
    decoder = PieceDecoder()
    texts = [decoder.feed(p) for p in pieces]
    tail = decoder.flush()
    if tail:
        texts[-1] += tail
    return texts


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index in `text` of the earliest stop sequence that begins at or after `start`, or -1."""
    best = -1
    for stop in stops:
        i = text.find(stop, start)
        if i != -1 and (best == -1 or i < best):
            best = i
    return best


def stop_search_start(text_len_before: int, stops: Sequence[str]) -> int:
    """Where to search again after text grew from `text_len_before`: a stop may straddle the seam."""
    longest = max((len(s) for s in stops), default=1)
    return max(0, text_len_before - longest + 1)


def cut_tokens(texts: Sequence[str], cut: int) -> tuple[int, str]:
    """Tokens kept when the text they join to is cut at `cut` characters.

    Returns (number of tokens kept, text of the last kept token). A token that straddles the
    cut is kept with its text shortened, so the kept texts still join to text[:cut].
    """
    pos = 0
    for i, t in enumerate(texts):
        end = pos + len(t)
        if end >= cut:
            if pos >= cut:
                return i, texts[i - 1] if i else ""
            return i + 1, t[: cut - pos]
        pos = end
    return len(texts), texts[-1] if texts else ""
