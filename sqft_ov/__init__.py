"""sqft-ov: sparse, quantized, fine-tuned LLMs deployed through OpenVINO (the SQFT method)."""

__version__ = "0.1.0"

from sqft_ov.errors import SqftError  # noqa: E402

__all__ = ["SqftError", "__version__"]
