"""Run the authors' Rolling Forcing (github.com/TencentARC/RollingForcing @ a1477d0) for one narrastream request.

Runs under the python of the authors' environment (README.md here), from the narrastream root::

    $ROLLING_FORCING_PYTHON runners/rolling_forcing_official/run.py REQUEST.json [--repo DIR] [--config YAML]
        [--checkpoint PT] [--device DEV] [--switch-align authors|floor] [--window-prompt newest|oldest]
        [--set KEY=VALUE]

Rolling Forcing releases no multi-prompt inference: its ``inference.py`` generates one prompt per video.
This runner builds the pipeline as that script does (``configs/default_config.yaml`` merged under
``configs/rolling_forcing_dmd.yaml``, ``set_seed(seed)``, ``pipeline.CausalInferencePipeline``,
``checkpoints/rolling_forcing_dmd.pt`` (``generator_ema``, their ``--use_ema``), bf16 on the device, noise
``[1, T, 16, 60, 104]``, ``pipeline.inference_rolling_forcing(noise, text_prompts)``) and switches prompts
inside their unmodified rolling loop by routing each generator call's ``conditional_dict`` (hard switch:
self-attention KV kept, cross-attention recomputed). One call denoises a window of 5 blocks at 5 noise
levels under ONE text condition, so a switch is a choice: ``newest`` (default) gives each window the prompt
of its newest, noisiest block, so every step of the new segment's blocks sees the new prompt and the old
segment's last 4 blocks get their final, low-noise steps under it; ``oldest`` gives the window the prompt of
its cleanest block, so the new prompt governs all steps only 4 blocks (12 latent frames) later. The sidecar's
switch frames are the first frames generated entirely under each new prompt; ``official.mixed_latent_ranges``
holds the blocks that saw both. Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import Weight, main, single_prompt_spec  # noqa: E402

SPEC = single_prompt_spec(
    name="rolling_forcing-official", env_prefix="ROLLING_FORCING", upstream="TencentARC/RollingForcing",
    pinned_commit="a1477d09e85dc759a6a6728f55f77f59342ce388",
    markers=("inference.py", "pipeline/rolling_forcing_inference.py", "utils/wan_wrapper.py"),
    method="inference_rolling_forcing", config="configs/rolling_forcing_dmd.yaml",
    checkpoint=Weight("checkpoints/rolling_forcing_dmd.pt", "TencentARC/RollingForcing",
                      "checkpoints/rolling_forcing_dmd.pt"),
    memory_module=None, low_memory_kwarg=False, rolling_window=True,  # their script moves all to the device
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
