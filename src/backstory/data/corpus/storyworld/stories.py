"""Planning and writing one storyworld record: cast, object, place, opening, record."""

from __future__ import annotations

from backstory import params
from backstory.data.corpus.storyworld import lexicon as lex
from backstory.data.corpus.storyworld.engine import (
    LEADING_BLANK_ODDS,
    PROMPT_FEATURE_PHRASES,
    PROMPT_HEAD,
    SOURCE,
    Plot,
    Source,
    Teller,
    capitalized,
)
from backstory.data.corpus.storyworld.fields import (
    ANIMAL_OBJECTS,
    CHILD_OBJECTS,
    PLACE_POOLS,
    PRONOUNS,
    Fields,
    StoryPlan,
    draw_cast,
    head_noun,
    pick_features,
    set_object,
    set_place,
)
from backstory.data.corpus.storyworld.plots import PLOTS


def story_source(seed: int, index: int) -> Source:
    return Source(f"{seed}:{index}")


def build_story(rng: Source) -> tuple[StoryPlan, Teller, Plot]:
    plot = rng.pick(PLOTS)
    features = pick_features(rng, plot)
    f = Fields(rng)
    relation = draw_cast(rng, f)
    f["relation"] = relation
    animal = bool(f["animal_hero"])
    objects = ANIMAL_OBJECTS if animal else CHILD_OBJECTS
    obj = rng.pick(objects)
    verb, adj = set_object(f, rng, obj)
    set_place(f, rng.pick(PLACE_POOLS[(plot.places, animal)]), rng)
    adult, ghe = rng.pick(lex.ADULTS)
    f["G"], f["ghe"], f["Ghe"] = adult, ghe, ghe.capitalize()
    f["ghim"], f["ghis"] = PRONOUNS[ghe][1], PRONOUNS[ghe][2]
    if plot.setup:
        plot.setup(rng, f)
    bad = "BadEnding" in features
    fore = rng.pick(plot.bad_fore if bad else plot.fore) if "Foreshadowing" in features else None
    teller = Teller(rng, f, frozenset(features), fore)
    plan = StoryPlan(
        plot=plot.name,
        features=features,
        words=(verb, head_noun(obj.noun), adj),
        hero=f["H"],
        friend=f["F"],
        place=f["P"],
        noun=obj.noun,
    )
    return plan, teller, plot


# --------------------------------------------------------------------------- opening

_INTROS_CHILD = (
    "Once upon a time, there was {a_trait} {kind} named {H}.",
    "Once upon a time, there was a little {kind} named {H}. {He} lived {home}.",
    "There was once {a_trait} {kind} called {H}.",
    "{H} was {a_trait} {kind} who lived {home}.",
    "Once there was {a_trait} little {kind} named {H}, who lived {home}.",
)
_INTROS_ANIMAL = (
    "Once upon a time, there was {a_trait} little {kind} named {H}.",
    "Once upon a time, {a_trait} {kind} named {H} lived {home}.",
    "In a quiet corner of the world, there lived {a_trait} {kind} called {H}.",
    "{H} was {a_trait} little {kind} who lived {home}.",
)
_FRIEND_INTROS = {
    "friend": (
        "{His} {rel}, {F}, was {a_ftrait} {fkind}.",
        "{H} often played {game} with {his} {rel} {F}.",
        "{His} {rel} {F} lived just down the road.",
        "{H} had {a_ftrait} {rel} named {F}.",
    ),
    "sibling": (
        "{H} had a {rel} named {F}.",
        "{His} {rel}, {F}, followed {him} everywhere.",
        "{H} lived with {G} and {his} {rel}, {F}.",
    ),
    "pet": (
        "{H} had {a_ftrait} {fkind} named {F}.",
        "{His} pet {fkind}, {F}, went everywhere with {him}.",
        "{H} had a pet {fkind} called {F}, and they did everything together.",
    ),
}
_LOOKS_CHILD = (
    "{H} had {look} and {look2}.",
    "{He} had {look}.",
    "Everyone knew {H} by {his} {look_bare}.",
)
_LOOKS_ANIMAL = (
    "{H} had {look} and {look2}.",
    "{He} had {look}.",
)
_OBJECT_INTROS = (
    "{He} had {a_obj}.",
    "{His} favorite thing in the whole world was {his} {adj} {N}.",
    "{G} had given {him} {a_obj} for {his} birthday.",
    "{H} had {a_obj} that {he} took almost everywhere.",
    "{He} loved {his} {adj} {N} very much.",
)
_VERB_LINES = (
    "{H} loved to {vp} {time}.",
    "More than anything, {he} liked to {vp}.",
    "{His} favorite thing to do was to {vp}.",
    "{He} could {vp} for hours.",
    "Nothing made {H} happier than to {vp} {time}.",
    "Every day, {H} would {vp}.",
)


