"""Samples in each variant's natural mode, and the prompts they start from.

How a variant is prompted and read back follows from its registry entry
(``backstory.variants``) and its token order (``backstory.lm.orders``): a forward model
continues a story opening; a model that writes backwards (words reversed, or tokens in
backward order) gets the story's last sentence and writes what came before it; an
instruct model follows an instruction. Every text returned here reads in normal order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from backstory import params, variants
from backstory.core.errors import SettingError
from backstory.data.text import DEFAULT_TEMPLATES, in_word_order, record_instruction
from backstory.data.token_store import TokenStore
from backstory.data.tokenizer import Tokenizer
from backstory.lm import orders
from backstory.lm.beam import beam_search, check_beam
from backstory.lm.constraints import make_constraint
from backstory.lm.generate import SamplingConfig, check_sampling, generate
from backstory.lm.model import Transformer

logger = logging.getLogger(__name__)

# Forward prompts: the story's first sentence, or its first words when that runs long.
PROMPT_MAX_WORDS = 16
PROMPT_FALLBACK_WORDS = 8
# A sentence ends at . ! ? (optionally closed by a quote) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d])\s+")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def opening_prompt(story: str) -> str:
    """A forward prompt: the first sentence, or its first words when it runs long."""
    sentences = _sentences(story)
    if not sentences:
        raise ValueError("cannot make a prompt from an empty story")
    words = sentences[0].split()
    if len(words) > PROMPT_MAX_WORDS:
        return " ".join(words[:PROMPT_FALLBACK_WORDS])
    return sentences[0]


def ending_prompt(story: str) -> str:
    """A reversed-model prompt: the story's last sentence, in normal word order."""
    sentences = _sentences(story)
    if not sentences:
        raise ValueError("cannot make an ending from an empty story")
    return sentences[-1]


def prompt_kind(variant: str) -> str:
    """What a model of ``variant`` is prompted with: ``instruction``, ``ending`` (the
    story's last sentence: it writes backwards, in words or in tokens) or ``opening``."""
    spec = variants.get(variant)
    if spec.instruct:
        return "instruction"
    if spec.words == "reversed" or orders.get(spec.token_order).reverses:
        return "ending"
    return "opening"


def mode(variant: str) -> str:
    """How a model of ``variant`` is prompted, in words (a sample's ``mode``)."""
    spec = variants.get(variant)
    if spec.instruct:
        return "instruction"
    if spec.words == "reversed":
        return "ending"
    return orders.get(spec.token_order).mode


def prompt_ids(tokenizer: Tokenizer, variant: str, prompt: str) -> list[int]:
    """The token ids that start generation for ``prompt`` (given in normal reading order).

    completion: [BOS] + prompt; words reversed: [BOS] + reversed prompt; instruction:
    [EOS] + instruction + [BOS] (the story follows the BOS); tokens backward: the
    ending's ids, last first, as the model read its training windows.
    """
    spec = variants.get(variant)
    check_samples(variant)
    if not prompt.strip() and prompt_kind(variant) != "opening":
        raise ValueError(f"the {variant} variant needs a non-empty prompt ({mode(variant)})")
    if spec.instruct:
        return [tokenizer.eos_id] + tokenizer.encode_one(prompt) + [tokenizer.bos_id]
    text = in_word_order(prompt, spec.words)
    ids = tokenizer.encode_one(text) if text else []
    return orders.get(spec.token_order).prompt(tokenizer.bos_id, ids)


def story_text(tokenizer: Tokenizer, variant: str, ids: list[int], new: list[int]) -> str:
    """The story in normal reading order from the prompt ids and the generated ids."""
    spec = variants.get(variant)
    if spec.instruct:
        return tokenizer.decode(new)  # only what follows the prompt's BOS
    text = tokenizer.decode(orders.get(spec.token_order).read_back(ids + new))
    return in_word_order(text, spec.words)


