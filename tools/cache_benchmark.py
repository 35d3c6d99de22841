"""What a reused step costs against a computed one, at full size on one GPU (random weights, no Hydra needed).

    python tools/cache_benchmark.py --model 7b --fp8 --output cache-7b.json
    python tools/cache_benchmark.py --model tiny --device cpu --reps 1        # the CPU smoke run

Times one guided evaluation (conditional + unconditional as one batch of 2, the pipeline's single-GPU mode) of
the real GuidedDenoiser with the real TeaCache hook (cosmos_dist/pipeline/step_cache.py):
- computed: the hook runs the block stack (what every step costs with cache=none, plus the signal);
- reused: the hook adds the cached residual instead (embeddings, block 0's modulated input, the statistic and
  the final layer still run);
- decision: block 0's modulated input + the relative L1 statistic + its host read, alone;
and an end-to-end Euler sampling run of --e2e-steps evaluations of which --e2e-computed compute (first and last
included, the rest spread evenly), forced by a schedule since random weights give no meaningful skip pattern.
Medians over --reps after one warm-up, CUDA events (host clock on the CPU). BF16, then (--fp8) with the block
linears in FP8 (models.fp8.convert_blocks_to_fp8, cublas kernel) and BF16 attention.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_dist.models import build_dit, get_preset  # noqa: E402
from cosmos_dist.pipeline.step_cache import TeaCache  # noqa: E402

SHAPES = {"tiny": (3, 16, 24), "7b": (16, 88, 160), "14b": (16, 88, 160)}  # latent (T, H, W): 121 x 704 x 1280


class ScheduledTeaCache(TeaCache):
    """TeaCache's signal and statistic, computed as in the policy, but the reuse decision taken from a fixed
    schedule (so the benchmark controls how many steps compute)."""

    def __init__(self, reuse_steps: set[int]):
        super().__init__(threshold=1.0)
        self.reuse_steps = reuse_steps

    def around_blocks(self, ctx, x, stack):
        states = self._state(ctx)
        signal = stack.modulated_input(x, position_embedding=False)
        if all(st.reference is not None for st in states):
            self._relative_l1(ctx, signal, [st.reference for st in states])
        reuse = [ctx.step in self.reuse_steps and st.residual is not None for st in states]
        for i, st in enumerate(states):
            st.reference = signal[i : i + 1].clone()
            self._note(ctx, st, reuse[i])
        return self._finish(stack, x, reuse, states, 0)


def timed(fn, reps: int, cuda: bool) -> float:
    """Median seconds of `reps` calls after one warm-up (CUDA events on the GPU): tools/benchmark.py's Timer."""
    from benchmark import Timer

    return statistics.median(Timer(torch.device("cuda" if cuda else "cpu"))(fn, reps, warmup=1))


def spread(total: int, computed: int) -> set[int]:
    """Indices of the reused evaluations when `computed` of `total` compute: first and last compute, the other
    computed ones evenly spaced."""
    computed = max(2, min(computed, total))
    keep = {round(i * (total - 1) / (computed - 1)) for i in range(computed)}
    return set(range(total)) - keep