def _opening(t: Teller, plot: Plot) -> None:
    animal = bool(t.f["animal_hero"])
    t.add(*(_INTROS_ANIMAL if animal else _INTROS_CHILD))
    if t.rng.chance(0.5):
        t.add(*(_LOOKS_ANIMAL if animal else _LOOKS_CHILD))
    if plot.intro_friend:
        t.add(*_FRIEND_INTROS[t.f["relation"]])
    t.add(*_OBJECT_INTROS)
    t.add(*_VERB_LINES)
    t.hint()


# --------------------------------------------------------------------------- records


def _prompt(words: tuple[str, str, str], features: tuple[str, ...]) -> str:
    verb, noun, adj = words
    text = (
        f'{PROMPT_HEAD} The story should use the verb "{verb}", the noun "{noun}" and the '
        f'adjective "{adj}".'
    )
    if features:
        phrases = [PROMPT_FEATURE_PHRASES[f] for f in features]
        listed = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
        text += f" The story should have the following features: {listed}."
    return text + " Remember to only use simple words!\n\nPossible story:"


def _tell(teller: Teller, plot: Plot) -> str:
    """The story text of a built plan: opening, then the plot's body."""
    _opening(teller, plot)
    plot.body(teller)
    return teller.text()


def story_of(rng: Source) -> str:
    """The story text that the draws of rng make (no leading blank line, no summary)."""
    _plan, teller, plot = build_story(rng)
    return _tell(teller, plot)


def plan_story(seed: int, index: int) -> StoryPlan:
    """The plan behind record `index` of corpus `seed` (plot, cast, words, features)."""
    _check_seed_index(seed, index)
    return build_story(story_source(seed, index))[0]


def generate_record(seed: int, index: int) -> dict:
    """Record `index` of the corpus `seed`, in the TinyStories_all_data schema."""
    _check_seed_index(seed, index)
    rng = story_source(seed, index)
    plan, teller, plot = build_story(rng)
    story = _tell(teller, plot)
    # The story is complete: the draws below (a leading blank line, which ingest strips,
    # and the summary) do not change its text.
    source_bits = rng.bits
    if teller.rng.chance(LEADING_BLANK_ODDS):
        story = "\n\n" + story
    summaries = plot.bad_summaries if teller.bad else plot.summaries
    summary = capitalized(teller.fill(teller.rng.pick(summaries)))
    return {
        "story": story,
        "instruction": {
            "prompt:": _prompt(plan.words, plan.features),
            "words": list(plan.words),
            "features": list(plan.features),
        },
        "summary": summary,
        "source": SOURCE,
        "source_bits": source_bits,
    }


def generate_records(seed: int, start: int, stop: int) -> list[dict]:
    """Records [start, stop) of the corpus `seed`; equal to slicing the whole corpus."""
    _check_range(seed, start, stop)
    return [generate_record(seed, i) for i in range(start, stop)]



# --------------------------------------------------------------------------- checks


def _check_seed_index(seed: int, index: int) -> None:
    params.check_int("", "seed", seed, 0)
    params.check_int("", "index", index, 0)


def _check_range(seed: int, start: int, stop: int) -> None:
    params.check_int("", "seed", seed, 0)
    params.check_int("", "start", start, 0)
    params.check_int("", "stop", stop, 0)
    if start > stop:
        raise ValueError(f"start must be <= stop, got start={start}, stop={stop}")
