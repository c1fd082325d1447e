"""Run the authors' LongLive (github.com/NVlabs/LongLive, branch v1.0 @ e52d9ef) for one narrastream request.

Runs under the python of the authors' environment (README.md here), from the narrastream root::

    $LONGLIVE_PYTHON runners/longlive_official/run.py REQUEST.json [--repo DIR] [--config YAML]
        [--checkpoint PT] [--lora PT] [--device DEV] [--switch-align authors|floor] [--set KEY=VALUE]

What their ``interactive_inference.py`` does, for one script: their config
(``configs/longlive_interactive_inference.yaml``) with ``num_output_frames`` and ``switch_frame_indices``
taken from the request (6 x 10 s: 240 and "40, 80, 120, 160, 200", their defaults), ``set_seed(seed)``,
``InteractiveCausalInferencePipeline``, the base checkpoint (``generator``) and the rank-256 LoRA through
their ``configure_lora_for_model`` + ``peft``, bf16, noise ``[1, T, 16, 60, 104]`` on the device, then
``pipeline.inference(noise, text_prompts_list, switch_frame_indices)``: their loop switches at the first
block starting at or after each index and re-caches the KV window (42, 81, 120, 162, 201 latent; pixels
165, 321, 477, 645, 801). Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import Weight, interactive_spec, main  # noqa: E402

HUB = "Efficient-Large-Model/LongLive-1.3B"
SPEC = interactive_spec(
    name="longlive-official", env_prefix="LONGLIVE", upstream="NVlabs/LongLive",
    pinned_commit="e52d9ef6865d843282a6b5e9d46d03b35f88929d",  # branch v1.0
    config="configs/longlive_interactive_inference.yaml",
    checkpoint=Weight("longlive_models/models/longlive_base.pt", HUB, "models/longlive_base.pt"),
    lora=Weight("longlive_models/models/lora.pt", HUB, "models/lora.pt"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
