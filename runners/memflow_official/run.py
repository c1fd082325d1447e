"""Run the authors' MemFlow (github.com/KlingTeam/MemFlow @ 7ed5147) for one narrastream request.

Runs under the python of the authors' environment (README.md here), from the narrastream root::

    $MEMFLOW_PYTHON runners/memflow_official/run.py REQUEST.json [--repo DIR] [--config YAML]
        [--checkpoint PT] [--lora PT] [--device DEV] [--switch-align authors|floor] [--set KEY=VALUE]

What their ``interactive_inference.py`` does, for one script: ``configs/interactive_inference.yaml``
(sink 3, window 12, memory bank 3 frames recorded every 3 blocks, SMA off) with ``num_output_frames`` and
``switch_frame_indices`` from the request (240 and "40, 80, 120, 160, 200" for 6 x 10 s, their defaults),
``set_seed(seed)``, ``InteractiveCausalInferencePipeline``, ``checkpoints/base.pt`` (``generator``) and
``checkpoints/lora.pt`` through their ``configure_lora_for_model`` + ``peft``, bf16, noise
``[1, T, 16, 60, 104]``, then ``pipeline.inference(noise, text_prompts_list, switch_frame_indices)``: the
prompts change at the first block starting at or after each index, with LongLive's KV re-cache (42, 81, 120,
162, 201 latent; pixels 165, 321, 477, 645, 801). Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import Weight, interactive_spec, main  # noqa: E402

SPEC = interactive_spec(
    name="memflow-official", env_prefix="MEMFLOW", upstream="KlingTeam/MemFlow",
    pinned_commit="7ed514771f5add2af7cc60889e8310ce2b70ab1e", config="configs/interactive_inference.yaml",
    checkpoint=Weight("checkpoints/base.pt", "KlingTeam/MemFlow", "base.pt"),
    lora=Weight("checkpoints/lora.pt", "KlingTeam/MemFlow", "lora.pt"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
