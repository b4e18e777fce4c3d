"""Measuring deployed models, beside the pipeline stages: `bench` (inference speed, interleaved) and `tune`
(runtime properties and export-time choices). They read what the stages write; no stage imports them."""
