"""Ring 1: token pieces to text, and stop-sequence cutting."""
from hypothesis import given
from hypothesis import strategies as st

from app.engine.text import PieceDecoder, cut_tokens, find_stop, piece_texts, stop_search_start


def test_split_character_belongs_to_the_token_that_completes_it():
    euro = "€".encode()  # 3 bytes
    texts = piece_texts([b"a", euro[:1], euro[1:2], euro[2:] + b"b"])
    assert texts == ["a", "", "", "€b"]


def test_dangling_bytes_flush_as_replacement():
    assert piece_texts([b"x", "€".encode()[:2]]) == ["x", "\ufffd"]


@given(st.text(), st.data())
def test_pieces_join_to_the_text(text, data):
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)])]
    assert "".join(piece_texts(pieces)) == text


def test_find_stop_takes_the_earliest():
    assert find_stop("abc\n\ndef.", ["."]) == 8
    assert find_stop("abc\n\ndef.", [".", "\n\n"]) == 3
    assert find_stop("abc", ["x"]) == -1


def test_stop_spanning_the_seam_is_found():
    # Text grew from "Answer: A\n" to "Answer: A\n\nB": a "\n\n" straddles the old end.
    before = len("Answer: A\n")
    assert find_stop("Answer: A\n\nB", ["\n\n"], stop_search_start(before, ["\n\n"])) == 9


@given(st.lists(st.text(max_size=4), min_size=1, max_size=12), st.data())
def test_cut_tokens_keeps_exactly_the_text_before_the_cut(texts, data):
    joined = "".join(texts)
    cut = data.draw(st.integers(0, len(joined)))
    n, last = cut_tokens(texts, cut)
    kept = texts[: n - 1] + [last] if n else []
    assert "".join(kept) == joined[:cut]
    # The last kept token starts before the cut: nothing after the cut is returned.
    assert n == 0 or sum(len(t) for t in texts[: n - 1]) < cut


def test_decoder_is_incremental():
    d = PieceDecoder()
    assert [d.feed(b) for b in (b"\xe2", b"\x82", b"\xac")] == ["", "", "€"]
