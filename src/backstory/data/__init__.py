"""Data layer: corpus ingest, text transforms, tokenizer, token stores. Knows nothing of Kedro."""
