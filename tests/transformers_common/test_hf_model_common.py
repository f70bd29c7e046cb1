"""transformers' ``ModelTesterMixin``, from the installed release's own test suite, run on tiny CogVLM models.

One test class per variant: CogVLM (MHA, vision experts), CogVLM2 (GQA through ``num_multi_query_heads``, 2x2 conv)
and CogVLM2-Video (no vision experts). Every row carries one image (``pixel_values``, one image per row, the form
transformers' batched tests can slice). A test that does not apply to CogVLM is overridden below with a skip and
its one-line reason; everything else runs as transformers wrote it.
"""

from __future__ import annotations

import re
import unittest
from unittest import mock

import hf_common_suite
from cogvlm_tester import VARIANTS, CogvlmModelTester

from coglens.modeling import CogvlmModel

common = hf_common_suite.load("test_modeling_common")
ModelTesterMixin = common.ModelTesterMixin


# Tests of ModelTesterMixin that do not apply to CogVLM, with the reason. A name also covers its parameterized
# expansions (``test_x_0``, ``test_x_1_fp16``...). Tests that skip themselves for a reason transformers states
# (no accelerator, no flash-attn, no deepspeed...) are not listed.
SKIPPED = {
    "test_generation_tester_mixin_inheritance":
        "the sdist has no GenerationTesterMixin; test_hf_generation_checks.py covers generation instead",
    "test_bc_cache_name_forward":
        "past_key_values and cache are both accepted without a deprecation warning (5.23 only knows past_key_values)",
    "test_multimodal_outputs_are_returned":
        "outputs carry image_hidden_states (LM-space image features), not a vision-tower `image_outputs`",
}


def skip_listed(cls: type) -> type:
    """Replace every test named in SKIPPED (and its parameterized expansions) by a skip with the listed reason."""
    for name in dir(cls):
        for listed, reason in SKIPPED.items():
            if re.fullmatch(rf"{listed}(_\d+.*)?", name) and callable(getattr(cls, name)):
                setattr(cls, name, unittest.skip(reason)(lambda self: None))
    return cls


class _CogvlmCommonTests(ModelTesterMixin):
    """What the three variants share: the tester, and our classes' place in transformers' auto mappings."""

    variant = "cogvlm"
    all_model_classes: tuple = ()
    # transformers runs this one only for models whose source says "Copyright 2023" or later; we want it
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        self.model_tester = CogvlmModelTester(self, self.variant)
        config_class, lm_class = VARIANTS[self.variant]
        # transformers' tests read its auto mappings to tell a base model (no loss, no training test) from a causal
        # LM (gets labels); ours are registered at run time only, so list them where a transformers model would be
        model_type = config_class.model_type
        self._patch("MODEL_MAPPING_NAMES", {**common.MODEL_MAPPING_NAMES, model_type: CogvlmModel.__name__})
        self._patch("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
                    {**common.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, model_type: lm_class.__name__})
        self._patch("MODEL_MAPPING", {config_class: CogvlmModel})

    def _patch(self, name: str, value: object) -> None:
        patcher = mock.patch.object(common, name, value)
        patcher.start()
        self.addCleanup(patcher.stop)


@skip_listed
class CogvlmModelTest(_CogvlmCommonTests, unittest.TestCase):
    variant = "cogvlm"
    all_model_classes = (CogvlmModel, VARIANTS["cogvlm"][1])


@skip_listed
class Cogvlm2ModelTest(_CogvlmCommonTests, unittest.TestCase):
    variant = "cogvlm2"
    all_model_classes = (CogvlmModel, VARIANTS["cogvlm2"][1])


@skip_listed
class Cogvlm2VideoModelTest(_CogvlmCommonTests, unittest.TestCase):
    variant = "cogvlm2_video"
    all_model_classes = (CogvlmModel, VARIANTS["cogvlm2_video"][1])