def _room(model: Transformer, n_prompt: int, max_new_tokens: int) -> int:
    """max_new_tokens, capped by what is left of the model's context after the prompt."""
    params.check_int("", "max_new_tokens", max_new_tokens, 1)
    room = model.config.max_seq_len - n_prompt
    if room < 1:
        raise ValueError(
            f"the prompt is {n_prompt} tokens, which leaves no room in the model's context "
            f"of {model.config.max_seq_len} tokens; shorten it"
        )
    if max_new_tokens > room:
        logger.info("max_new_tokens %d capped at %d: the context holds %d tokens",
                    max_new_tokens, room, model.config.max_seq_len)
    return min(max_new_tokens, room)


def _sample(variant: str, mode: str, prompt: str, text: str, new: list[int], budget: int,
            seed: int) -> dict[str, Any]:
    """One sample record; generate cuts before the first stop id, so a short result means
    one was hit."""
    return {"variant": variant, "mode": mode, "prompt": prompt, "text": text,
            "n_new_tokens": len(new), "stopped": len(new) < budget, "seed": seed}


def generate_story(
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    variant: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    beam_width: int = 1,
    length_penalty: float = 1.0,
    constraint: str | None = None,
) -> dict[str, Any]:
    """Generate one story in ``variant``'s mode; the result reads in normal order.

    A completion model continues ``prompt`` (text = prompt + continuation); a model that
    writes backwards takes an ending and returns the story ending with it; an instruct
    model follows the instruction ``prompt`` (text = the story alone). Generation stops
    at BOS or EOS (``stopped`` True) or after the token budget. ``beam_width`` > 1 runs
    beam search (deterministic; temperature, top-k, top-p and seed unused);
    ``constraint`` names a rule from ``backstory.lm.constraints`` (e.g. "pilish") that
    the generated text keeps, in the order the model writes it. top_k and top_p None
    filter nothing; the project's values come as a ``SamplingConfig``
    (``**sampling.to_dict()``).
    """
    check_sampling(temperature, top_k, top_p)
    check_beam(beam_width, length_penalty)
    spec = variants.get(variant)
    ids = prompt_ids(tokenizer, variant, prompt)
    budget = _room(model, len(ids), max_new_tokens)
    stops = (tokenizer.bos_id, tokenizer.eos_id)
    processors = []
    if constraint is not None:
        if orders.get(spec.token_order).reverses:
            raise ValueError(f"the {variant} variant writes tokens last first, so a constraint "
                             "on its text cannot be checked token by token")
        processors.append(make_constraint(constraint, tokenizer.token_texts(), stop_ids=stops))
    if beam_width > 1:
        best = beam_search(model, ids, beam_width=beam_width, max_new_tokens=budget,
                           length_penalty=length_penalty, stop_ids=stops,
                           logits_processors=processors)[0]
        new = best.tokens[:-1] if best.stopped else best.tokens
    else:
        new = generate(model, [ids], max_new_tokens=budget, temperature=temperature,
                       top_k=top_k, top_p=top_p, stop_ids=stops, seed=seed,
                       logits_processors=processors)[0]
    return _sample(variant, mode(variant), prompt, story_text(tokenizer, variant, ids, new), new,
                   budget, seed)


def _record_prompt(record: Mapping[str, Any], variant: str, index: int, seed: int) -> str:
    spec = variants.get(variant)
    if spec.instruct:
        return record_instruction(
            str(record.get("summary", "")), list(record.get("words", [])),
            list(record.get("features", [])), templates=DEFAULT_TEMPLATES, seed=seed,
            key=f"sample {index}",
        )
    story = record.get("story")
    if not isinstance(story, str):
        raise ValueError(f"sample record {index} has no 'story' text")
    return ending_prompt(story) if prompt_kind(variant) == "ending" else opening_prompt(story)


def _store_prompt(store: TokenStore, tokenizer: Tokenizer, variant: str, i: int) -> str:
    """The prompt for document i, decoded from the store (reversed text read back)."""
    spec = variants.get(variant)
    if spec.instruct:
        # The instruction is what precedes the story; BOS/EOS decode to nothing.
        before = store.document(i)[: int(store.story_spans[i, 0] - store.doc_offsets[i])]
        instruction = tokenizer.decode(before.tolist()).strip()
        if not instruction:
            raise ValueError(f"{store.path}: document {i} has no instruction before its story")
        return instruction
    story = in_word_order(tokenizer.decode(store.story_tokens(i).tolist()),
                          variants.get(spec.token_source).words)
    return ending_prompt(story) if prompt_kind(variant) == "ending" else opening_prompt(story)


