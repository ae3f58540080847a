"""Hugging Face ViTs in and out of bundles: ``skipvit import hf`` and ``skipvit export hf``.

``source`` reads a ``save_pretrained`` directory (config.json, safetensors weights,
preprocessor_config.json) and refuses what it cannot reproduce; ``config`` translates configs both
ways; ``tensors`` renames weights both ways. None of these imports transformers: an import reads
JSON and safetensors only. ``reference`` is the one module that does, for ``--check`` and the
tests that compare the two models' logits.
"""
