"""Sampler schedule, SPT schedules and switch arithmetic of the streaming backbone (spec §1.2, §2.2, §2.6, §4)."""

from __future__ import annotations

import math

import pytest
import torch

from narrastream.streaming import sampler as S
from narrastream.streaming import switches as SW
from narrastream.streaming import transition as T

# ----------------------------------------------------------------------------- sampler


def test_shift_sigma_hand_values():
    assert S.shift_sigma(0.0) == 0.0
    assert S.shift_sigma(1.0) == 1.0
    assert S.shift_sigma(0.5) == pytest.approx(2.5 / 3.0)
    assert S.shift_sigma(0.25) == pytest.approx(0.625)
    assert S.shift_sigma(0.5, shift=1.0) == pytest.approx(0.5)
    tensor = S.shift_sigma(torch.tensor([0.0, 0.75, 1.0], dtype=torch.float64))
    assert torch.allclose(tensor, torch.tensor([0.0, 0.9375, 1.0], dtype=torch.float64))


def test_shifted_table_is_extra_one_step():
    table = S.shifted_timestep_table()
    assert table.shape == (1000,)
    assert table[0].item() == pytest.approx(1000.0)
    assert table.min().item() > 0.0  # extra_one_step drops the final sigma = 0
    assert table[-1].item() == pytest.approx(1000 * 5 * 0.001 / (1 + 4 * 0.001))
    assert bool((table[1:] < table[:-1]).all())


def test_warped_step_list():
    warped = S.warp_denoising_steps()
    assert warped == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert S.warp_denoising_steps([0]) == [0.0]  # the appended zero
    assert S.warp_denoising_steps([1000, 500], shift=1.0) == pytest.approx([1000.0, 500.0])
    with pytest.raises(ValueError):
        S.warp_denoising_steps([1001])
    with pytest.raises(ValueError):
        S.warp_denoising_steps([750.5])


def test_sigma_and_timestep_tensor():
    sigmas = [S.sigma_of_timestep(t) for t in S.warp_denoising_steps()]
    assert sigmas == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-6)
    ts = S.timestep_tensor(937.5, batch=2, frames=3)
    assert ts.shape == (2, 3) and bool((ts == 937.5).all())
    with pytest.raises(ValueError):
        S.sigma_of_timestep(1200.0)


