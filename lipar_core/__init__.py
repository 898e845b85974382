"""lipar_core: streaming Self-Forcing video editing with LIPAR latent inter-frame pruning.

The library has no web code. Its parts, one module per concept:

- :mod:`lipar_core.geometry`      sizes derived from resolution, VAE stride, patch and block size
- :mod:`lipar_core.scheduler`     flow-matching scheduler (shift, step warping, noising, x0 from flow)
- :mod:`lipar_core.models`        the causal DiT on diffusers' ``WanTransformer3DModel``: RoPE, KV cache
- :mod:`lipar_core.autoencoders`  tiny video autoencoder (TAEHV) and the Wan VAE, both streaming
- :mod:`lipar_core.text`          umT5 prompt encoder with a per-prompt cache
- :mod:`lipar_core.editor`        :class:`StreamEditor`, one object per stream
- :mod:`lipar_core.protocol`      the typed editor contract (:class:`BlockEditor`, :class:`BlockStats`)
- :mod:`lipar_core.presets`       named model bundles (``tiny``, ``self-forcing-1.3b``)
"""

__version__ = "0.1.0"
