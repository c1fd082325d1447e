"""Run the authors' Deep Forcing (github.com/cvlab-kaist/DeepForcing) for one narrastream request, once released.

As of the pinned snapshot (ecc39ff, 2025-12-04) the authors' repository holds only the project page and a
README saying "Coming Soon!": no inference code and no config are published. Deep Forcing is training-free on
Self-Forcing's weights, so this runner expects a Self-Forcing-layout release and drives it exactly as the
Self-Forcing runner drives Self-Forcing (``pipeline.CausalInferencePipeline(config).inference(noise,
text_prompts)``, prompts routed per block as a hard switch), with no default config: pass theirs::

    $DEEP_FORCING_PYTHON runners/deep_forcing_official/run.py REQUEST.json --repo DIR --config YAML
        [--checkpoint PT] [--device DEV] [--switch-align authors|floor] [--set KEY=VALUE]

It has never run against Deep Forcing's code (none exists to run); README.md here says what to check first.
Common machinery: ``runners/official_common.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_common import SELF_FORCING_DMD, main, single_prompt_spec  # noqa: E402

SPEC = single_prompt_spec(
    name="deep_forcing-official", env_prefix="DEEP_FORCING", upstream="cvlab-kaist/DeepForcing",
    pinned_commit="ecc39ff96945f5cd3387861ed21414ff01de4246",
    markers=("pipeline/__init__.py", "utils/wan_wrapper.py", "utils/misc.py"),
    config=None, checkpoint=SELF_FORCING_DMD,  # training-free on Self-Forcing's weights
    notice=(" (note: the authors have not published Deep Forcing's code; github.com/cvlab-kaist/DeepForcing at "
            "ecc39ff holds the project page and 'Coming Soon!' only, see runners/deep_forcing_official/README.md)"),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