def test_flow_to_x0_and_add_noise_hand_values():
    x_t = torch.tensor([1.0, 2.0])
    flow = torch.tensor([0.5, -1.0])
    assert torch.equal(S.flow_to_x0(x_t, flow, 0.5), torch.tensor([0.75, 2.5]))
    x0 = torch.tensor([1.0, 0.0])
    eps = torch.tensor([0.0, 2.0])
    assert torch.equal(S.add_noise(x0, eps, 0.25), torch.tensor([0.75, 0.5]))
    # the two are inverse when v = eps - x0
    x0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    xt = S.add_noise(x0, eps, 0.8333)
    assert torch.allclose(S.flow_to_x0(xt, eps - x0, 0.8333), x0, atol=1e-6)
    # dtype is kept
    assert S.flow_to_x0(x_t.bfloat16(), flow.bfloat16(), 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        S.flow_to_x0(x_t, torch.zeros(3), 0.5)


def test_seeded_renoise_is_reproducible():
    x0 = torch.ones(1, 3, 2, 4, 4)
    a = S.renoise(x0, 0.625, torch.Generator().manual_seed(7))
    b = S.renoise(x0, 0.625, torch.Generator().manual_seed(7))
    c = S.renoise(x0, 0.625, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, 0.375 * x0 + 0.625 * eps, atol=1e-6)


def test_few_step_sampler_calls_denoise_four_times():
    target = torch.full((1, 3, 2, 4, 4), 0.5)
    start = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    calls: list[tuple[float, torch.Tensor]] = []

    def denoise(x_t: torch.Tensor, t: float) -> torch.Tensor:
        calls.append((t, x_t.clone()))
        sigma = t / 1000.0
        return (x_t - target) / sigma  # a perfect model: x0 = target

    sampler = S.FewStepSampler(torch.Generator().manual_seed(11))
    out = sampler.sample(start, denoise)
    assert [t for t, _ in calls] == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert sampler.forwards_per_block == S.DIT_FORWARDS_PER_BLOCK == 5
    assert torch.allclose(out, target, atol=1e-5)
    assert torch.equal(calls[0][1], start)
    # step i >= 1 sees (1 - sigma_i) x0 + sigma_i eps_i with eps drawn in order from the same seed
    replay = torch.Generator().manual_seed(11)
    for t, x_t in calls[1:]:
        eps = torch.randn(target.shape, generator=replay)
        sigma = t / 1000.0
        assert torch.allclose(x_t, (1 - sigma) * target + sigma * eps, atol=1e-5)


def test_few_step_sampler_validates_timesteps():
    with pytest.raises(ValueError):
        S.FewStepSampler(torch.Generator(), timesteps=[])
    with pytest.raises(ValueError):
        S.FewStepSampler(torch.Generator(), timesteps=[500.0, 750.0])


# ----------------------------------------------------------------------------- SPT curves


@pytest.mark.parametrize(
    "curve,expected",
    [
        ("linear", (0.0, 0.5, 1.0)),
        ("cosine", (0.0, 0.5, 1.0)),
        ("sigmoid", (0.0, 0.5, 1.0)),
    ],
)
def test_curves_at_0_half_1(curve, expected):
    got = [T.curve_value(curve, t, window_frames=9) for t in (0.0, 0.5, 1.0)]
    assert got == pytest.approx(list(expected), abs=1e-12)


def test_curve_interior_values():
    assert T.curve_value("cosine", 0.25, window_frames=12) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    sig = 1 / (1 + math.exp(-6 * (0.25 - 0.5)))
    low, high = 1 / (1 + math.exp(3)), 1 / (1 + math.exp(-3))
    assert T.curve_value("sigmoid", 0.25, window_frames=9) == pytest.approx((sig - low) / (high - low))
    assert T.curve_value("linear", 0.3, window_frames=9) == pytest.approx(0.3)


def test_step_curve():
    # W = 9: m = 3 steps of 1/3, the first already at t = 0
    assert [T.curve_value("step", t, window_frames=9) for t in (0.0, 0.5, 1.0)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # W = 3 (and W < 6): m = max(1, floor(W/3)) = 1, always 1
    assert [T.curve_value("step", t, window_frames=3) for t in (0.0, 0.5, 1.0)] == [1.0, 1.0, 1.0]
    assert [T.curve_value("step", t, window_frames=15) for t in (0.0, 0.5, 1.0)] == pytest.approx([0.2, 0.6, 1.0])
    with pytest.raises(ValueError):
        T.curve_value("quadratic", 0.5, window_frames=9)
    with pytest.raises(ValueError):
        T.curve_value("linear", 1.5, window_frames=9)


SPEC_TABLE = {  # spec §4: per-block alpha after a switch, cosine, delay 3 ("new" = None)
    3: [0, 0, None],
    6: [0, 0, 0.5, None],
    9: [0, 0, 0.25, 0.75, None],
    12: [0, 0, 0.146, 0.5, 0.854, None],
    15: [0, 0, 0.095, 0.345, 0.655, 0.905, None],
}


@pytest.mark.parametrize("window", sorted(SPEC_TABLE))
def test_spec_alpha_table(window):
    got = T.block_alphas(window)
    want = SPEC_TABLE[window]
    assert len(got) == len(want)
    assert got[-1] is None
    assert got[:-1] == pytest.approx(want[:-1], abs=5e-4)


@pytest.mark.parametrize("curve", T.CURVES)
@pytest.mark.parametrize("window", range(3, 16))
def test_block_alphas_follow_the_formula(curve, window):
    config = T.SptConfig(curve=curve, adaptive=False, window_frames=window)
    alphas = T.block_alphas(window, config)
    # one alpha per block start n = 0, 3, 6, ... until n >= D + W
    assert len(alphas) == math.ceil((3 + window) / 3) + 1
    assert alphas[-1] is None and all(a is not None for a in alphas[:-1])
    assert alphas[0] == 0.0  # the delay block
    for k, alpha in enumerate(alphas[:-1]):
        n = 3 * k
        expected = 0.0 if n < 3 else T.curve_value(curve, min((n - 3) / window, 1.0), window_frames=window)
        assert alpha == pytest.approx(expected)
    ramp = alphas[:-1]
    assert all(0.0 <= a <= 1.0 for a in ramp) and ramp == sorted(ramp)
    if curve != "step":
        assert alphas[1] == 0.0  # the ramp starts at t = 0: an effective delay of 2 blocks


def test_transition_alpha_edges():
    assert T.transition_alpha(0, window_frames=9) == 0.0
    assert T.transition_alpha(2, window_frames=9) == 0.0
    assert T.transition_alpha(3, window_frames=9) == 0.0
    assert T.transition_alpha(7, window_frames=9, curve="linear") == pytest.approx(4 / 9)
    assert T.transition_alpha(11, window_frames=9, curve="linear") == pytest.approx(8 / 9)
    assert T.transition_alpha(12, window_frames=9) is None
    assert T.transition_alpha(100, window_frames=9) is None
    with pytest.raises(ValueError):
        T.transition_alpha(-1, window_frames=9)


@pytest.mark.parametrize(
    "distance,window",
    [(0.0, 3), (0.24, 3), (0.25, 6), (0.49, 6), (0.5, 9), (0.74, 9), (0.75, 12), (0.99, 12), (1.0, 15)]
    + [(-0.2, 3), (1.7, 15)],
)
def test_adaptive_window_thresholds(distance, window):
    assert T.adaptive_window(distance) == window


def test_adaptive_window_rejects_nan():
    with pytest.raises(ValueError):
        T.adaptive_window(float("nan"))


def test_semantic_distance():
    a = torch.zeros(1, 8, 4)
    a[0, :2, 0] = 1.0
    b = torch.zeros(1, 8, 4)
    b[0, :3, 1] = 2.0
    assert T.semantic_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert T.semantic_distance(a, b) == pytest.approx(1.0, abs=1e-6)
    assert T.semantic_distance(a, -a) == pytest.approx(2.0, abs=1e-6)
    # zero padding and scale do not change the direction of the mean
    c = torch.zeros(1, 8, 4)
    c[0, 0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    padded = torch.cat([c, torch.zeros(1, 100, 4)], dim=1) * 5
    assert T.semantic_distance(c, padded) == pytest.approx(0.0, abs=1e-6)
    assert T.semantic_distance(a, c) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    # batch and positions are both averaged
    batch = torch.stack([a[0], b[0]])
    assert T.semantic_distance(batch, a) == pytest.approx(1 - (2 / 8) / math.hypot(2 / 8, 6 / 8), abs=1e-6)
    with pytest.raises(ValueError):
        T.semantic_distance(a, torch.zeros(1, 8, 5))


def test_soft_transition_state():
    state = T.SoftTransition()
    assert state.alpha() is None and not state.active
    state.advance()  # no-op while inactive
    assert state.start(0.6) == 9
    seen = []
    while state.active:
        seen.append(state.alpha())
        state.advance()
    assert seen == pytest.approx([0.0, 0.0, 0.25, 0.75])
    assert state.alpha() is None
    # a switch during a transition restarts the ramp
    state.start(1.0)
    state.advance()
    state.advance()
    state.advance()
    assert state.frames_since_switch == 9
    state.start(0.0)
    assert state.frames_since_switch == 0 and state.window_frames == 3
    with pytest.raises(ValueError):
        state.start(None)


def test_fixed_window_transition_needs_no_distance():
    state = T.SoftTransition(T.SptConfig(adaptive=False, window_frames=6, curve="linear"))
    assert state.start() == 6
    seen = []
    while state.active:
        seen.append(state.alpha())
        state.advance(3)
    assert seen == pytest.approx([0.0, 0.0, 0.5])


def test_spt_config_validation():
    with pytest.raises(ValueError):
        T.SptConfig(curve="quadratic")
    with pytest.raises(ValueError):
        T.SptConfig(min_window=9, max_window=3)


def test_policies():
    assert T.parse_transition_policy("SPT") is T.TransitionPolicy.SOFT
    assert T.parse_transition_policy("no_transition") is T.TransitionPolicy.HARD
    assert T.parse_transition_policy("recache") is T.TransitionPolicy.KV_RECACHE
    with pytest.raises(ValueError):
        T.parse_transition_policy("blend")
    assert isinstance(T.SwitchPolicy().new_transition(), T.SoftTransition)
    assert T.SwitchPolicy(kind=T.TransitionPolicy.HARD).new_transition() is None
    recache = T.KvRecachePolicy()
    assert [recache.frames_to_recache(s) for s in (0, 3, 6, 9, 12, 39, 198)] == [0, 3, 6, 9, 12, 12, 12]
    assert recache.recache_range(39) == (27, 39)
    assert recache.recache_range(0) == (0, 0)
    assert T.KvRecachePolicy(max_frames=None).frames_to_recache(39) == 39


# ----------------------------------------------------------------------------- switches


def test_default_script_plan():
    assert SW.latent_frames_for(60, 16) == 240
    assert SW.requested_switch_indices(6, 10, 16) == [40, 80, 120, 160, 200]
    assert SW.switch_latent_indices(6, 10, 16) == [39, 78, 120, 159, 198]
    assert SW.pixel_start_frames([39, 78, 120, 159, 198]) == [0, 153, 309, 477, 633, 789]
    assert SW.pixel_frames(240) == 957
    plan = SW.plan_switches(6, 10, 16)
    assert plan.num_latent_frames == 240 and plan.num_blocks == 80
    assert plan.switches == (39, 78, 120, 159, 198)
    assert plan.pixel_starts == (0, 153, 309, 477, 633, 789)
    assert plan.num_pixel_frames == 957
    assert plan.segment_latent_lengths == (39, 39, 42, 39, 39, 42)


def test_latent_pixel_mapping():
    assert SW.latent_to_first_pixel(0) == 0
    assert SW.latent_to_first_pixel(1) == 1
    assert SW.latent_to_first_pixel(2) == 5
    assert SW.pixel_frames(1) == 1 and SW.pixel_frames(2) == 5
    with pytest.raises(ValueError):
        SW.pixel_frames(0)


def test_block_prompt_index():
    switches = [39, 78, 120, 159, 198]
    assert SW.block_prompt_index(0, switches) == 0
    assert SW.block_prompt_index(12, switches) == 0  # frames 36..38
    assert SW.block_prompt_index(13, switches) == 1  # starts at 39
    assert SW.block_prompt_index(39, switches) == 2  # starts at 117 < 120
    assert SW.block_prompt_index(40, switches) == 3  # starts at 120
    assert SW.block_prompt_index(79, switches) == 5
    counts = [0] * 6
    plan = SW.plan_switches(6, 10, 16)
    for b in range(plan.num_blocks):
        counts[plan.prompt_for_block(b)] += 1
    assert counts == [13, 13, 14, 13, 13, 14]
    with pytest.raises(ValueError):
        plan.prompt_for_block(80)


def test_switch_edge_cases():
    assert SW.switch_latent_indices(1, 10, 16) == []
    assert SW.align_to_blocks([40, 41, 42]) == [39, 39, 42]
    assert SW.latent_frames_for(5, 16) == 18  # 80 px -> 20 latent -> floored to 18
    with pytest.raises(ValueError):
        SW.switch_latent_indices(3, 0.25, 16)  # 1 latent frame per segment collapses to 0
    with pytest.raises(ValueError):
        SW.latent_frames_for(0.1, 15)  # 1.5 pixel frames
