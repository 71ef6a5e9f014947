"""A stand-in for FoundationVision/Infinity's tools/run_infinity.py: the same functions and signatures, no model.

`gen_one_img` returns what Infinity's does, ONE uint8 H x W x 3 tensor in BGR order. Its pixels encode what it was
given: B = 200, G = g_seed % 256, R = len(prompt) % 256, so a test can tell a channel swap and the seed apart.
"""

import torch

from infinity.models.basic import SIDE  # as Infinity's script imports from its package

CALLS = []


def load_tokenizer(t5_path=""):
    return f"tokenizer:{t5_path}", f"encoder:{t5_path}"


def load_visual_tokenizer(args):
    assert args.vae_type in [14, 16, 18, 20, 24, 32, 64], args.vae_type
    return f"vae:{args.vae_path}"


def load_transformer(vae, args):
    assert args.model_type == "infinity_2b" and args.pn in ("0.06M", "0.25M", "1M")
    return f"transformer:{args.model_path}"


def gen_one_img(infinity_test, vae, text_tokenizer, text_encoder, prompt, cfg_list=[], tau_list=[],
                negative_prompt="", scale_schedule=None, top_k=900, top_p=0.97, cfg_sc=3, cfg_exp_k=0.0,
                cfg_insertion_layer=-5, vae_type=0, gumbel=0, softmax_merge_topk=-1, gt_leak=-1, gt_ls_Bl=None,
                g_seed=None, sampling_per_bits=1, enable_positive_prompt=0):
    CALLS.append({"prompt": prompt, "g_seed": g_seed, "cfg_list": cfg_list, "tau_list": tau_list,
                  "scale_schedule": scale_schedule, "cfg_insertion_layer": cfg_insertion_layer})
    _, height, width = scale_schedule[-1]
    image = torch.empty(height * SIDE, width * SIDE, 3, dtype=torch.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, g_seed % 256, len(prompt) % 256
    return image
