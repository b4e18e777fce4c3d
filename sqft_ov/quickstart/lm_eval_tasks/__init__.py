"""lm-evaluation-harness tasks over local sqft-ov data, for `lm_eval --include_path FOLDER` (offline).

    lm_eval --model openvino --model_args pretrained=IR_DIR --device cpu --include_path FOLDER \
        --tasks sqft_arithmetic [--metadata '{"data": "test.jsonl"}']
"""

from pathlib import Path

FOLDER = Path(__file__).parent
TASKS = ("sqft_arithmetic",)
