"""Run the authors' Deep Forcing (github.com/cvlab-kaist/DeepForcing @ ea9961a) for one narrastream request.

Runs under the python of the authors' environment (README.md here), from the narrastream root::

    $DEEP_FORCING_PYTHON runners/deep_forcing_official/run.py REQUEST.json [--repo DIR] [--config YAML]
        [--checkpoint PT] [--device DEV] [--switch-align authors|floor] [--set KEY=VALUE]

Deep Forcing is training-free on Self-Forcing's student, and its release keeps Self-Forcing's layout:
``inference.py`` merges ``configs/default_config.yaml`` under the config, sets ``model_kwargs.is_ds_only``,
``budget`` and ``recent`` from its ``--is_ds_only`` (0), ``--Budget`` (16) and ``--Recent`` (4) flags, builds
``pipeline.CausalInferencePipeline`` (whose wrapper builds the Deep Sink + Participative Compression model, or
the Deep-Sink-only one) and loads ``checkpoints/self_forcing_dmd.pt`` (``generator_ema``, ``--use_ema``).
``DS_PC_inference.sh`` runs ``configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml`` (21-frame cache, sink 10)
with those defaults: this runner's default config and overrides. It generates one prompt per video; the
prompts are routed into their unmodified block loop as the Self-Forcing runner does (a hard switch: the
self-attention cache, with its compressed tokens, sink position and recent queries, is kept; the
cross-attention K/V are recomputed for the new prompt), which is what narrastream's ``model=deep_forcing``
does. Deep Sink only: ``--config configs/self_forcing_dmd/self_forcing_dmd_sink14.yaml --set
model_kwargs.is_ds_only=true`` (``DS_inference.sh``). Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import SELF_FORCING_DMD, main, single_prompt_spec  # noqa: E402

SPEC = single_prompt_spec(
    name="deep_forcing-official", env_prefix="DEEP_FORCING", upstream="cvlab-kaist/DeepForcing",
    pinned_commit="ea9961aa4bd5b554daeecdcf59e37c495fba9df6",
    # causal_model_DS.py tells their release from a plain Self-Forcing checkout (same layout otherwise)
    markers=("inference.py", "pipeline/causal_inference.py", "utils/wan_wrapper.py",
             "wan/modules/causal_model_DS.py"),
    config="configs/self_forcing_dmd/self_forcing_dmd_sink10.yaml",
    checkpoint=SELF_FORCING_DMD,  # training-free on Self-Forcing's weights
    # what their inference.py writes into model_kwargs from its flags' defaults (DS_PC_inference.sh passes none)
    overrides=("model_kwargs.is_ds_only=false", "model_kwargs.budget=16", "model_kwargs.recent=4"),
    notice=(" (Deep Forcing's code was published on 2026-02-08 in commit ea9961a; earlier states of "
            "github.com/cvlab-kaist/DeepForcing, e.g. ecc39ff, hold only the project page; see "
            "runners/deep_forcing_official/README.md)"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
