"""Run the authors' Self-Forcing (github.com/guandeh17/Self-Forcing @ 33593df) for one narrastream request.

Runs under the python of the authors' environment (README.md here), from the narrastream root::

    $SELF_FORCING_PYTHON runners/self_forcing_official/run.py REQUEST.json [--repo DIR] [--config YAML]
        [--checkpoint PT] [--device DEV] [--switch-align authors|floor] [--set KEY=VALUE]

Self-Forcing releases no multi-prompt inference: its ``inference.py`` generates one prompt per video.
This runner builds the pipeline as that script does (``configs/default_config.yaml`` merged under
``configs/self_forcing_dmd.yaml``, ``set_seed(seed)``, ``pipeline.CausalInferencePipeline``,
``checkpoints/self_forcing_dmd.pt`` (``generator_ema``, their ``--use_ema``), bf16, noise
``[1, T, 16, 60, 104]``, ``pipeline.inference(noise, text_prompts, low_memory=...)``) and switches prompts
inside their unmodified block loop by routing each generator call's ``conditional_dict``: a hard switch
(self-attention KV kept, cross-attention K/V recomputed for the new prompt) at the first block starting at
or after each requested latent index, as LongLive's and MemFlow's loops place their switches. Their default
config attends to every past frame in a 21-frame KV buffer, which cannot hold a 240-frame video, so the
runner sets ``model_kwargs.local_attn_size=12`` (a 12-frame rolling window, as narrastream's ``self_forcing``);
``--set model_kwargs.local_attn_size=N`` changes it. Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import SELF_FORCING_DMD, main, single_prompt_spec  # noqa: E402

SPEC = single_prompt_spec(
    name="self_forcing-official", env_prefix="SELF_FORCING", upstream="guandeh17/Self-Forcing",
    pinned_commit="33593df3e81fa3ec10239271dd2c100facac6de1",
    markers=("inference.py", "pipeline/causal_inference.py", "utils/wan_wrapper.py"),
    config="configs/self_forcing_dmd.yaml", checkpoint=SELF_FORCING_DMD,
    overrides=("model_kwargs.local_attn_size=12",),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
