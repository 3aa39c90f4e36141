"""Wire the ingest nodes: corpus -> stories -> report, and the tokenizer."""

from kedro.pipeline import Pipeline, node

from backstory.pipelines.ingest.nodes import (
    acquire_corpus,
    clean_corpus,
    fit_tokenizer,
    report_ingest,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(acquire_corpus, ["params:corpus", "params:ingest"], "raw_corpus",
                 name="acquire_corpus"),
            node(
                clean_corpus,
                ["raw_corpus", "params:ingest", "params:split"],
                "stories",
                name="clean_corpus",
            ),
            node(report_ingest, "stories", "ingest_report", name="report_ingest"),
            node(fit_tokenizer, ["stories", "params:tokenizer"], "tokenizer", name="fit_tokenizer"),
        ],
        tags="ingest",
    )
