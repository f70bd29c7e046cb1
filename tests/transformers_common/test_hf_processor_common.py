"""transformers' ``ProcessorTesterMixin``, from the installed release's own test suite, run on ``CogvlmProcessor``.

The processor under test is the tiny checkpoint's (``coglens.tiny``: its byte-level BPE tokenizer and a
``CogvlmImageProcessor``), saved into a temporary folder once per class, one class per tokenizer family: CogVLM2
(Llama-3 layout) and CogVLM-1 (Vicuna layout). CogVLM2-Video is left out: its "images" are clips that
``build_conversation_input_ids`` samples itself, which no test of the mixin passes.

CogVLM's prompts carry no image token in the text: the processor adds each image's placeholder span itself. So the
processor has no ``image_token`` attribute, the mixin's ``_setup_test_attributes`` finds none, and its
``prepare_text_inputs`` writes plain text (``"lower newer "``); the tests that count image tokens in the text skip
or check nothing by the mixin's own rules. The settings under test use the ``base`` prompt template (the query as
is), so a text-only call must tokenize exactly as the tokenizer does (``test_subprocessor_defaults``).

A test that does not apply to CogVLM is overridden below with a skip and its one-line reason; everything else runs
as transformers wrote it.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest

import hf_common_suite
import pytest

from coglens.processing import CogvlmProcessor
from coglens.tiny import tiny_model_path

pytest.importorskip("parameterized", reason="transformers' processor tests need the `parameterized` package")


def _fetch_hub_objects_standin() -> None:
    """test_processing_common.py imports ``url_to_local_path`` from the repository's ``utils/``, which the sdist
    lacks. Stand-in (ours, not transformers' code): the URL itself, what the real one returns for a file not
    downloaded beforehand. Only the chat-template tests read those URLs, and they skip here (no chat template)."""
    if "fetch_hub_objects_for_ci" in sys.modules or importlib.util.find_spec("fetch_hub_objects_for_ci"):
        return
    module = types.ModuleType("fetch_hub_objects_for_ci")
    module.__doc__ = "STAND-IN written by coglens (tests/transformers_common/test_hf_processor_common.py)."
    module.url_to_local_path = lambda url, return_url_if_not_found=True: url
    sys.modules[module.__name__] = module


_fetch_hub_objects_standin()
common = hf_common_suite.load("test_processing_common")
ProcessorTesterMixin = common.ProcessorTesterMixin

SETTINGS = ("variant", "template_version", "image_size", "num_image_tokens", "image_token_id",
            "max_position_embeddings", "bos_token_id")
NO_KWARGS_MERGING = (
    "CogvlmProcessor has no per-modality kwargs to merge: the image pipeline is fixed (no do_rescale / "
    "rescale_factor) and rows are always left-padded to the longest (no max_length / padding='max_length')"
)


class CogvlmProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = CogvlmProcessor
    variant = "cogvlm2"
    settings: dict = {}

    @classmethod
    def setUpClass(cls):
        # the mixin builds the processor with processor_class.from_pretrained(model_id, **prepare_processor_dict())
        cls.model_id = str(tiny_model_path(cls.variant))
        checkpoint = CogvlmProcessor.from_pretrained(cls.model_id)
        cls.settings = {key: getattr(checkpoint, key) for key in SETTINGS} | {"template_version": "base"}
        super().setUpClass()

    @classmethod
    def prepare_processor_dict(cls):
        """The prompt-layout settings (they are processor settings, saved in processor_config.json)."""
        return dict(cls.settings)

    # --- CogVLM's analogue of the token-count checks the mixin runs only for processors with an image token -----

    def test_one_image_per_text(self):
        processor = self.get_processor()
        text = self.prepare_text_inputs(batch_size=3, modalities="image")
        images = self.prepare_images_inputs(batch_size=3)
        inputs = processor(text=text, images=images, return_tensors="pt")
        self.assertEqual(tuple(inputs["pixel_values"].shape), (3, 3, self.settings["image_size"],
                                                                 self.settings["image_size"]))
        self.assertEqual(inputs["token_type_ids"].sum(dim=1).tolist(), [self.settings["num_image_tokens"]] * 3)
        with self.assertRaises(ValueError):
            processor(text=text, images=self.prepare_images_inputs(batch_size=4), return_tensors="pt")

    # --- not applicable to CogVLM ---------------------------------------------------------------------------------

    @unittest.skip("CogvlmImageProcessor's pipeline is fixed (no do_normalize); extra tokenizer kwargs are refused")
    def test_save_load_pretrained_additional_features(self):
        pass

    @unittest.skip("kwargs dicts (text_kwargs=, images_kwargs=, common_kwargs=) are not accepted by CogvlmProcessor")
    def test_flat_kwarg_applied_when_modality_dict_lacks_it(self):
        pass

    @unittest.skip("`config` is a read-only property (the model config or the layout), not a default for `config=`")
    def test_init_arguments_not_in_class_attributes(self):
        pass

    @unittest.skip("template_version is the saved default and, by design (THUDM's API), a per-call override")
    def test_call_arguments_not_in_attributes(self):
        pass

    # Five tests parameterized over modalities run through these helpers: the video and audio cases skip for the
    # mixin's own reason (no such sub-processor), the image case for ours.
    def _skip_kwargs_merging(self, modality):
        self.maybe_skip_typed_test_for_modality(modality, self.processor_class.get_attributes())
        self.skipTest(NO_KWARGS_MERGING)

    def _test_modality_processor_defaults_preserved_by_modality_kwargs(self, modality):
        self._skip_kwargs_merging(modality)

    def _test_kwargs_overrides_default_modality_processor_kwargs(self, modality):
        self._skip_kwargs_merging(modality)

    def _test_unstructured_kwargs(self, modality):
        self._skip_kwargs_merging(modality)

    def _test_unstructured_kwargs_batched(self, modality):
        self._skip_kwargs_merging(modality)

    def _test_structured_kwargs_nested_from_dict(self, modality):
        self._skip_kwargs_merging(modality)


class Cogvlm1ProcessorTest(CogvlmProcessorTest):
    variant = "cogvlm"
