"""The variant registry: what each kind of story model is, said once.

Every consumer (documents, evaluation, sampling, compare, plots, `backstory generate`,
the pipeline registry and the dvc.yaml generator) reads this table; nothing else lists
variants. A variant that changes no setting needs no entry in the parameter files.
"""

from __future__ import annotations

from dataclasses import dataclass

WORD_ORDERS = ("forward", "reversed")
TOKEN_ORDERS = ("forward", "backward", "permuted")
DELTAS = ("word_order", "token_order")


@dataclass(frozen=True)
class Variant:
    """One registered variant: how a story becomes a training document and how a model
    of it is read."""

    name: str
    description: str
    words: str = "forward"  # the story's word order; reversed: data.text.reverse_words
    instruct: bool = False  # an instruction from the summary first: prompt + [BOS] + story + [EOS]
    token_order: str = "forward"  # how each window is read; what that means: lm/orders.py
    tokens_from: str | None = None  # train on this variant's token stores, not an export's own
    # A tokenizer of its own, trained on its own training text (same vocabulary size): the
    # tokenizer control of the word-order delta.
    own_tokenizer: bool = False
    # The variant the report measures it against, and in which unit (word_order: bits per
    # byte of the same stories; token_order: nats per token of the very same tokens).
    compares_with: str | None = None
    delta: str | None = None
    init_from: str | None = None  # fine-tune this variant's model of the same preset and seed
    opt_in: bool = False  # left out of `variants: all`, so the default experiment never grows
    color: str = "tab:gray"  # its colour in every plot

    def __post_init__(self) -> None:
        if self.words not in WORD_ORDERS:
            raise ValueError(f"variant {self.name}: words must be one of {WORD_ORDERS}")
        if self.token_order not in TOKEN_ORDERS:
            raise ValueError(f"variant {self.name}: token_order must be one of {TOKEN_ORDERS}")
        if (self.compares_with is None) != (self.delta is None):
            raise ValueError(f"variant {self.name}: compares_with and delta go together")
        if self.delta is not None and self.delta not in DELTAS:
            raise ValueError(f"variant {self.name}: delta must be one of {DELTAS}")
        if self.own_tokenizer and self.tokens_from is not None:
            raise ValueError(f"variant {self.name}: own_tokenizer needs documents of its own "
                             "(no tokens_from)")

    @property
    def token_source(self) -> str:
        """The variant whose exported token stores this one trains and is evaluated on."""
        return self.tokens_from or self.name

    @property
    def layout(self) -> str:
        """The document layout, as the token store's ``layout`` attribute records it."""
        story = "reversed_story" if self.words == "reversed" else "story"
        return f"prompt+bos+{story}+eos" if self.instruct else f"bos+{story}"

    @property
    def tokenizer(self) -> str:
        """Whose tokenizer encodes this variant's documents: its own, or the shared one."""
        return self.token_source if get(self.token_source).own_tokenizer else "shared"


REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("forward", "the usual next-word model: [BOS] + story",
                color="tab:blue"),
        Variant("reversed", "word order reversed: the model writes a story backwards from "
                "its ending", words="reversed", compares_with="forward", delta="word_order",
                color="tab:orange"),
        Variant("instruct", "an instruction made from the summary, then the story",
                instruct=True, color="tab:green"),
        Variant("backward", "forward's very tokens, each training window reversed in token "
                "space (Arrows of Time)", token_order="backward", tokens_from="forward",
                compares_with="forward", delta="token_order", color="tab:purple"),
        Variant("instruct_ft", "instruct's documents, trained by fine-tuning the forward "
                "model of the same preset and seed instead of from scratch",
                instruct=True, tokens_from="instruct", init_from="forward", opt_in=True,
                color="tab:olive"),
        Variant("permuted", "forward's very tokens, each training window read in one fixed "
                "seeded permutation of its positions (Arrows of Time)", token_order="permuted",
                tokens_from="forward", compares_with="forward", delta="token_order",
                opt_in=True, color="tab:brown"),
        Variant("reversed_owntok", "word order reversed, encoded by its own tokenizer trained "
                "on reversed training text (the tokenizer control of the word-order delta)",
                words="reversed", own_tokenizer=True, compares_with="forward",
                delta="word_order", opt_in=True, color="tab:red"),
    )
}
NAMES = tuple(REGISTRY)
# What `variants: all` in an experiment stands for: every variant that is not opt-in.
ALL = tuple(name for name, v in REGISTRY.items() if not v.opt_in)


def get(name: str) -> Variant:
    """The registered variant ``name``; ValueError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown variant {name!r}; registered variants: {', '.join(NAMES)}"
        ) from None


def token_sources(names: tuple[str, ...] | list[str]) -> list[str]:
    """The variants whose token stores ``names`` need exported, in registry order."""
    needed = {get(name).token_source for name in names}
    return [name for name in NAMES if name in needed]


def _check_registry() -> None:
    for variant in REGISTRY.values():
        for other in (variant.tokens_from, variant.compares_with):
            if other is not None and other not in REGISTRY:
                raise ValueError(f"variant {variant.name} names unknown variant {other!r}")
        if variant.tokens_from and get(variant.tokens_from).tokens_from:
            raise ValueError(f"variant {variant.name}: tokens_from must name an exporting variant")
        if variant.init_from is not None:
            if variant.init_from not in REGISTRY:
                raise ValueError(f"variant {variant.name} names unknown variant "
                                 f"{variant.init_from!r}")
            # One level: the initial model is always one trained from scratch.
            if get(variant.init_from).init_from is not None:
                raise ValueError(f"variant {variant.name}: init_from must name a variant "
                                 "trained from scratch")


_check_registry()
