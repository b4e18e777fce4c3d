"""What the stages read and write: model folders, OpenVINO IR folders, data files, atomic outputs.

* `checkpoint`: Hugging Face folders (config, safetensors, fingerprint, the decoder's linear layers).
* `ir`: IR folders: the model file name and the weights read back out of an IR, dequantized.
* `runtime`: running an IR: its runtime configuration, device checks, genai / optimum-intel loaders.
* `grid`: the trained INT4 grid a QA-SparsePEFT merge leaves beside its weights.
* `data`, `sft_data`: calibration text and prompt/response pairs from local files.
* `output`: atomic output folders and files.
"""