def measure(net, grid, device, reps: int, e2e_steps: int, e2e_computed: int, attention) -> dict:
    from cosmos_dist.pipeline.denoiser import GuidedDenoiser
    from cosmos_dist.pipeline.runtime import SingleProcess
    from cosmos_dist.pipeline.denoiser import mask_tokens
    from cosmos_dist.sampling import SamplerSettings, initial_noise

    cuda = device.type == "cuda"
    cfg, dtype = net.config, net.dtype
    shape = (1, cfg.latent_channels, *grid)
    g = torch.Generator(device="cpu").manual_seed(0)
    cond = torch.randn(1, 512, cfg.crossattn_emb_channels, generator=g).to(device, dtype)
    uncond = torch.randn(1, 512, cfg.crossattn_emb_channels, generator=g).to(device, dtype)
    noise = initial_noise(shape, 1, "bench", sigma_max=80.0)
    tokens, token_grid = net.patchify(noise)
    tokens = tokens.to(device)

    def denoiser(hook, num_steps):
        return GuidedDenoiser(net=net, grid=token_grid, fps=24, cond_emb=cond, uncond_emb=uncond, guidance=7.0,
                              extra_tokens=mask_tokens(net, shape, device, dtype), self_attention=attention,
                              mode="batch", step_hook=hook, runtime=SingleProcess(), num_steps=num_steps)

    x_net = (tokens * 0.0125).to(dtype)
    c_noise = torch.tensor(0.25 * 1.7, device=device, dtype=dtype)
    out = {}
    # computed and reused evaluations at step 1 of 3 (step 0 fills the cache, so step 1 can reuse)
    for name, reuse in (("computed_s", set()), ("reused_s", {1})):
        hook = ScheduledTeaCache(reuse)
        den = denoiser(hook, 3)
        hook.begin_sample("bench", 3)
        den(x_net, c_noise, 10.0, 0)

        def one():
            return den(x_net, c_noise, 9.0, 1)

        out[name] = timed(one, reps, cuda)
        print(f"  {name}: {out[name]:.4f} s", flush=True)

    # the decision alone: signal + statistic + host read, on a captured block input
    captured = {}

    class Capture(TeaCache):
        def around_blocks(self, ctx, x, stack):
            captured["x"], captured["stack"], captured["ctx"] = x, stack, ctx
            return super().around_blocks(ctx, x, stack)

    cap = Capture(1.0)
    cap.begin_sample("bench", 3)
    denoiser(cap, 3)(x_net, c_noise, 10.0, 0)
    x, stack, ctx = captured["x"], captured["stack"], captured["ctx"]
    prev = [stack.modulated_input(x, position_embedding=False)[i : i + 1] * 1.01 for i in range(x.shape[0])]

    def decide():
        sig = stack.modulated_input(x, position_embedding=False)
        return cap._relative_l1(ctx, sig, prev)

    out["decision_s"] = timed(decide, max(reps, 5), cuda)
    print(f"  decision_s: {out['decision_s']:.5f} s", flush=True)
    captured.clear()

    # end to end: Euler sampling with a forced schedule
    if e2e_steps:
        reuse = spread(e2e_steps, e2e_computed)
        settings = SamplerSettings(num_steps=e2e_steps)
        hook = ScheduledTeaCache(reuse)
        den = denoiser(hook, e2e_steps)

        def sample():
            hook.begin_sample("bench", e2e_steps)
            settings.sample(den, tokens, dtype=dtype)

        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample()
        if cuda:
            torch.cuda.synchronize()
        out["e2e"] = {"evaluations": e2e_steps, "computed": e2e_steps - len(reuse), "reused_steps": sorted(reuse),
                      "measured_s": time.perf_counter() - t0,
                      "predicted_s": (e2e_steps - len(reuse)) * out["computed_s"] + len(reuse) * out["reused_s"]}
        print(f"  e2e: {out['e2e']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--attention", default="auto", help="local self-attention kernel (auto: fa3 where installed)")
    ap.add_argument("--e2e-steps", type=int, default=8)
    ap.add_argument("--e2e-computed", type=int, default=5)
    ap.add_argument("--fp8", action="store_true", help="also with FP8 block linears (cublas)")
    ap.add_argument("--output", help="write the results as JSON here (rewritten after each part)")
    args = ap.parse_args(argv)

    from cosmos_dist.attention import get_local_attention
    from cosmos_dist.attention.local import resolve_attention_kernel

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = get_preset(f"{args.model}_text2world")
    grid = SHAPES[args.model]
    kernel = resolve_attention_kernel(args.attention, device)
    result = {"date": _dt.date.today().isoformat(),
              "command": " ".join(["python", "tools/cache_benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "model": args.model, "latent": [cfg.latent_channels, *grid],
              "attention_kernel": kernel, "mode": "batch (cond + uncond in one forward)"}

    def save():
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    with torch.no_grad():
        t0 = time.perf_counter()
        torch.manual_seed(0)
        net = build_dit(cfg, device=device, dtype=dtype)
        result["build_s"] = round(time.perf_counter() - t0, 1)
        attention = get_local_attention(kernel)
        print("bf16:", flush=True)
        result["bf16"] = measure(net, grid, device, args.reps, args.e2e_steps, args.e2e_computed, attention)
        save()
        if args.fp8:
            from cosmos_dist.models.fp8 import convert_blocks_to_fp8

            convert_blocks_to_fp8(net, keep_high_precision=False, kernel="cublas")
            print("fp8 (linears, cublas):", flush=True)
            result["fp8"] = measure(net, grid, device, args.reps, 0, 0, attention)
            save()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
