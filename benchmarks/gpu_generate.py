"""Seconds per image of full-size SD 2.1 and SDXL on a GPU, against the FLOP floor, with random weights.

    python benchmarks/gpu_generate.py [--steps 20] [--batch-sizes 1,4,8] [--compile-batch 8] [--budget 480]
    python benchmarks/gpu_generate.py --smoke      # the same code path with tiny models, on any machine

The UNets, VAEs and text encoders are built from the public model configs with random weights: nothing is
downloaded, and the arithmetic is the same as with the real weights. Each measurement runs our DiffusersGenerator
(bf16, SDPA) on one batch after a warm-up batch. The floor is the bf16 FLOP count per image at 790 TFLOP/s (an
H200's dense peak): SDXL 50 steps = 687 TFLOP (0.87 s), SD 2.1 at 768 px 50 steps = 221 TFLOP (0.28 s), scaled
to --steps. Prints a Markdown table; stops starting new measurements once --budget seconds have passed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from builder.generators import GENERATORS, DiffusersGenerator  # noqa: E402
from tiny_models import build_tiny_sd, build_tiny_sdxl, write_clip_tokenizer  # noqa: E402

FLOOR_50_STEPS = {"sd": 0.28, "sdxl": 0.87}  # seconds per image on an H200 in bf16 (../shared/DESIGN.md)
CLIP_VOCAB = 49408

UNETS = {
    "sd": dict(sample_size=96, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True),
    "sdxl": dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
TEXT_ENCODERS = {  # (hidden, intermediate, layers, heads, activation, projection)
    "openclip-h": (1024, 4096, 23, 16, "gelu", 1024),
    "clip-l": (768, 3072, 12, 12, "quick_gelu", 768),
    "openclip-bigg": (1280, 5120, 32, 20, "gelu", 1280),
}


def text_encoder(name: str, tokenizer, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden, intermediate, layers, heads, activation, projection = TEXT_ENCODERS[name]
    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                            num_attention_heads=heads, hidden_act=activation, projection_dim=projection,
                            vocab_size=CLIP_VOCAB, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                            bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def full_size_pipeline(source: str, folder: Path):
    """The pipeline of `source` at full size, random weights, built in memory."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    tokenizer = write_clip_tokenizer(folder / "tokenizer", pad_token="!")
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.18215 if source == "sd" else 0.13025)
    unet = UNet2DConditionModel(**UNETS[source])
    if source == "sd":
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False)
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder("openclip-h", tokenizer),
                                       tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder("clip-l", tokenizer),
                                     text_encoder_2=text_encoder("openclip-bigg", tokenizer, True),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def tiny_pipeline(source: str, folder: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    build = {"sd": (build_tiny_sd, StableDiffusionPipeline), "sdxl": (build_tiny_sdxl, StableDiffusionXLPipeline)}
    builder, pipeline_class = build[source]
    return pipeline_class.from_pretrained(builder(folder / source))


def seconds_per_image(generator: DiffusersGenerator, batch_size: int) -> float:
    prompts = [f"a photo of a person, portrait number {i}" for i in range(batch_size)]
    seeds = list(range(batch_size))
    generator(prompts, seeds)  # warm-up (and compilation)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    generator(prompts, seeds)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--compile-batch", type=int, default=8, help="also measure torch.compile at this batch size")
    parser.add_argument("--budget", type=float, default=480, help="seconds after which no measurement starts")
    parser.add_argument("--sources", default="sd,sdxl")
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes: checks the code path only")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp())
    rows = []
    for source in args.sources.split(","):
        defaults = GENERATORS[source].defaults
        if args.smoke:
            pipeline = tiny_pipeline(source, work)
            size = {"width": 32, "height": 32}
        else:
            with torch.device(device):
                pipeline = full_size_pipeline(source, work)
            size = {"width": defaults.width, "height": defaults.height}
        pipeline.to(torch.bfloat16 if device.type == "cuda" else torch.float32)
        floor = FLOOR_50_STEPS[source] * args.steps / 50
        runs = [(int(b), False) for b in args.batch_sizes.split(",")]
        if args.compile_batch:
            runs.append((args.compile_batch, True))
        for batch_size, compiled in runs:
            if time.perf_counter() - started > args.budget:
                rows.append((source, batch_size, compiled, None, floor))
                continue
            settings = type(defaults)(**{**vars(defaults), **size, "model": f"random-{source}", "steps": args.steps,
                                         "batch_size": batch_size, "compile": compiled})
            generator = DiffusersGenerator(pipeline, settings, device)
            rows.append((source, batch_size, compiled, seconds_per_image(generator, batch_size), floor))
            if compiled:
                pipeline.unet = pipeline.unet._orig_mod  # undo for the next source's pipeline object
            print(rows[-1], flush=True)
        del pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)" if args.smoke else "CPU"
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"\n{name}, torch {torch.__version__}, {args.steps} steps, {dtype}, SDPA, random weights\n")
    print("| model | batch | compile | s/image | FLOP floor s/image | ratio to floor |\n|---|---|---|---|---|---|")
    for source, batch_size, compiled, measured, floor in rows:
        if measured is None:
            print(f"| {source} | {batch_size} | {'yes' if compiled else 'no'} | skipped (budget) | {floor:.3f} | |")
        else:
            print(f"| {source} | {batch_size} | {'yes' if compiled else 'no'} | {measured:.3f} | {floor:.3f} | "
                  f"{measured / floor:.2f}x |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
