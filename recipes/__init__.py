"""SQFT pipelines as plain Python over the public API, one module per method.

Run one with `sqft-ov run recipes/<name>.py --model ... --data ...`, or import it: this folder is
installed as `sqft_ov.recipes` (that is how `sqft-ov quickstart` runs them).
"""
