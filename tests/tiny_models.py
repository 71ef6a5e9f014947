"""Tiny random-weight models built from configs and saved like real checkpoints, for tests and benchmarks.

Each is loaded back through the same `from_pretrained(path)` a real model id goes through. Recipes follow
../shared/TINY-MODELS.md.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CHARACTERS = string.ascii_lowercase + string.digits + ",.'!-"
TINY_UNET = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                 attention_head_dim=(2, 4), use_linear_projection=True)


def write_clip_tokenizer(folder: Path, **kwargs):
    """A byte-level BPE tokenizer whose vocabulary is single characters (with and without `</w>`)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in CHARACTERS:
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77, **kwargs)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _text_encoder(tokenizer, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, vocab_size=len(tokenizer), projection_dim=32,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=4, sample_size=32,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"))


def build_tiny_sd(folder: Path) -> Path:
    """An SD 2.1-like StableDiffusionPipeline (v-prediction DDIM), saved to `folder`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(folder / "_tokenizer", pad_token="!")
    unet = UNet2DConditionModel(**TINY_UNET, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(vae=_vae(), text_encoder=_text_encoder(tokenizer), tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: Path) -> Path:
    """An SDXL-like StableDiffusionXLPipeline (two text encoders, text_time conditioning), saved to `folder`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(folder / "_tokenizer", pad_token="!")
    unet = UNet2DConditionModel(  # cross attention sees both encoders (32 + 32); 80 = 6 x 8 time ids + 32 pooled
        **TINY_UNET, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, cross_attention_dim=64,
        projection_class_embeddings_input_dim=80,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipeline = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(tokenizer), text_encoder_2=_text_encoder(tokenizer, True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_clip(folder: Path) -> Path:
    """A CLIPModel with its CLIPProcessor (32 px images), saved to `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(folder / "_tokenizer")
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_classifier(folder: Path, labels: list[str], force: str | None = None) -> Path:
    """A ViTForImageClassification over `labels` (32 px), saved to `folder`; `force` makes it always answer that."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, initializer_range=0.5, id2label=dict(enumerate(labels)),
                       label2id={label: i for i, label in enumerate(labels)})
    model = ViTForImageClassification(config)
    if force is not None:
        with torch.no_grad():
            model.classifier.bias[labels.index(force)] = 1e4
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
