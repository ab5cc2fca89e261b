"""Build a tiny random-weight Stable Diffusion pipeline entirely offline.

torch and the model libraries are imported only when a model is built: asking which seed
a folder was built with (`canary models make-tiny` on a built version) stays instant.

The result is a normal diffusers folder (``model_index.json``, safetensors weights, a
CLIP tokenizer), so it is loaded through exactly the same ``from_pretrained`` path as a
real checkpoint. The component configs follow the tiny ones in diffusers' own tests.
Different seeds give different weights, i.e. different "model versions".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.version_config import CONFIG_FILE

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from transformers import CLIPTokenizer

TEXT_DIM = 32


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with no merges: every UTF-8 byte is a token.

    Real CLIP vocabularies come from the hub; this one is built from first principles
    so that any text tokenizes without network access.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_pipeline(seed: int) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline a few hundred kB in size with seeded random weights."""
    import torch

    from tasks.pipelines import quiet_model_libraries

    quiet_model_libraries()
    # the defining modules: mypy reads the names `diffusers` exports as placeholder classes
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=TEXT_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            projection_dim=TEXT_DIM,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,  # type: ignore[arg-type]  # diffusers accepts None but types it without
        feature_extractor=None,  # type: ignore[arg-type]  # diffusers accepts None but types it without
        requires_safety_checker=False,
    )


# What a tiny model declares (tasks/version_config.py): it renders at 64 x 64 on a CPU in
# well under a second and scales up to the requested size, so every size it accepts
# finishes far inside its own time limits.
TINY_VERSION_CONFIG = """\
# A tiny random-weight model for CPUs, built by `canary models make-tiny` (seed {seed}).
# It renders at 64 x 64 and scales the image up to the requested size.
render_size: [64, 64]
postprocess:
  - safety_filter: {{}}
  - resize: {{}}
limits:
  default_width: 512
  default_height: 512
  default_steps: 25
  max_width: 1024
  max_height: 1024
  max_steps: 50
  soft_time_limit_s: 60
  time_limit_s: 90
"""
TINY_SEED_FILE = "tiny-model.json"


def tiny_model_seed(target: Path) -> int | None:
    """The seed a folder's tiny model was built with, or None for any other folder."""
    try:
        return int(json.loads((target / TINY_SEED_FILE).read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def make_tiny_model(target: Path, seed: int) -> Path:
    """Write a tiny pipeline to ``target`` as a diffusers folder with safetensors weights,
    with the ``canary.yaml`` that declares what it can render."""
    pipeline = build_tiny_pipeline(seed)
    target.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(target, safe_serialization=True)
    (target / CONFIG_FILE).write_text(TINY_VERSION_CONFIG.format(seed=seed), encoding="utf-8")
    (target / TINY_SEED_FILE).write_text(json.dumps({"seed": seed}), encoding="utf-8")
    return target


def make_tiny_scorer(target: Path, seed: int = 0) -> Path:
    """A tiny random-weight CLIP model + processor: the golden checks' scorer, offline.

    Its scores mean nothing; it exercises the same loading and scoring path as a real
    CLIP checkpoint placed in ``CANARY_GOLDEN_SCORER_DIR``.
    """
    import torch

    from tasks.pipelines import quiet_model_libraries

    quiet_model_libraries()
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "hidden_size": TEXT_DIM,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": TEXT_DIM,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TEXT_DIM,
    )
    processor = CLIPProcessor(  # type: ignore[no-untyped-call]  # unannotated in transformers
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    target.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    return target
