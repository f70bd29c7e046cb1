"""CogvlmProcessor: left-padded batches (the recorded batch, mixed image/text rows), from_pretrained, decode."""

from __future__ import annotations

import pytest
import torch
from processing_stubs import StubTokenizer, fixed_rule, write_word_tokenizer
from testkit import copy_checkpoint, load_goldens, parity_folder
from transformers import BatchFeature

from coglens.processing.errors import ConversationError, ProcessingError, TokenizerNotFoundError
from coglens.processing.processor import CogvlmProcessor

IMAGE_TOKENS = {"cogvlm": 18, "cogvlm2": 6}


def _recorded_batch(recorded, n_image_tokens):
    """The two rows of batch_left_pad: (query, text ids, image) each, queries made up for the stub."""
    rows = []
    for row in range(2):
        mask = recorded["batch_left_pad/attention_mask"][row].bool()
        ids = recorded["batch_left_pad/input_ids"][row][mask]
        rows.append((f"row {row}", ids[1 + n_image_tokens :].tolist(), recorded["batch_left_pad/images"][row]))
    return rows


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_batch_matches_the_recorded_left_padded_batch(name, tiny_config):
    recorded = load_goldens(name)
    rows = _recorded_batch(recorded, IMAGE_TOKENS[name])
    tokenizer = StubTokenizer(fixed_rule({f"Question: {query} Answer:": ids for query, ids, _ in rows}))
    processor = CogvlmProcessor(tokenizer, tiny_config(name))

    batch = processor([query for query, _, _ in rows], images=[image for _, _, image in rows])

    assert isinstance(batch, BatchFeature)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[key], recorded[f"batch_left_pad/{key}"]), key
    assert [len(row) for row in batch["images"]] == [1, 1]
    for row, (_, _, image) in enumerate(rows):
        assert batch["images"][row][0] is image


def test_mixed_batch_pads_left_with_the_tokenizers_pad_id(tiny_config):
    tokenizer = StubTokenizer(lambda text: [50 + len(word) for word in text.split()])
    tokenizer.pad_token_id = 7
    processor = CogvlmProcessor(tokenizer, tiny_config("cogvlm2"))
    image = torch.randn(3, 56, 56)

    batch = processor(["short", "a much longer query here"], images=[image, None], template_version="base")

    # row 0: bos + 6 image tokens + 1 word = 8; row 1: bos + 5 words = 6 -> padded by 2 on the left
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [7, 7, 1, 51, 54, 56, 55, 54]
    assert batch["attention_mask"].tolist() == [[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 0], [0] * 8]
    assert batch["images"][0][0] is image and batch["images"][1] == []


def test_pad_id_defaults_to_zero(tiny_config):
    processor = CogvlmProcessor(StubTokenizer(lambda text: [9] * len(text)), tiny_config("cogvlm2"))
    batch = processor(["ab", "abcd"], template_version="base")
    assert batch["input_ids"][0].tolist() == [0, 0, 1, 9, 9]


def test_single_query_takes_a_bare_image_and_its_history(tiny_config):
    tokenizer = StubTokenizer(lambda text: [9] * len(text.split()))
    batch = CogvlmProcessor(tokenizer, tiny_config("cogvlm2"))(
        "Why?", images=torch.zeros(3, 56, 56), history=[("What?", "That.")]
    )
    assert tokenizer.calls == ["Question: What? Answer: That.\nQuestion: Why? Answer:"]
    assert batch["input_ids"].shape == (1, 1 + 6 + 7) and len(batch["images"][0]) == 1


def test_batch_history_is_per_row(tiny_config):
    tokenizer = StubTokenizer(lambda text: [9])
    CogvlmProcessor(tokenizer, tiny_config("cogvlm2"))(["a", "b"], history=[None, [("q", "r")]])
    assert tokenizer.calls == ["Question: a Answer:", "Question: q Answer: r\nQuestion: b Answer:"]


def test_multiple_images_are_passed_through(tiny_config):
    first, second = torch.zeros(3, 56, 56), torch.ones(3, 56, 56)
    processor = CogvlmProcessor(StubTokenizer(lambda text: [9]), tiny_config("cogvlm2"))
    batch = processor(["b"], images=[[second]], history=[[("a", "x", first)]], allow_multiple_images=True)
    assert [img[0, 0, 0].item() for img in batch["images"][0]] == [0.0, 1.0]


def test_batch_moves_and_casts_with_to(tiny_config):
    processor = CogvlmProcessor(StubTokenizer(lambda text: [9]), tiny_config("cogvlm2"))
    batch = processor(["a", "b"], images=[torch.zeros(3, 56, 56), None]).to(torch.bfloat16)
    assert batch["images"][0][0].dtype == torch.bfloat16 and batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": ["a", "b"], "images": [torch.zeros(3, 56, 56)]}, "images must be a list with one entry per query"),
        ({"queries": ["a", "b"], "history": [("q", "r")]}, "history must be a list with one entry per query"),
        ({"queries": []}, "queries is empty"),
    ],
)
def test_batch_shape_errors(kwargs, message, tiny_config):
    processor = CogvlmProcessor(StubTokenizer(lambda text: [9]), tiny_config("cogvlm2"))
    with pytest.raises(ConversationError, match=message):
        processor(**kwargs)


