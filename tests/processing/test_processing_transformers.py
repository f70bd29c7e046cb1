"""CogvlmProcessor and CogvlmImageProcessor as transformers knows them: save/load, Auto classes, calls, hub ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_cache import hf_cache_layout
from PIL import Image
from processing_stubs import StubTokenizer, write_word_tokenizer
from testkit import copy_checkpoint, edit_config, load_goldens, parity_folder
from transformers import AutoImageProcessor, AutoProcessor, BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor

from coglens.hub import HubError
from coglens.modeling.configuration_cogvlm import Cogvlm2Config, load_config
from coglens.processing.errors import (
    ConversationError,
    ImageInputError,
    ProcessingError,
    TokenizerNotFoundError,
)
from coglens.processing.image import CLIP_MEAN, CLIP_STD, load_image, preprocess_image
from coglens.processing.image_processor import CogvlmImageProcessor
from coglens.processing.processor import CogvlmProcessor, ProcessorLayout
from coglens.processing.tokenizer import load_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # hf_cache_layout's snapshot
REPO = "coglens-tests/cogvlm2-tiny"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SETTINGS = ("variant", "template_version", "image_size", "num_image_tokens", "image_token_id",
            "max_position_embeddings", "bos_token_id")


def _test_image(name: str) -> Image.Image:
    return load_image(parity_folder(name, "-goldens") / "test_image.png")


def _stub() -> StubTokenizer:
    return StubTokenizer(lambda text: [5 + len(word) for word in text.split()])


def _same_batch(first: BatchFeature, second: BatchFeature) -> None:
    assert sorted(first) == sorted(second)
    for key, value in first.items():
        if key == "images":
            assert [len(row) for row in value] == [len(row) for row in second[key]]
            for row, other in zip(value, second[key], strict=True):
                assert all(torch.equal(a, b) for a, b in zip(row, other, strict=True))
        else:
            assert torch.equal(value, second[key]), key


def _thudm_folder(folder: Path) -> Path:
    """A CogVLM2 checkpoint as THUDM ships it (config.json without model_type, with auto_map; no processor files).

    The config and weights are the parity fixture's; the tokenizer is coglens.tiny's CogVLM2 one, so the
    config's vocab_size is raised to the tokenizer's size (1024; the fixture has 1000).
    """
    from coglens.tiny import tiny_model_path

    copy_checkpoint(parity_folder("cogvlm2"), folder)
    tiny = tiny_model_path("cogvlm2")
    for name in TOKENIZER_FILES:
        shutil.copy(tiny / name, folder / name)

    def as_thudm_ships_it(config: dict) -> None:
        assert "model_type" not in config and "auto_map" in config
        config["vocab_size"] = json.loads((tiny / "config.json").read_text())["vocab_size"]

    return edit_config(folder, as_thudm_ships_it)


@pytest.fixture
def thudm_folder(tmp_path: Path) -> Path:
    return _thudm_folder(tmp_path / "thudm-cogvlm2")


# --- CogvlmImageProcessor -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_image_processor_gives_the_recorded_pixel_values_bit_for_bit(name, tiny_config):
    recorded = load_goldens(name)
    processor = CogvlmImageProcessor.from_config(tiny_config(name))
    assert processor.image_size == 56
    uint8 = recorded["preprocess/image_uint8"]  # the decoded test image, (H, W, 3)
    sources = [
        _test_image(name), parity_folder(name, "-goldens") / "test_image.png", uint8.numpy(), uint8,
        uint8.permute(2, 0, 1),  # channels first
    ]
    out = processor(sources, return_tensors="pt")
    assert isinstance(out, BatchFeature) and list(out) == ["pixel_values"]
    assert out["pixel_values"].shape == (len(sources), 3, 56, 56) and out["pixel_values"].dtype == torch.float32
    for pixels in out["pixel_values"]:
        assert torch.equal(pixels, recorded["preprocess/pixel_values"])
    single = processor.preprocess(_test_image(name))["pixel_values"]
    assert single.shape == (1, 3, 56, 56) and torch.equal(single[0], recorded["preprocess/pixel_values"])
    as_numpy = processor(_test_image(name), return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy[0], recorded["preprocess/pixel_values"].numpy())


def test_image_processor_defaults_and_save_load(tmp_path):
    default = CogvlmImageProcessor()
    assert isinstance(default, BaseImageProcessor)
    assert (default.image_size, default.image_mean, default.image_std) == (490, CLIP_MEAN, CLIP_STD)
    assert default.resample == Image.Resampling.BICUBIC and default.model_input_names == ["pixel_values"]

    processor = CogvlmImageProcessor(image_size=28, image_mean=(0.5, 0.5, 0.5))
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CogvlmImageProcessor"
    assert (saved["image_size"], saved["image_mean"], saved["resample"]) == (28, [0.5, 0.5, 0.5], 3)

    image = _test_image("cogvlm2")
    expected = preprocess_image(image, 28, mean=(0.5, 0.5, 0.5))
    for loaded in (CogvlmImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is CogvlmImageProcessor
        assert loaded.to_dict() == processor.to_dict()
        assert torch.equal(loaded(image)["pixel_values"][0], expected)


def test_image_processor_refuses_what_it_cannot_do_exactly():
    with pytest.raises(ProcessingError, match="does not take do_resize"):
        CogvlmImageProcessor(do_resize=False)
    processor = CogvlmImageProcessor(image_size=8)
    with pytest.raises(ImageInputError, match="uint8 pixels, got float32"):
        processor(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ProcessingError, match="unsupported arguments"):
        processor(_test_image("cogvlm2"), do_normalize=False)
    with pytest.raises(ProcessingError, match="return_tensors='tf'"):
        processor(_test_image("cogvlm2"), return_tensors="tf")
    with pytest.raises(ImageInputError, match="no images"):
        processor([])


# --- CogvlmProcessor: construction -------------------------------------------------------------------------


def test_processor_is_a_processor_mixin_built_from_tokenizer_and_config(tiny_config):
    config = tiny_config("cogvlm2")
    tokenizer = _stub()
    legacy = CogvlmProcessor(tokenizer, config)
    assert isinstance(legacy, ProcessorMixin)
    assert CogvlmProcessor.get_attributes() == ["image_processor", "tokenizer"]
    assert legacy.tokenizer is tokenizer and isinstance(legacy.image_processor, CogvlmImageProcessor)
    assert legacy.image_processor.image_size == 56
    assert legacy.config is config
    assert [getattr(legacy, key) for key in SETTINGS] == ["cogvlm2", "chat", 56, 6, 0, 512, 1]

    from_config = CogvlmProcessor.from_config(tokenizer, config)
    parts = CogvlmProcessor(CogvlmImageProcessor(image_size=56), tokenizer, variant="cogvlm2", num_image_tokens=6,
                            image_token_id=0, max_position_embeddings=512, bos_token_id=1)
    assert isinstance(parts.config, ProcessorLayout) and parts.config.vision_config.image_size == 56
    for other in (from_config, parts):
        assert [getattr(other, key) for key in SETTINGS] == [getattr(legacy, key) for key in SETTINGS]
        _same_batch(other(["a b", "c"], images=[_test_image("cogvlm2"), None]),
                    legacy(["a b", "c"], images=[_test_image("cogvlm2"), None]))


def test_processor_parts_must_agree(tiny_config):
    with pytest.raises(ProcessingError, match="image processor resizes to 28 but the processor's image_size is 56"):
        CogvlmProcessor(CogvlmImageProcessor(image_size=28), _stub(), tiny_config("cogvlm2"))
    with pytest.raises(ProcessingError, match="unknown variant"):
        CogvlmProcessor(tokenizer=_stub(), variant="llava")


def test_processor_preprocesses_with_its_image_processor(tiny_config):
    image = _test_image("cogvlm2")
    processor = CogvlmProcessor(CogvlmImageProcessor(image_size=56, image_std=(0.5, 0.5, 0.5)), _stub(),
                                tiny_config("cogvlm2"))
    expected = preprocess_image(image, 56, std=(0.5, 0.5, 0.5))
    assert torch.equal(processor("a", images=image)["images"][0][0], expected)
    assert torch.equal(processor(text="a", images=image)["pixel_values"][0], expected)


# --- CogvlmProcessor: calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_hf_style_call_gives_the_recorded_pixel_values(name, tiny_config):
    recorded = load_goldens(name)["preprocess/pixel_values"]
    processor = CogvlmProcessor(_stub(), tiny_config(name))
    image = _test_image(name)

    batch = processor(text=["what is this", "and this"], images=[image, image])

    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "pixel_values"}
    assert set(batch) == set(processor.model_input_names)
    assert batch["pixel_values"].shape == (2, 3, 56, 56)
    assert all(torch.equal(pixels, recorded) for pixels in batch["pixel_values"])
    legacy = processor(["what is this", "and this"], images=[image, image])
    assert torch.equal(legacy["images"][0][0], recorded) and torch.equal(legacy["images"][1][0], recorded)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[key], legacy[key]), key


def test_hf_style_batch_feeds_the_model_like_the_legacy_batch(tiny_config):
    from coglens.modeling import CogvlmForCausalLM

    model = CogvlmForCausalLM.from_pretrained(parity_folder("cogvlm2"))
    processor = CogvlmProcessor(_stub(), tiny_config("cogvlm2"))
    image = _test_image("cogvlm2")
    queries = ["a longer question about it", "short"]
    with torch.no_grad():
        hf_style = model(**processor(text=queries, images=[image, image])).logits
        legacy = model(**processor(queries, images=[image, image])).logits
    assert torch.equal(hf_style, legacy)


def test_hf_style_call_forms(tiny_config):
    processor = CogvlmProcessor(_stub(), tiny_config("cogvlm2"))
    image = _test_image("cogvlm2")
    one = processor(text="what is this", images=image)
    assert one["pixel_values"].shape == (1, 3, 56, 56) and "images" not in one
    for other in (
        processor(images=image, text="what is this"),
        processor(image, "what is this"),  # ProcessorMixin's positional order: images, text
        processor(image, text="what is this"),
        processor(text="what is this", images=[image]),
        processor(text=["what is this"], images=[[image]]),
    ):
        _same_batch(other, one)
    assert torch.equal(one["input_ids"], processor("what is this", images=image)["input_ids"])

    text_only = processor(text=["a", "b c"])
    assert set(text_only) == {"input_ids", "token_type_ids", "attention_mask"}
    mixed = processor(text=["a", "b c"], images=[image, None])
    assert "pixel_values" not in mixed and [len(row) for row in mixed["images"]] == [1, 0]
    alone = processor(images=[image, image])
    assert list(alone) == ["pixel_values"] and alone["pixel_values"].shape == (2, 3, 56, 56)
    assert processor(text="a", images=image, padding=True, return_tensors=None)["input_ids"].shape[0] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"queries": "a", "text": "b"}, ProcessingError, "either as queries .* or as text="),
        ({"text": ["a", "b"], "images": [None]}, ConversationError, "one image \\(or None\\) per text, got 1 entries"),
        ({"text": "a", "images": ["x", "y"]}, ConversationError, "2 images for one text"),
        ({"text": "a", "padding": "max_length"}, ProcessingError, "padding='max_length' is not supported"),
        ({"text": "a", "truncation": True}, ProcessingError, "unsupported arguments \\['truncation'\\]"),
        ({}, ConversationError, "nothing to encode"),
    ],
)
def test_hf_style_call_errors(kwargs, error, message, tiny_config):
    with pytest.raises(error, match=message):
        CogvlmProcessor(_stub(), tiny_config("cogvlm2"))(**kwargs)


def test_hf_style_call_on_video_keeps_the_clip_in_images():
    from coglens.tiny import tiny_model_path

    processor = CogvlmProcessor.from_pretrained(tiny_model_path("cogvlm2-video"))
    clip = torch.zeros(3, 3, 56, 56)
    batch = processor(text=["Describe the video.", "Hello"], images=[clip, None])
    assert "pixel_values" not in batch and batch["images"][0][0] is clip and batch["images"][1] == []
    _same_batch(batch, processor(["Describe the video.", "Hello"], images=[clip, None]))


# --- save / load ----------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(thudm_folder, tmp_path):
    processor = CogvlmProcessor.from_pretrained(thudm_folder)
    assert isinstance(processor.config, Cogvlm2Config)
    saved = tmp_path / "saved"
    processor.save_pretrained(saved)

    assert not (saved / "config.json").exists()
    written = json.loads((saved / "processor_config.json").read_text())
    assert written["processor_class"] == "CogvlmProcessor"
    assert {key: written[key] for key in SETTINGS} == {key: getattr(processor, key) for key in SETTINGS}
    assert written["image_processor"]["image_processor_type"] == "CogvlmImageProcessor"

    loaded = CogvlmProcessor.from_pretrained(saved)
    assert isinstance(loaded.config, ProcessorLayout)  # no model config.json needed
    assert [getattr(loaded, key) for key in SETTINGS] == [getattr(processor, key) for key in SETTINGS]
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    image = _test_image("cogvlm2")
    calls = [
        lambda p: p(["what is in the image?", "hello there"], images=[image, None],
                    history=[[("first", "answer")], None]),
        lambda p: p(text=["what is in the image?", "hi"], images=[image, image]),
        lambda p: p("a question", template_version="vqa"),
    ]
    for call in calls:
        _same_batch(call(loaded), call(processor))
    assert loaded.decode(processor("hello there")["input_ids"][0]) == processor.decode(
        processor("hello there")["input_ids"][0])

    again = tmp_path / "again"
    loaded.save_pretrained(again)
    assert json.loads((again / "processor_config.json").read_text()) == written


def test_round_trip_keeps_overridden_settings(thudm_folder, tmp_path):
    processor = CogvlmProcessor.from_pretrained(thudm_folder, template_version="vqa")
    processor.save_pretrained(tmp_path / "saved")
    loaded = CogvlmProcessor.from_pretrained(tmp_path / "saved")
    assert loaded.template_version == "vqa"
    assert "Short answer:" in loaded.decode(loaded("what?")["input_ids"][0])
    with pytest.raises(ProcessingError, match="unexpected arguments \\['templat_version'\\]"):
        CogvlmProcessor.from_pretrained(tmp_path / "saved", templat_version="vqa")


def test_processor_saved_into_the_checkpoint_keeps_the_model_config(thudm_folder):
    CogvlmProcessor.from_pretrained(thudm_folder).save_pretrained(thudm_folder)
    loaded = CogvlmProcessor.from_pretrained(thudm_folder)
    assert isinstance(loaded.config, Cogvlm2Config) and loaded.image_size == 56
    auto = AutoProcessor.from_pretrained(thudm_folder)
    assert type(auto) is CogvlmProcessor and isinstance(auto.config, Cogvlm2Config)


def test_auto_classes_after_import_coglens(thudm_folder, tmp_path):
    saved = tmp_path / "saved"
    processor = CogvlmProcessor.from_pretrained(thudm_folder)
    processor.save_pretrained(saved)

    auto = AutoProcessor.from_pretrained(saved)
    assert type(auto) is CogvlmProcessor
    assert type(AutoImageProcessor.from_pretrained(saved)) is CogvlmImageProcessor
    _same_batch(auto(text="hi", images=_test_image("cogvlm2")), processor(text="hi", images=_test_image("cogvlm2")))
    # A THUDM folder names no processor and its config.json has no model_type: AutoProcessor needs the config.
    with_config = AutoProcessor.from_pretrained(thudm_folder, config=load_config(thudm_folder))
    assert type(with_config) is CogvlmProcessor


# --- hub ids, offline ---------------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(thudm_folder, tmp_path) -> Path:
    cache = tmp_path / "hf-cache"
    hf_cache_layout(cache, REPO, thudm_folder)
    return cache


def test_hub_id_from_the_cache_with_local_files_only(hub_cache, thudm_folder, monkeypatch):
    local = CogvlmProcessor.from_pretrained(thudm_folder)
    image = _test_image("cogvlm2")
    for kwargs in ({}, {"revision": "main"}, {"revision": COMMIT}):
        processor = CogvlmProcessor.from_pretrained(REPO, cache_dir=hub_cache, local_files_only=True, **kwargs)
        assert processor.variant == "cogvlm2" and isinstance(processor.config, Cogvlm2Config)
        _same_batch(processor(text="what?", images=image), local(text="what?", images=image))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert CogvlmProcessor.from_pretrained(REPO, cache_dir=hub_cache).image_size == 56


def test_hub_id_with_hf_hub_offline_and_hf_hub_cache(hub_cache, monkeypatch):
    """No keywords: HF_HUB_OFFLINE=1 and HF_HUB_CACHE (read by huggingface_hub when imported, hence the constant)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    processor = CogvlmProcessor.from_pretrained(REPO)
    assert (processor.variant, processor.image_size) == ("cogvlm2", 56)
    with pytest.raises(HubError, match="'coglens-tests/no-such-model'"):
        CogvlmProcessor.from_pretrained("coglens-tests/no-such-model")


