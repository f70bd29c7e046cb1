"""The lens on CogVLM2-Video: a manifest row with a video, `tokens: frame:N`, rows equal a direct forward."""

from __future__ import annotations

import av
import numpy as np
import torch
from lens_run_helpers import stored_rows, write_manifest

from coglens.lens.run.runner import run_lens
from coglens.processing.video import load_video


def _clip(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=2)
        stream.width, stream.height = 64, 48
        for k in range(8):  # 4 s: 'chat' sampling takes 4 frames
            frame = np.full((48, 64, 3), 30 * k, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@torch.no_grad()
def test_video_row_with_frame_selection(tmp_path, make_config, tiny_pipelines):
    pipe = tiny_pipelines("cogvlm2-video")
    clip = _clip(tmp_path / "clip.mp4")
    manifest = write_manifest(tmp_path / "rows.jsonl",
                              [{"id": "v0", "video": str(clip), "prompt": "What happens?", "label": "fade"}])
    config = make_config(model_path="tiny:cogvlm2-video", manifest=str(manifest),
                         modules=[{"name": "model.layers.1", "tokens": "frame:2"}, "lm_head"], tokens="last")
    summary = run_lens(config, pipeline=pipe, show_progress=False, default_run_name="video")
    assert summary.samples_written == 1
    rows = stored_rows(tmp_path / "lens.db")

    frames = load_video(clip, image_size=pipe.config.vision_config.image_size).frames
    inputs = pipe.build_inputs("What happens?", images=[frames])
    seen = []
    hook = pipe.model.model.layers[1].register_forward_hook(lambda mod, args, output: seen.append(output))
    try:
        out = pipe.model(input_ids=inputs["input_ids"][None], token_type_ids=inputs["token_type_ids"][None],
                         images=[inputs["images"]])
    finally:
        hook.remove()
    types = inputs["token_type_ids"]
    starts = [i for i in range(len(types)) if types[i] == 1 and (i == 0 or types[i - 1] == 0)]
    span = slice(starts[2], starts[2] + pipe.config.num_image_tokens)  # the third frame's boi..eoi
    np.testing.assert_allclose(rows["v0", "model.layers.1", "output", 0], seen[0][0, span],
                               atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(rows["v0", "lm_head", "output", 0], out.logits[0, -1:], atol=1e-4, rtol=1e-4)
