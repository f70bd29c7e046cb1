"""The model-card code of THUDM/cogvlm-chat-hf (seed 001) runs unchanged apart from the loading lines.

Changes from the card: the tokenizer and checkpoint are the built-in tiny ones (no hub), the image is local,
and 'cuda' is 'cpu'. No trust_remote_code is needed: `import coglens` registers the Auto classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

import coglens  # noqa: F401
from coglens.tiny import tiny_model_path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/two_shapes.jpg"


def test_model_card_chat_and_vqa_examples():
    path = tiny_model_path("cogvlm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        torch_dtype=torch.bfloat16,
        low_cpu_mem_usage=True,
        trust_remote_code=True,
    ).to('cpu').eval()

    # chat example
    query = 'Describe this image'
    image = Image.open(EXAMPLE).convert('RGB')
    inputs = model.build_conversation_input_ids(tokenizer, query=query, history=[], images=[image])  # chat mode
    inputs = {
        'input_ids': inputs['input_ids'].unsqueeze(0).to('cpu'),
        'token_type_ids': inputs['token_type_ids'].unsqueeze(0).to('cpu'),
        'attention_mask': inputs['attention_mask'].unsqueeze(0).to('cpu'),
        'images': [[inputs['images'][0].to('cpu').to(torch.bfloat16)]],
    }
    gen_kwargs = {"max_length": 2048, "do_sample": False}

    with torch.no_grad():
        outputs = model.generate(**inputs, **gen_kwargs)
        outputs = outputs[:, inputs['input_ids'].shape[1]:]
        answer = tokenizer.decode(outputs[0])
    assert outputs.shape[1] >= 1 and isinstance(answer, str)
    assert inputs['input_ids'].shape[1] == 1 + model.config.num_image_tokens + len(
        tokenizer.encode('Question: Describe this image Answer:', add_special_tokens=False))

    # vqa example
    query = 'How many houses are there in this cartoon?'
    inputs = model.build_conversation_input_ids(tokenizer, query=query, history=[], images=[image],
                                                template_version='vqa')   # vqa mode
    assert tokenizer.decode(inputs['input_ids'][1 + model.config.num_image_tokens:]) == \
        'Question: How many houses are there in this cartoon? Short answer:'
    inputs = {
        'input_ids': inputs['input_ids'].unsqueeze(0).to('cpu'),
        'token_type_ids': inputs['token_type_ids'].unsqueeze(0).to('cpu'),
        'attention_mask': inputs['attention_mask'].unsqueeze(0).to('cpu'),
        'images': [[inputs['images'][0].to('cpu').to(torch.bfloat16)]],
    }
    with torch.no_grad():
        outputs = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert outputs.shape[1] > inputs['input_ids'].shape[1]


def test_model_card_accelerate_dispatch_example(tmp_path):
    """The card's multi-device recipe (init_empty_weights + infer_auto_device_map + load_checkpoint_and_dispatch)."""
    from accelerate import infer_auto_device_map, init_empty_weights, load_checkpoint_and_dispatch

    path = tiny_model_path("cogvlm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_pretrained(
            path,
            torch_dtype=torch.bfloat16,
            low_cpu_mem_usage=True,
            trust_remote_code=True,
        )
    device_map = infer_auto_device_map(model, max_memory={'cpu': '16GiB'},
                                       no_split_module_classes=['CogVLMDecoderLayer', 'TransformerLayer'])
    model = load_checkpoint_and_dispatch(model, str(path), device_map=device_map)
    model = model.eval()
    image = Image.open(EXAMPLE).convert('RGB')
    inputs = model.build_conversation_input_ids(tokenizer, query='Describe this image', history=[], images=[image])
    inputs = {
        'input_ids': inputs['input_ids'].unsqueeze(0),
        'token_type_ids': inputs['token_type_ids'].unsqueeze(0),
        'attention_mask': inputs['attention_mask'].unsqueeze(0),
        'images': [[inputs['images'][0].to(torch.bfloat16)]],
    }
    with torch.no_grad():
        dispatched = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    reference = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    with torch.no_grad():
        expected = reference.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(dispatched, expected)
