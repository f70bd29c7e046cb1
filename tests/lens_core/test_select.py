"""Token selection and pooling against hand-computed positions, padded and unpadded."""

from __future__ import annotations

import pytest
import torch

from coglens.lens.capture.select import (
    SelectionError,
    TokenSpec,
    pool,
    select_and_pool,
    select_tokens,
    token_positions,
)

# Row 0: [bos, boi, p, p, eoi, t, t] (7 real tokens, one image).
# Row 1: [pad, pad, bos, t, t, t, t] (left-padded by 2, text only).
TYPES = torch.tensor([[0, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
X = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)  # X[b, l] = [2*(7b+l), 2*(7b+l)+1]


def _select(spec, x=X, **kwargs):
    return select_tokens(x, spec, token_type_ids=TYPES, attention_mask=MASK, **kwargs)


def _rows_at(row, *positions):
    return X[row, list(positions)]


@pytest.mark.parametrize(
    "spec,row0,row1",
    [
        ("all", range(7), range(2, 7)),
        ("last", [6], [6]),
        ([0], [0], [2]),  # position 0 of row 1 is its bos at column 2, not a pad
        ([0, -1], [0, 6], [2, 6]),
        ("slice:1:3", [1, 2], [3, 4]),
        ("slice:-2:", [5, 6], [5, 6]),
        ("image", [1, 2, 3, 4], []),
        ("text", [5, 6], [3, 4, 5, 6]),  # bos excluded
        ("boi", [1], []),
        ("eoi", [4], []),
        ("frame:0", [1, 2, 3, 4], []),
        ("frame:-1", [1, 2, 3, 4], []),
        ("frame:1", [], []),
    ],
)
def test_selection_by_hand(spec, row0, row1):
    got = _select(spec)
    torch.testing.assert_close(got[0], _rows_at(0, *row0))
    torch.testing.assert_close(got[1], _rows_at(1, *row1))


def test_positions_do_not_depend_on_padding():
    alone = X[1:, 2:]  # row 1 without its two pads, as if run on its own
    for spec in ("all", "last", [0, 2], "slice:1:4", "text"):
        batched = _select(spec)[1]
        single = select_tokens(alone, spec, token_type_ids=TYPES[1:, 2:], attention_mask=MASK[1:, 2:])[0]
        torch.testing.assert_close(batched, single)


def test_video_frames_are_vision_runs():
    # [bos, boi, p, eoi, "0", boi, p, eoi, "1", q] : two frames, each followed by its index token
    types = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1, 0, 0]])
    x = torch.arange(10.0).reshape(1, 10, 1)
    rows = lambda spec: select_tokens(x, spec, token_type_ids=types)[0].flatten().tolist()  # noqa: E731
    assert rows("frame:0") == [1, 2, 3]
    assert rows("frame:1") == [5, 6, 7]
    assert rows("boi") == [1, 5]
    assert rows("eoi") == [3, 7]
    assert rows("text") == [4, 8, 9]


def test_pooling_over_positions_only():
    sel = _select("text")[1]  # positions 3..6 of row 1: values X[1, 3:7]
    torch.testing.assert_close(
        pool(sel, "mean"), torch.tensor([(20 + 22 + 24 + 26) / 4, (21 + 23 + 25 + 27) / 4])
    )
    torch.testing.assert_close(pool(sel, "max"), torch.tensor([26.0, 27.0]))
    torch.testing.assert_close(pool(sel, "last"), torch.tensor([26.0, 27.0]))
    assert pool(sel, "none") is sel
    with pytest.raises(SelectionError, match="empty selection"):
        pool(_select("image")[1], "mean")
    with pytest.raises(SelectionError, match="none | mean | max | last"):
        pool(sel, "median")


def test_select_and_pool_marks_empty_rows():
    out = select_and_pool(X, "image", "mean", token_type_ids=TYPES, attention_mask=MASK)
    torch.testing.assert_close(out[0], torch.tensor([(2 + 4 + 6 + 8) / 4, (3 + 5 + 7 + 9) / 4]))
    assert out[1] is None