def test_only_pytorch_tensors(tiny_config):
    processor = CogvlmProcessor(StubTokenizer(lambda text: [9]), tiny_config("cogvlm2"))
    with pytest.raises(ProcessingError, match="return_tensors='np'"):
        processor("a", return_tensors="np")


def test_from_pretrained_encodes_and_decodes(tmp_path):
    folder = tmp_path / "ckpt"
    copy_checkpoint(parity_folder("cogvlm2"), folder)
    write_word_tokenizer(folder, ["Question:", "Answer:", "what", "is", "this", "a", "cat"])
    processor = CogvlmProcessor.from_pretrained(folder)
    assert processor.config.variant == "cogvlm2"

    batch = processor(["what is this", "what"], images=[torch.zeros(3, 56, 56), None])

    answer = [1, 8, 9, 2]  # <s> a cat </s> in the word tokenizer
    assert batch["input_ids"][0, -5:].tolist() == [3, 5, 6, 7, 4]
    assert processor.decode(batch["input_ids"][1, -3:]) == "Question: what Answer:"
    assert processor.batch_decode([answer], skip_special_tokens=True) == ["a cat"]


def test_from_pretrained_cogvlm1_needs_a_tokenizer_path(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="vicuna-7b-v1.5"):
        CogvlmProcessor.from_pretrained(parity_folder("cogvlm"))
    tokenizer_dir = write_word_tokenizer(tmp_path / "vicuna", ["Question:", "Answer:"])
    processor = CogvlmProcessor.from_pretrained(parity_folder("cogvlm"), tokenizer_path=tokenizer_dir)
    assert processor("x", template_version="chat")["input_ids"].tolist() == [[1, 3, 0, 4]]


def test_batch_feeds_the_model_like_the_recorded_call(tiny_config):
    """End to end on the tiny CogVLM2: the processor's batch gives the recorded logits."""
    from coglens import modeling
    recorded = load_goldens("cogvlm2")
    rows = _recorded_batch(recorded, IMAGE_TOKENS["cogvlm2"])
    tokenizer = StubTokenizer(fixed_rule({f"Question: {query} Answer:": ids for query, ids, _ in rows}))
    batch = CogvlmProcessor(tokenizer, tiny_config("cogvlm2"))(
        [query for query, _, _ in rows], images=[image for _, _, image in rows]
    )
    model = modeling.CogvlmForCausalLM.from_pretrained(parity_folder("cogvlm2"))
    with torch.no_grad():
        logits = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], recorded["batch_left_pad/logits"][real], atol=1e-4, rtol=1e-4)


def test_mixed_batch_rows_give_what_they_give_alone(tiny_config):
    """A text-only row beside an image row: each row's logits equal its own unpadded run."""
    from coglens import modeling
    model = modeling.CogvlmForCausalLM.from_pretrained(parity_folder("cogvlm2"))
    processor = CogvlmProcessor(StubTokenizer(lambda text: [5 + len(word) for word in text.split()]),
                                tiny_config("cogvlm2"))
    image = torch.randn(3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = model(**processor(["a longer text only question", "hi"], images=[None, image])).logits
        alone = [model(**processor("a longer text only question")).logits, model(**processor("hi", image)).logits]
    for row, single in enumerate(alone):
        torch.testing.assert_close(batch[row, -single.shape[1]:], single[0], atol=1e-4, rtol=1e-4)


def test_tiny_checkpoint_with_its_own_tokenizer(tmp_path):
    """The processor on a checkpoint folder as coglens.tiny writes it (config, weights, BPE tokenizer)."""
    from coglens import tiny
    processor = CogvlmProcessor.from_pretrained(tiny.write_tiny_checkpoint("cogvlm2-video", tmp_path / "video"))
    clip = torch.zeros(3, 3, 56, 56)
    batch = processor(["Describe the video.", "Hello"], images=[clip, None])
    frame_index_ids = [processor.tokenizer.encode(str(t), add_special_tokens=False) for t in range(3)]
    assert all(len(ids) == 1 for ids in frame_index_ids)
    types = batch["token_type_ids"][0].tolist()
    assert types[:8] == [0, 1, 1, 1, 1, 1, 1, 0] and sum(types) == 3 * 6
    assert batch["input_ids"][0, 7].item() == frame_index_ids[0][0]
    assert processor.decode(batch["input_ids"][1], skip_special_tokens=True) == "Question: Hello Answer:"
