"""The adapter methods SQFT trains and merges, one idea per module (as PEFT's `tuners/lora/`).

* `config`: `FinetuneConfig`, the one dataclass every method shares.
* `methods`: the registry, one class per method (LoRA, SparsePEFT, QA-SparsePEFT) that attaches, trains,
  merges and saves its adapters; nothing else branches on a method's name.
* `sparse_lora`: SparsePEFT on PEFT's LoRA layers (the update masked by the base's sparsity) and elastic ranks.
* `qa_lora`: QA-SparsePEFT on NNCF's INT4 fake-quantized LoRA, the one module that touches NNCF internals.
* `elastic`: LoNAS / EFTNAS elastic base widths.
* `nls`: Neural Low-rank adapter Search: rank sampling during training, sub-adapter configurations.
* `adapted`: `Adapted` (base + adapters of one method) and the loaders that rebuild it from a folder.
"""
