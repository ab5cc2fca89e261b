"""The model libraries a render worker's pool process imports as it loads a tiny model
(diffusers and transformers, and through them scipy and sympy): preloaded by the test fork
server (tests/worker_processes.py), so that each pool process of a forked worker finds them
imported. Measured on this machine: the first model load of a pool process costs 5.6 CPU-s
without them and 0.4 CPU-s with them; the integration tests start a few hundred.

Quiet as the worker makes them (tasks.pipelines.quiet_model_libraries, which a third-party
preload must not import): transformers warns on import that torchvision is missing.
"""

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

transformers_logging.set_verbosity_error()
diffusers_logging.set_verbosity_error()

import boto3  # noqa: E402,F401  the object store's client, made as the pool process starts
import diffusers.models.autoencoders.autoencoder_kl  # noqa: E402
import diffusers.models.unets.unet_2d_condition  # noqa: E402
import diffusers.pipelines.pipeline_utils  # noqa: E402
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion  # noqa: E402
import diffusers.schedulers.scheduling_ddim  # noqa: E402,F401
import transformers.models.clip.modeling_clip  # noqa: E402
import transformers.models.clip.tokenization_clip  # noqa: E402,F401