def sample_prompts(
    source: TokenStore | Sequence[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    variant: str,
    n: int,
    seed: int,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Prompts (normal reading order) from the first ``n`` validation documents or records.

    With ``max_prompt_tokens``, documents whose prompt ids would be longer are passed
    over (and counted in the log), so a short context still gets ``n`` samples.
    """
    params.check_int("", "n", n, 1)
    source_variant = variants.get(variant).token_source
    is_store = isinstance(source, TokenStore)
    if is_store and source.attrs.get("variant") != source_variant:
        raise ValueError(
            f"{source.path} holds the {source.attrs.get('variant')!r} documents; the "
            f"{variant} variant reads {source_variant!r} documents"
        )
    prompts: list[str] = []
    skipped = 0
    for i in range(source.n_docs if is_store else len(source)):
        if len(prompts) == n:
            break
        prompt = (_store_prompt(source, tokenizer, variant, i) if is_store
                  else _record_prompt(source[i], variant, i, seed))
        if max_prompt_tokens is not None and \
                len(prompt_ids(tokenizer, variant, prompt)) > max_prompt_tokens:
            skipped += 1
            continue
        prompts.append(prompt)
    if skipped:
        logger.info("passed over %d validation documents whose prompts exceed %d tokens",
                    skipped, max_prompt_tokens)
    if len(prompts) < n:
        logger.warning("asked for %d samples but found only %d usable validation documents",
                       n, len(prompts))
    return prompts


def make_samples(
    model: Transformer,
    tokenizer: Tokenizer,
    source: TokenStore | Sequence[Mapping[str, Any]],
    *,
    variant: str,
    n: int,
    sampling: SamplingConfig,
    seed: int,
) -> list[dict[str, Any]]:
    """``n`` samples in the variant's natural mode, prompted from validation data.

    Prompts must leave room for at least min(max_new_tokens, max_seq_len // 4) new
    tokens; sample i uses seed + i, so each sample is reproducible on its own.
    """
    context = model.config.max_seq_len
    longest = context - min(sampling.max_new_tokens, max(1, context // 4))
    prompts = sample_prompts(source, tokenizer, variant=variant, n=n, seed=seed,
                             max_prompt_tokens=longest)
    return [
        generate_story(model, tokenizer, variant=variant, prompt=prompt,
                       **sampling.to_dict(), seed=seed + i)
        for i, prompt in enumerate(tqdm(prompts, desc=f"{variant} samples", unit="story",
                                        leave=False))
    ]


def skipped_samples_reason(variant: str) -> str:
    """Why a model of ``variant`` writes no samples (its token order says it cannot)."""
    return f"the {variant} variant {orders.get(variants.get(variant).token_order).no_stories}"


def check_samples(variant: str) -> None:
    """SettingError unless a model of ``variant`` can write stories."""
    if not orders.get(variants.get(variant).token_order).writes:
        raise SettingError(f"cannot sample from a {variant} model: "
                           f"{skipped_samples_reason(variant)}")


def samples_markdown(samples: Sequence[Mapping[str, Any]],
                     skipped: tuple[int, str] | None = None) -> str:
    """A readable report of samples: prompt, story and how generation ended; with
    ``skipped`` (count, reason), says how many samples were not written and why."""
    lines = ["# Samples", ""]
    if skipped is not None:
        lines += [f"{skipped[0]} samples skipped: {skipped[1]}.", ""]
    for i, sample in enumerate(samples, start=1):
        ending = "stopped at end of story" if sample["stopped"] else "ran out of tokens"
        lines += [
            f"## {i}. {sample['variant']} ({sample['mode']})",
            "",
            f"**Prompt:** {_one_line(sample['prompt'])}",
            "",
            *(f"> {line}" if line else ">" for line in str(sample["text"]).splitlines() or [""]),
            "",
            f"*{sample['n_new_tokens']} new tokens, {ending}.*",
            "",
        ]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


