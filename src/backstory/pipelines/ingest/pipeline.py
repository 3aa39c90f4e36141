"""Wire the ingest nodes: corpus -> stories + report -> tokenizer."""

from kedro.pipeline import Pipeline, node

from backstory.pipelines.ingest.nodes import acquire_corpus, clean_corpus, fit_tokenizer


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(acquire_corpus, "params:corpus", "raw_corpus", name="acquire_corpus"),
            node(
                clean_corpus,
                ["raw_corpus", "params:ingest", "params:split"],
                ["stories", "ingest_report"],
                name="clean_corpus",
            ),
            node(fit_tokenizer, ["stories", "params:tokenizer"], "tokenizer", name="fit_tokenizer"),
        ],
        tags="ingest",
    )
