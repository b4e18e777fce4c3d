"""`python -m sqft_ov.cli ...`: what `accelerate launch` and `torchrun` start on every process."""

from sqft_ov.cli import main

main()
