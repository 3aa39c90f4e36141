"""The shared ingest pipeline: corpus, validated stories with their split, tokenizer."""
