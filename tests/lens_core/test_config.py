"""Lens config: the VLM-Lens CogVLM example as is, our extensions, overrides, warnings and every error."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml

from coglens.lens.capture.modules import ModuleEntry
from coglens.lens.capture.select import TokenSpec
from coglens.lens.run.config import (
    DatasetSource,
    LensConfig,
    LensConfigError,
    ModelOptions,
    load_lens_config,
)

# The CogVLM example of VLM-Lens's documentation, verbatim.
VLM_LENS_COGVLM = """\
architecture: cogvlm
model_path: THUDM/cogvlm-chat-hf
model:
  - low_cpu_mem_usage: True
  - trust_remote_code: True
  - tokenizer_path: lmsys/vicuna-7b-v1.5
  - legacy: True
  - template_version: vqa
forward:
  - max_new_tokens: 2048
  - do_sample: False
output_db: output/cogvlm-chat-hf.db
input_dir: ./data/test-images/
prompt: "Describe the color in this image in one word."
modules:
  - model.vision.transformer.layers.62
  - lm_head
"""
MINIMAL = {"model_path": "ckpt", "modules": ["lm_head"], "prompt": "hi"}


def _write(tmp_path: Path, content: str | dict) -> Path:
    path = tmp_path / "lens.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def _load(tmp_path, content, **overrides):
    return load_lens_config(_write(tmp_path, content), overrides)


def test_vlm_lens_cogvlm_example(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="coglens.lens.run.config"):
        config = _load(tmp_path, VLM_LENS_COGVLM)
    assert config == LensConfig(
        architecture="cogvlm",
        model_path="THUDM/cogvlm-chat-hf",
        model=ModelOptions(
            low_cpu_mem_usage=True, tokenizer_path="lmsys/vicuna-7b-v1.5", legacy=True, template_version="vqa"
        ),
        forward={"max_new_tokens": 2048, "do_sample": False},
        output="output/cogvlm-chat-hf.db",
        input_dir=Path("data/test-images"),
        prompt="Describe the color in this image in one word.",
        modules=(ModuleEntry("model.vision.transformer.layers.62"), ModuleEntry("lm_head")),
    )
    assert (config.tokens, config.pooling, config.steps, config.capture) == (
        TokenSpec("all"),
        "none",
        "prefill",
        "output",
    )
    [record] = caplog.records  # no unknown-key warning; one note that trust_remote_code is ignored
    assert record.levelno == logging.INFO and "trust_remote_code" in record.getMessage()


def test_extensions(tmp_path):
    config = _load(
        tmp_path,
        textwrap.dedent("""\
        architecture: cogvlm2_video
        model_path: ckpt
        output: postgresql+psycopg://lens@db/lens
        output_format: vlm-lens
        dtype: bfloat16
        quantize: nf4
        quantize_vision: true
        store_dtype: float16
        batch_size: 8
        run_name: probe-1
        overwrite: true
        manifest: rows.jsonl
        capture: both
        tokens: image
        pooling_method: max
        steps: all
        device: cuda:1
        dataset: null
        modules:
          - glob:model.layers.*.mlp
          - {name: 'model\\.layers\\.\\d+', tokens: [0, -1], pooling: mean, path: "output[0]"}
          - {name: lm_head, tokens: "slice:-3:"}
        """),
    )
    assert config.output == "postgresql+psycopg://lens@db/lens"
    assert (config.output_format, config.dtype, config.store_dtype) == ("vlm-lens", "bfloat16", "float16")
    assert (config.quantize, config.quantize_vision) == ("nf4", True)
    assert (config.batch_size, config.run_name, config.overwrite) == (8, "probe-1", True)
    assert (config.manifest, config.capture, config.steps, config.device) == (
        Path("rows.jsonl"),
        "both",
        "all",
        "cuda:1",
    )
    assert (config.tokens, config.pooling, config.dataset) == (TokenSpec("image"), "max", None)
    assert config.modules == (
        ModuleEntry("glob:model.layers.*.mlp"),
        ModuleEntry(
            r"model\.layers\.\d+",
            tokens=TokenSpec("positions", positions=(0, -1)),
            pooling="mean",
            path="output[0]",
        ),
        ModuleEntry("lm_head", tokens=TokenSpec("slice", start=-3)),
    )
    assert load_lens_config(_write(tmp_path, config.to_dict()), {}) == config  # what a run records reloads


def test_dataset_maps_are_merged(tmp_path):
    config = _load(
        tmp_path,
        {
            **MINIMAL,
            "dataset": [
                {"local_dataset_path": "data/ds"},
                {"dataset_split": "val"},
                {"image_dataset_path": "data/images"},
            ],
        },
    )
    assert config.dataset == DatasetSource(
        local_dataset_path="data/ds", dataset_split="val", image_dataset_path="data/images"
    )


def test_unknown_keys_one_warning_with_closest_key(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="coglens.lens.run.config"):
        _load(tmp_path, {**MINIMAL, "moduls": ["x"], "zzzz": 1, "model": [{"tokenizer_pth": "t"}]})
    [record] = caplog.records
    message = record.getMessage()
    assert "'moduls' (did you mean 'modules'?)" in message
    assert "'zzzz'" in message
    assert "model.'tokenizer_pth' (did you mean 'tokenizer_path'?)" in message


def test_overrides_win_only_when_given(tmp_path):
    content = {
        **MINIMAL,
        "device": "cpu",
        "output_db": "a.db",
        "batch_size": 2,
        "dtype": "float16",
        "pooling_method": "mean",
    }
    given_none = {
        "model": None,
        "output": None,
        "device": None,
        "dtype": None,
        "batch_size": None,
        "debug": None,
    }
    config = _load(tmp_path, content, **given_none)
    assert (
        config.model_path,
        config.output,
        config.device,
        config.dtype,
        config.batch_size,
        config.debug,
    ) == ("ckpt", "a.db", "cpu", "float16", 2, False)
    config = _load(
        tmp_path,
        content,
        model="other",
        output="b.db",
        device="cuda",
        dtype="bfloat16",
        batch_size=4,
        debug=True,
        pooling="max",
    )
    assert (
        config.model_path,
        config.output,
        config.device,
        config.dtype,
        config.batch_size,
        config.debug,
        config.pooling,
    ) == ("other", "b.db", "cuda", "bfloat16", 4, True, "max")


def test_quantize_from_the_file_or_the_command_line(tmp_path):
    assert (_load(tmp_path, MINIMAL).quantize, _load(tmp_path, MINIMAL).quantize_vision) == (None, False)
    in_file = {**MINIMAL, "quantize": "int8"}
    assert _load(tmp_path, in_file, quantize=None, quantize_vision=None).quantize == "int8"
    config = _load(tmp_path, in_file, quantize="nf4", quantize_vision=True)  # extract --quantize nf4 --quantize-vision
    assert (config.quantize, config.quantize_vision) == ("nf4", True)


def test_an_input_source_override_replaces_the_files(tmp_path):
    config = _load(tmp_path, {**MINIMAL, "input_dir": "imgs"}, manifest="rows.csv")
    assert (config.manifest, config.input_dir) == (Path("rows.csv"), None)


def test_config_from_overrides_only():
    config = load_lens_config(None, {"model": "ckpt", "modules": ["lm_head"], "prompt": "hi"})
    assert (config.model_path, config.modules, config.output) == (
        "ckpt",
        (ModuleEntry("lm_head"),),
        "embeddings.db",
    )


def test_log_named_modules_needs_no_modules_or_inputs(tmp_path):
    config = _load(tmp_path, {"model_path": "ckpt", "log_named_modules": True})
    assert config.log_named_modules and config.modules == ()


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"architecture": "llava"},
            "architecture: 'llava' (from .*lens.yaml) is not valid; expected one of: "
            "cogvlm | cogvlm2 | cogvlm2_video",
        ),
        ({"pooling": "median"}, "pooling: 'median' .* expected one of: none | mean | max | last"),
        ({"pooling_method": "sum"}, "pooling_method: 'sum' .* expected one of: none | mean | max | last"),
        (
            {"pooling": "mean", "pooling_method": "max"},
            "pooling: 'mean' and pooling_method: 'max' set the same",
        ),
        ({"tokens": "first"}, "tokens: 'first' .* expected all | last | image"),
        ({"capture": "outputs"}, "capture: 'outputs' .* one of: output | input | both"),
        ({"steps": "decode"}, "steps: 'decode' .* one of: prefill | all"),
        ({"dtype": "fp16"}, "dtype: 'fp16' .* one of: auto | float32 | float16 | bfloat16"),
        ({"store_dtype": "int8"}, "store_dtype: 'int8' .* one of: model | float32 | float16 | bfloat16"),
        ({"quantize": "int16"}, r"quantize: 'int16' .* one of: int8 \| int4 \| nf4 \| fp4"),
        ({"quantize": "int8", "quantize_vision": "yes"}, "quantize_vision: 'yes' .* true or false"),
        ({"quantize_vision": True}, r"quantize_vision: True .* only together with quantize: int8 \| int4"),
        ({"output_format": "csv"}, "output_format: 'csv' .* one of: coglens | vlm-lens"),
        ({"batch_size": 0}, "batch_size: 0 .* a positive integer"),
        ({"batch_size": "4"}, "batch_size: '4' .* a positive integer"),
        ({"device": "gpu"}, "device: 'gpu' .* cpu | cuda | cuda:N | mps | auto"),
        ({"debug": "yes"}, "debug: 'yes' .* true or false"),
        ({"output": "a.db", "output_db": "b.db"}, "output: 'a.db' and output_db: 'b.db' set the same"),
        ({"model": [{"template_version": "qa"}]}, "model.template_version: 'qa' .* base | chat | vqa"),
        ({"model": [{"legacy": "no"}]}, "model.legacy: 'no' .* true or false"),
        ({"model": "fast"}, "model: 'fast' .* a list of one-key maps"),
        ({"forward": [{"max_new_tokens": 0}]}, "forward.max_new_tokens: 0 .* a positive integer"),
        (
            {"modules": ["model.layers.("]},
            r"modules\[0\].name: 'model.layers.\(' .* not a valid regular expression",
        ),
        (
            {"modules": [{"name": "x", "pool": "mean"}]},
            r"modules\[0\]: .* only the keys name, tokens, pooling, path "
            r"\(unknown: \['pool'\]\)",
        ),
        (
            {"modules": [{"tokens": "last"}]},
            r"modules\[0\]: .* a pattern string or a map with a `name` pattern",
        ),
        (
            {"modules": [{"name": "x", "tokens": "frame"}]},
            r"modules\[0\].tokens: 'frame' .* expected all \| last",
        ),
        ({"modules": [{"name": "x", "pooling": "avg"}]}, r"modules\[0\].pooling: 'avg' .* none \| mean"),
        ({"modules": [{"name": "x", "path": "out[0]"}]}, r"modules\[0\].path: 'out\[0\]' .* is malformed"),
        ({"modules": []}, "modules is missing .*`coglens modules`"),
        ({"model_path": None}, "model_path is missing .* --model"),
        (
            {"input_dir": "imgs", "dataset": [{"dataset_path": "d"}]},
            "input_dir and dataset are mutually exclusive",
        ),
        ({"input_dir": "imgs", "manifest": "m.jsonl"}, "input_dir and manifest are mutually exclusive"),
        ({"input_dir": "imgs", "prompt": None}, "input_dir needs a prompt"),
        ({"prompt": None}, "no input: give input_dir"),
        ({"manifest": "rows.parquet"}, r"manifest: 'rows.parquet' .* a file ending in .jsonl or .csv"),
        (
            {"dataset": [{"dataset_split": "val"}]},
            "dataset: .* exactly one of dataset_path .* or local_dataset_path",
        ),
        (
            {"dataset": [{"dataset_path": "a"}, {"dataset_path": "b"}]},
            r"each key once .* repeated: \['dataset_path'\]",
        ),
    ],
)
def test_validation_errors_name_key_value_and_choices(tmp_path, changes, message):
    with pytest.raises(LensConfigError, match=message):
        _load(tmp_path, {**MINIMAL, **changes})


def test_errors_name_the_command_line_as_source(tmp_path):
    with pytest.raises(LensConfigError, match="device: 'tpu' .from the command line. is not valid"):
        _load(tmp_path, MINIMAL, device="tpu")
    with pytest.raises(LensConfigError, match="unknown override 'devices'; overridable keys: architecture"):
        _load(tmp_path, MINIMAL, devices="cpu")


def test_unreadable_files(tmp_path):
    with pytest.raises(LensConfigError, match="cannot read lens config"):
        load_lens_config(tmp_path / "missing.yaml", {})
    with pytest.raises(LensConfigError, match="is not valid YAML"):
        _load(tmp_path, "modules: [unclosed")
    with pytest.raises(LensConfigError, match="must hold a mapping of config keys, not a list"):
        _load(tmp_path, "- a\n- b\n")
