"""The pipeline's stages, one module each, in the order a model goes through them.

sparsify -> finetune -> search (NLS) -> merge -> export -> evaluate / bench / tune

Import the verbs from `sqft_ov` itself (`from sqft_ov import sparsify`); the modules here hold them with
their configs and reports. This file imports nothing, so that `sqft_ov.<verb>` never names a module.
"""