def test_fresh_interpreter_import_coglens_then_auto_classes_and_hub_env(hub_cache, thudm_folder, tmp_path):
    """Registration happens on import (lazily, whatever the import order); the hub env vars work as set."""
    saved = tmp_path / "saved"
    CogvlmProcessor.from_pretrained(thudm_folder).save_pretrained(saved)
    script = (
        "import sys, coglens\n"
        "from transformers import AutoImageProcessor, AutoProcessor\n"
        "print(type(AutoProcessor.from_pretrained(sys.argv[1])).__name__)\n"
        "print(type(AutoImageProcessor.from_pretrained(sys.argv[1])).__name__)\n"
        "from coglens.processing import CogvlmProcessor\n"
        "processor = CogvlmProcessor.from_pretrained(sys.argv[2])\n"
        "print(processor.variant, processor.tokenizer.encode('hi there', add_special_tokens=False))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    out = subprocess.run([sys.executable, "-c", script, str(saved), REPO], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    expected = CogvlmProcessor.from_pretrained(thudm_folder).tokenizer.encode("hi there", add_special_tokens=False)
    assert out.stdout.splitlines() == ["CogvlmProcessor", "CogvlmImageProcessor", f"cogvlm2 {expected}"]


def test_saved_processor_from_the_hub_cache_through_auto_processor(hub_cache, thudm_folder, tmp_path):
    saved = tmp_path / "saved"
    CogvlmProcessor.from_pretrained(thudm_folder).save_pretrained(saved)
    hf_cache_layout(hub_cache, "coglens-tests/processor", saved)
    for loader in (CogvlmProcessor, AutoProcessor):
        processor = loader.from_pretrained("coglens-tests/processor", cache_dir=hub_cache, local_files_only=True)
        assert type(processor) is CogvlmProcessor and isinstance(processor.config, ProcessorLayout)


def test_missing_repo_or_revision_names_the_repo(hub_cache, monkeypatch):
    with pytest.raises(HubError, match="'coglens-tests/no-such-model' is not a local folder") as missing:
        CogvlmProcessor.from_pretrained("coglens-tests/no-such-model", cache_dir=hub_cache, local_files_only=True)
    assert "hf download coglens-tests/no-such-model" in str(missing.value)
    with pytest.raises(HubError, match=f"'{REPO}'.* revision 'v2'"):
        CogvlmProcessor.from_pretrained(REPO, cache_dir=hub_cache, local_files_only=True, revision="v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="'coglens-tests/no-such-model'"):
        CogvlmProcessor.from_pretrained("coglens-tests/no-such-model", cache_dir=hub_cache)


def test_tokenizer_path_as_a_hub_id(tmp_path, tiny_config):
    cache = tmp_path / "hf-cache"
    words = write_word_tokenizer(tmp_path / "vicuna", ["Question:", "Answer:", "hi"])
    hf_cache_layout(cache, "coglens-tests/vicuna", words)
    tokenizer = load_tokenizer(parity_folder("cogvlm"), "coglens-tests/vicuna", config=tiny_config("cogvlm"),
                               cache_dir=cache, local_files_only=True)
    assert tokenizer.encode("hi", add_special_tokens=False) == [5]
    processor = CogvlmProcessor.from_pretrained(parity_folder("cogvlm"), tokenizer_path="coglens-tests/vicuna",
                                                cache_dir=cache, local_files_only=True)
    assert processor.variant == "cogvlm" and processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(TokenizerNotFoundError, match="'coglens-tests/other'"):
        CogvlmProcessor.from_pretrained(parity_folder("cogvlm"), tokenizer_path="coglens-tests/other",
                                        cache_dir=cache, local_files_only=True)