def test_two_dimensional_outputs_never_pool_features():
    pooled = torch.tensor([[1.0, 2.0, 9.0], [4.0, 5.0, 6.0]])  # [B, D], e.g. a pooler output
    rows = select_and_pool(pooled, "all", "mean", token_type_ids=TYPES, attention_mask=MASK)
    torch.testing.assert_close(rows[0], pooled[0])
    torch.testing.assert_close(rows[1], pooled[1])
    per_token = torch.arange(14.0).reshape(2, 7)  # [B, L] matching the layout: one scalar per token
    rows = select_and_pool(per_token, "all", "mean", token_type_ids=TYPES, attention_mask=MASK)
    torch.testing.assert_close(rows[1], torch.tensor((9 + 10 + 11 + 12 + 13) / 5))


def test_unbatched_and_other_axes():
    seq = torch.arange(10.0).reshape(5, 2)  # [L, D] without a batch axis or layout
    torch.testing.assert_close(select_tokens(seq, "last")[0], seq[[4]])
    vision = torch.randn(2, 17, 4)  # vision tower output: its axis is not the prompt's tokens
    torch.testing.assert_close(_select("last", vision)[1], vision[1, [16]])
    torch.testing.assert_close(_select("all", vision)[0], vision[0])
    with pytest.raises(SelectionError, match="17 positions per row and the prompt 7 tokens"):
        _select("image", vision)
    conv = torch.randn(2, 3, 2, 2)  # 4-D feature map: one position per row
    assert select_and_pool(conv, "all", "mean", token_type_ids=TYPES)[1].shape == (3, 2, 2)
    with pytest.raises(SelectionError, match="batch axis"):
        _select("all", torch.randn(3, 7, 2))
    with pytest.raises(SelectionError, match="needs token_type_ids"):
        select_tokens(X, "image", attention_mask=MASK)


def test_out_of_range_positions():
    with pytest.raises(SelectionError, match=r"\[5\] are out of range for row 1, which has 5 real tokens"):
        _select([0, 5])


def test_generation_steps():
    # cached decode step 2: one new (language) token per row
    step = torch.tensor([[[100.0]], [[200.0]]])
    assert [r.flatten().tolist() for r in _select("text", step, step=2)] == [[100.0], [200.0]]
    assert [r.numel() for r in _select("image", step, step=2)] == [0, 0]
    # uncached step 2: the whole sequence again, prompt + 2 generated tokens
    full = torch.arange(18.0).reshape(2, 9, 1)
    assert _select("text", full, step=2)[1].flatten().tolist() == [12, 13, 14, 15, 16, 17]
    assert token_positions("text", token_type_ids=TYPES, attention_mask=MASK, step=2)[0].tolist() == [
        5,
        6,
        7,
        8,
    ]


def test_token_positions():
    got = token_positions("image", token_type_ids=TYPES, attention_mask=MASK)
    assert [p.tolist() for p in got] == [[1, 2, 3, 4], []]


@pytest.mark.parametrize(
    "value,canonical",
    [
        ("all", "all"),
        (" last ", "last"),
        ([0, -1], "[0, -1]"),
        ("[3]", "[3]"),
        (2, "[2]"),
        ("slice:1:", "slice:1:"),
        ("slice::-2", "slice::-2"),
        ("frame:3", "frame:3"),
        ("image", "image"),
    ],
)
def test_token_spec_round_trip(value, canonical):
    spec = TokenSpec.parse(value)
    assert str(spec) == canonical
    assert TokenSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "value", ["first", "slice:a:b", "slice:1", "frame:x", "[1.5]", [], [True], 1.0, None]
)
def test_token_spec_rejects(value):
    with pytest.raises(SelectionError, match="is not one of: all | last"):
        TokenSpec.parse(value)
