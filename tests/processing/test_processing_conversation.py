"""build_conversation_input_ids against the layouts THUDM's code produced, plus the multi-image extension."""

from __future__ import annotations

import io
from itertools import groupby

import pytest
import torch
from PIL import Image
from processing_stubs import StubTokenizer, fixed_rule, video_stub_rule
from testkit import load_cases, load_goldens, parity_folder

from coglens.modeling.configuration_cogvlm import Cogvlm2VideoConfig
from coglens.modeling.routing import count_positions
from coglens.processing.conversation import build_conversation_input_ids, check_context
from coglens.processing.errors import ContextLengthError, ConversationError, TemplateError
from coglens.processing.image import load_image, preprocess_image

QUERY = "Describe the test image."
PROMPT = "Question: Describe the test image. Answer:"  # cases.json -> conventions.template_text_seen_by_tokenizer
IMAGE_TOKENS = {"cogvlm": 18, "cogvlm2": 6}


def _runs(token_type_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(token type, run length) for each contiguous run."""
    return [(kind, len(list(run))) for kind, run in groupby(token_type_ids.tolist())]


# --- parity with the recorded layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_single_image_layout_matches_the_goldens(name, tiny_config):
    recorded = load_goldens(name)
    assert load_cases(name)["conventions"]["template_text_seen_by_tokenizer"] == PROMPT
    n = IMAGE_TOKENS[name]
    tokenizer = StubTokenizer(fixed_rule({PROMPT: recorded["single/input_ids"][0, 1 + n :].tolist()}))
    image_path = parity_folder(name, "-goldens") / "test_image.png"

    out = build_conversation_input_ids(tokenizer, config=tiny_config(name), query=QUERY, images=[image_path])

    assert tokenizer.calls == [PROMPT]
    assert torch.equal(out["input_ids"], recorded["single/input_ids"][0])
    assert torch.equal(out["token_type_ids"], recorded["single/token_type_ids"][0])
    assert torch.equal(out["attention_mask"], recorded["single/attention_mask"][0])
    assert all(t.dtype == torch.long and t.dim() == 1 for t in (out["input_ids"], out["attention_mask"]))
    assert len(out["images"]) == 1
    torch.testing.assert_close(out["images"][0], recorded["preprocess/pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_text_only_layout_matches_the_goldens(name, tiny_config):
    recorded = load_goldens(name)
    tokenizer = StubTokenizer(fixed_rule({"hello": recorded["text_only/input_ids"][0, 1:].tolist()}))
    out = build_conversation_input_ids(tokenizer, config=tiny_config(name), query="hello", template_version="base")
    assert torch.equal(out["input_ids"], recorded["text_only/input_ids"][0])
    assert torch.equal(out["token_type_ids"], recorded["text_only/token_type_ids"][0])
    assert out["images"] is None


def test_model_card_call_shape_is_supported(tiny_config):
    """The model card passes history=[] and images=[PIL image], then indexes ['images'][0]."""
    recorded = load_goldens("cogvlm")
    tokenizer = StubTokenizer(lambda text: [5, 6, 7])
    image = load_image(_png_of(recorded))
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm"), query=QUERY, history=[],
                                       images=[image], template_version="vqa")
    assert tokenizer.calls == ["Question: Describe the test image. Short answer:"]
    assert out["images"][0].shape == (3, 56, 56)


def _png_of(recorded) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(recorded["preprocess/image_uint8"].numpy()).save(buffer, "PNG")
    return buffer.getvalue()


def test_history_is_rendered_before_the_query(tiny_config):
    tokenizer = StubTokenizer(lambda text: [10] * len(text.split()))
    build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2"), query="And now?",
                                 history=[("Hi?", "Hello.")])
    assert tokenizer.calls == ["Question: Hi? Answer: Hello.\nQuestion: And now? Answer:"]


def test_the_callers_tokenizer_is_not_changed(tiny_config):
    tokenizer = StubTokenizer(lambda text: [9])
    build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2"), query="q", images=[torch.zeros(3, 56, 56)])
    assert tokenizer.pad_token_id is None  # the original sets it to 128002
    assert "pad_token_id" not in vars(tokenizer)


def test_placeholder_id_comes_from_the_config(tiny_config):
    tokenizer = StubTokenizer(lambda text: [9])
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2", vocab_size=128256), query="q",
                                       images=[torch.zeros(3, 56, 56)])
    assert out["input_ids"][1:7].tolist() == [128002] * 6


# --- inputs and errors ------------------------------------------------------------------------------------


def test_preprocessed_tensor_is_used_as_is(tiny_config):
    pixels = torch.randn(3, 56, 56)
    out = build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query="q",
                                       images=[pixels])
    assert out["images"][0] is pixels


@pytest.mark.parametrize(
    "bad", [torch.zeros(3, 32, 32), torch.zeros(56, 56, 3), torch.zeros(3, 56, 56, dtype=torch.uint8)]
)
def test_wrong_tensor_image_is_refused(bad, tiny_config):
    with pytest.raises(ConversationError, match=r"preprocessed float tensor of shape \(3, 56, 56\)"):
        build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query="q",
                                     images=[bad])


def test_two_images_need_the_extension(tiny_config):
    with pytest.raises(ConversationError, match="at most one image.*allow_multiple_images=True"):
        build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query="q",
                                     images=[torch.zeros(3, 56, 56)] * 2)


def test_unknown_template(tiny_config):
    with pytest.raises(TemplateError, match="base, chat, vqa"):
        build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query="q",
                                     template_version="caption")


@pytest.mark.parametrize("history", [[("only a query",)], ["not a tuple"], [("q", 3)]])
def test_malformed_history(history, tiny_config):
    with pytest.raises(ConversationError, match=r"history\[0\]"):
        build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query="q",
                                     history=history)


def test_query_must_be_text(tiny_config):
    with pytest.raises(ConversationError, match="query must be a string"):
        build_conversation_input_ids(StubTokenizer(lambda t: [4]), config=tiny_config("cogvlm2"), query=None)


# --- multi-image extension --------------------------------------------------------------------------------


def _word_ids(text: str) -> list[int]:
    return [3 + len(word) for word in text.split()]


def test_each_image_opens_the_turn_that_introduced_it(tiny_config):
    first, second, third = (torch.full((3, 56, 56), float(i)) for i in range(3))
    history = [("What is this?", "A cat.", first), ("No image here?", "None."), ("And this?", "A dog.", second)]
    tokenizer = StubTokenizer(_word_ids)
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2"), query="Which is bigger?",
                                       history=history, images=[third], allow_multiple_images=True)

    assert tokenizer.calls == [
        "Question: What is this? Answer: A cat.\nQuestion: No image here? Answer: None.\n",
        "Question: And this? Answer: A dog.\n",
        "Question: Which is bigger? Answer:",
    ]
    lengths = [len(_word_ids(text)) for text in tokenizer.calls]
    assert _runs(out["token_type_ids"]) == [
        (0, 1), (1, 6), (0, lengths[0]), (1, 6), (0, lengths[1]), (1, 6), (0, lengths[2])
    ]
    assert [img[0, 0, 0].item() for img in out["images"]] == [0.0, 1.0, 2.0]  # in span order
    # no two spans merged: each image still costs exactly three positions
    assert count_positions(out["token_type_ids"]) == 1 + 3 * 3 + sum(lengths)


def test_history_image_later_in_the_conversation(tiny_config):
    image = torch.zeros(3, 56, 56)
    tokenizer = StubTokenizer(_word_ids)
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2"), query="Now?",
                                       history=[("Hi?", "Hello."), ("Look:", "Ok.", image)])
    assert tokenizer.calls == ["Question: Hi? Answer: Hello.\n", "Question: Look: Answer: Ok.\nQuestion: Now? Answer:"]
    assert [kind for kind, _ in _runs(out["token_type_ids"])] == [0, 1, 0]
    assert _runs(out["token_type_ids"])[0][1] == 1 + len(_word_ids(tokenizer.calls[0]))


def test_without_history_images_the_image_stays_after_bos(tiny_config):
    """The original layout, even with the extension on and a multi-turn history."""
    tokenizer = StubTokenizer(_word_ids)
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2"), query="Now?",
                                       history=[("Hi?", "Hello.")], images=[torch.zeros(3, 56, 56)],
                                       allow_multiple_images=True)
    assert tokenizer.calls == ["Question: Hi? Answer: Hello.\nQuestion: Now? Answer:"]
    assert _runs(out["token_type_ids"])[:2] == [(0, 1), (1, 6)]


def test_one_image_per_turn_even_with_the_extension(tiny_config):
    with pytest.raises(ConversationError, match="2 images on the current turn.*history entries"):
        build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2"), query="q",
                                     images=[torch.zeros(3, 56, 56)] * 2, allow_multiple_images=True)


def test_base_template_cannot_place_history_images(tiny_config):
    with pytest.raises(ConversationError, match="'base' template ignores history"):
        build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2"), query="q",
                                     history=[("a", "b", torch.zeros(3, 56, 56))], images=[torch.zeros(3, 56, 56)],
                                     template_version="base", allow_multiple_images=True)


# --- positions and context --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
@pytest.mark.parametrize("case", ["single", "text_only", "batch_left_pad"])
def test_count_positions_matches_recorded_position_ids(name, case):
    recorded = load_goldens(name)
    for row in range(recorded[f"{case}/input_ids"].shape[0]):
        expected = recorded[f"{case}/position_ids"][row].max().item() + 1
        assert count_positions(recorded[f"{case}/token_type_ids"][row], recorded[f"{case}/attention_mask"][row]) \
            == expected


@pytest.mark.parametrize("key", ["video_chat", "video_base", "layout_real/chat", "layout_real/base"])
def test_count_positions_on_video_layouts(key):
    recorded = load_goldens("cogvlm2-video")
    assert count_positions(recorded[f"{key}/token_type_ids"][0]) == recorded[f"{key}/position_ids"][0].max() + 1


def test_short_vision_runs_take_one_position_per_token():
    assert count_positions([0, 1, 0]) == 3
    assert count_positions([0, 1, 1, 0]) == 4
    assert count_positions([0, 1, 1, 1, 1, 1, 0]) == 5


def test_image_tokens_do_not_count_against_the_context(tiny_config):
    """31 tokens, but the 18-token image takes 3 positions: 16 in all."""
    recorded = load_goldens("cogvlm")
    tokenizer = StubTokenizer(fixed_rule({PROMPT: recorded["single/input_ids"][0, 19:].tolist()}))
    image = torch.zeros(3, 56, 56)
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm", max_position_embeddings=16),
                                       query=QUERY, images=[image])
    assert len(out["input_ids"]) == 31
    with pytest.raises(ContextLengthError, match="takes 16 positions, more than the model's context of 15"):
        build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm", max_position_embeddings=15),
                                     query=QUERY, images=[image])


def test_check_context_counts_new_tokens_and_left_padding():
    types, mask = [0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]
    assert check_context(types, attention_mask=mask, max_positions=100) == 1 + 1 + 3 + 1
    assert check_context(types, attention_mask=mask, max_positions=16, max_new_tokens=10) == 16
    with pytest.raises(ContextLengthError, match=r"takes 6 positions \+ 11 new tokens"):
        check_context(types, attention_mask=mask, max_positions=16, max_new_tokens=11)
    with pytest.raises(ConversationError, match="attention_mask has 2 entries for 8"):
        check_context(types, attention_mask=[1, 1], max_positions=100)


# --- CogVLM2-Video ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["chat", "base"])
def test_video_layout_matches_the_goldens(template, tiny_config):
    recorded = load_goldens("cogvlm2-video")
    conventions = load_cases("cogvlm2-video")["conventions"]
    tokenizer = StubTokenizer(video_stub_rule(conventions["stub_tokenizer"]["seed"]))
    frames = recorded[f"video_{template}/images"]

    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2-video"), query=conventions["query"],
                                       history=[], images=[frames], template_version=template)

    expected_calls = conventions["stub_tokenizer"]["calls_in_order"][f"video_{template}"]
    assert tokenizer.calls == [call["text"] for call in expected_calls]
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(out[key], recorded[f"video_{template}/{key}"][0]), key
    assert len(out["images"]) == 1 and out["images"][0] is frames


@pytest.mark.parametrize("template", ["chat", "base"])
def test_video_layout_with_66_tokens_per_frame(template):
    """The real model's layout (224-px frames, Llama-3 placeholder 128002), recorded from the reference."""
    recorded = load_goldens("cogvlm2-video")
    conventions = load_cases("cogvlm2-video")["conventions"]
    config = Cogvlm2VideoConfig(
        vocab_size=128256,
        vision_config={"image_size": 224, "patch_size": 14, "hidden_size": 32, "num_heads": 2,
                       "intermediate_size": 64, "num_hidden_layers": 2},
    )
    assert config.num_image_tokens == 66
    out = build_conversation_input_ids(StubTokenizer(video_stub_rule(0)), config=config,
                                       query=conventions["query"], images=[torch.zeros(4, 3, 224, 224)],
                                       template_version=template)
    assert torch.equal(out["input_ids"], recorded[f"layout_real/{template}/input_ids"][0])
    assert torch.equal(out["token_type_ids"], recorded[f"layout_real/{template}/token_type_ids"][0])


def test_video_vqa_is_one_vision_run_then_the_vqa_prompt(tiny_config):
    tokenizer = StubTokenizer(_word_ids)
    out = build_conversation_input_ids(tokenizer, config=tiny_config("cogvlm2-video"), query="How many?",
                                       images=[torch.zeros(3, 3, 56, 56)], template_version="vqa")
    assert tokenizer.calls == ["Question: How many? Short answer:"]
    assert _runs(out["token_type_ids"]) == [(0, 1), (1, 3 * 6), (0, 5)]  # 5 words in the prompt


def test_video_uint8_clip_is_transformed(tiny_config):
    recorded = load_goldens("cogvlm2-video")
    clip = recorded["frames/cfr/transform_input_uint8"]  # (C, T, H, W)
    config = tiny_config("cogvlm2-video")
    for layout in (clip, clip.permute(1, 2, 3, 0)):  # (C, T, H, W) and (T, H, W, C)
        out = build_conversation_input_ids(StubTokenizer(_word_ids), config=config, query="q", images=[layout])
        torch.testing.assert_close(out["images"][0], recorded["frames/cfr/transform_output"], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (torch.zeros(3, 56, 56), "4-D tensor"),
        (torch.zeros(4, 3, 32, 32), r"float clip frames must be \(T, 3, 56, 56\)"),
        (torch.zeros(3, 4, 8, 3, dtype=torch.uint8), "cannot tell the channel axis"),
        (torch.zeros(3, 4, 8, 8, dtype=torch.int32), "must be uint8"),
    ],
)
def test_bad_video_clips(clip, message, tiny_config):
    with pytest.raises(ConversationError, match=message):
        build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2-video"), query="q",
                                     images=[clip])


def test_one_video_per_conversation(tiny_config):
    clip = torch.zeros(2, 3, 56, 56)
    with pytest.raises(ConversationError, match="2 videos given"):
        build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2-video"), query="q",
                                     images=[clip, clip])
    with pytest.raises(ConversationError, match="not in history"):
        build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2-video"), query="q",
                                     history=[("a", "b", clip)])


def test_video_checkpoint_without_a_clip_is_text_only(tiny_config):
    out = build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2-video"), query="q r")
    assert out["token_type_ids"].tolist() == [0, 0, 0, 0, 0] and out["images"] is None


def test_preprocessing_through_a_path_equals_preprocess_image(tiny_config):
    path = parity_folder("cogvlm2", "-goldens") / "test_image.png"
    out = build_conversation_input_ids(StubTokenizer(_word_ids), config=tiny_config("cogvlm2"), query="q",
                                       images=[str(path)])
    assert torch.equal(out["images"][0], preprocess_image(load_image(path), 56))
