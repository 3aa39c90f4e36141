"""Custom Kedro datasets: raw corpus files, token stores, tokenizer, model and run folder."""
