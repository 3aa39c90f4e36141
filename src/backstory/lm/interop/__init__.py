"""Models in and out of backstory: llama2.c (run.c, train.py) and Hugging Face Llama.

``export_model`` writes a trained model and its tokenizer in another system's layout,
with the lineage that says how to prompt it; ``load_external`` reads one back (or any
llama2.c / Hugging Face Llama model) as a ``TrainedModel`` plus its ``Tokenizer``.
"""

from backstory.lm.interop.external import (
    FORMATS,
    detect_format,
    export_model,
    load_external,
    save_imported,
)

__all__ = ["FORMATS", "detect_format", "export_model", "load_external", "save_imported"]
