"""A story's template fields: cast, object, place and the incidental draws made on
first use."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backstory.data.corpus.storyworld import lexicon as lex
from backstory.data.corpus.storyworld.engine import (
    ANIMAL_HERO_ODDS,
    CRITTERS,
    FEATURE_ODDS,
    FEATURES,
    WRECKERS,
    Plot,
    Source,
    a_or_an,
    capitalized,
)

# --------------------------------------------------------------------------- planning

PLACES_BY_NAME = {p.name: p for p in lex.PLACES}
_HOME_ROOMS = frozenset({"the kitchen", "the bedroom", "the living room", "the attic"})
_GARDENS = frozenset(
    {
        "the garden",
        "the backyard",
        "the farm",
        "the field",
        "the orchard",
        "the pumpkin patch",
        "the vegetable patch",
        "the sunflower field",
    }
)
_PLACE_FILTERS: Mapping[str, Callable[[lex.Place], bool]] = {
    "any": lambda p: True,
    "outdoor": lambda p: p.outdoor,
    "out": lambda p: p.name not in _HOME_ROOMS and p.name != "the backyard",
    "home": lambda p: p.name in _HOME_ROOMS or p.name in ("the backyard", "the garden"),
    "garden": lambda p: p.name in _GARDENS,
}


def _place_pools() -> dict[tuple[str, bool], tuple[lex.Place, ...]]:
    """Places each filter allows, for child heroes and for animal heroes."""
    pools = {}
    for key, keep in _PLACE_FILTERS.items():
        allowed = tuple(p for p in lex.PLACES if keep(p))
        pools[(key, False)] = allowed
        pools[(key, True)] = tuple(p for p in allowed if p.animal_ok) or allowed
    return pools


PLACE_POOLS = _place_pools()
CHILD_OBJECTS = lex.OBJECTS
ANIMAL_OBJECTS = tuple(o for o in lex.OBJECTS if o.animal_ok)
_PETS = ("dog", "cat", "puppy", "kitten", "bunny", "parrot", "hamster", "turtle")
_FRIEND_RELS = ("friend", "best friend", "neighbor", "cousin")
PRONOUNS = {"he": ("he", "him", "his"), "she": ("she", "her", "her")}


@dataclass(frozen=True)
class StoryPlan:
    """What one record is about; everything is drawn from (seed, index)."""

    plot: str
    features: tuple[str, ...]
    words: tuple[str, str, str]  # verb, noun, adjective
    hero: str
    friend: str
    place: str
    noun: str  # the whole object noun ("teddy bear"); words[1] is its head word


def pick_features(rng: Source, plot: Plot) -> tuple[str, ...]:
    chosen = set(plot.forced)
    for f in FEATURES:
        if f in plot.forced:
            rng.skip()  # drawn before the plot's needs were known; the plot decides
        elif rng.chance(FEATURE_ODDS[f]):
            chosen.add(f)
    return tuple(f for f in FEATURES if f in chosen)


def _person(f: dict[str, str], prefix: str, name: str, kind: str, he: str) -> None:
    """Fill a character's name, kind and pronouns under a key prefix ('' or 'f')."""
    subj, obj, poss = PRONOUNS[he]
    f[prefix.upper() or "H"] = name
    f[prefix + "kind"] = kind
    f[prefix + "he"], f[prefix + "him"], f[prefix + "his"] = subj, obj, poss
    f[prefix.upper() + "he" if prefix else "He"] = subj.capitalize()
    f[prefix.upper() + "his" if prefix else "His"] = poss.capitalize()


def draw_cast(rng: Source, f: dict[str, str]) -> str:
    """Choose hero and friend; returns the friend's relation ('friend', 'sibling', 'pet')."""
    animal_hero = rng.chance(ANIMAL_HERO_ODDS)
    f["animal_hero"] = "1" if animal_hero else ""
    he = rng.pick(("he", "she"))
    if animal_hero:
        name, kind = rng.pick(lex.ANIMAL_NAMES), rng.pick(lex.ANIMALS).kind
    else:
        name, kind = _child(rng, he)
    _person(f, "", name, kind, he)
    f["himself"] = "himself" if he == "he" else "herself"
    relation = "friend" if animal_hero else rng.pick_item(("friend", "friend", "sibling", "pet"))
    fhe = rng.pick(("he", "she"))
    start = rng.bits
    while True:  # two characters never share a name
        fname, fkind, f["rel"] = _friend(rng, relation, fhe, animal_hero)
        if fname != name:
            break
        rng.retry(start)
    names = lex.ANIMAL_NAMES if animal_hero or relation == "pet" else _child_names(fhe)
    rng.condition(rng.share(names, name))
    _person(f, "f", fname, fkind, fhe)
    trait, ftrait = rng.pick(lex.TRAITS), rng.pick(lex.TRAITS)
    f["a_trait"], f["a_ftrait"] = f"{a_or_an(trait)} {trait}", f"{a_or_an(ftrait)} {ftrait}"
    return relation


def _child_names(he: str) -> tuple[str, ...]:
    return lex.BOY_NAMES if he == "he" else lex.GIRL_NAMES


def _child(rng: Source, he: str) -> tuple[str, str]:
    """A child's (name, kind) for the pronoun he."""
    return rng.pick(_child_names(he)), "boy" if he == "he" else "girl"


def _friend(rng: Source, relation: str, he: str, animal: bool) -> tuple[str, str, str]:
    """The friend's (name, kind, relation word as in 'her <big sister> Mia')."""
    if animal:
        return rng.pick(lex.ANIMAL_NAMES), rng.pick(lex.ANIMALS).kind, rng.pick(_FRIEND_RELS)
    if relation == "pet":
        kind = rng.pick(_PETS)
        return rng.pick(lex.ANIMAL_NAMES), kind, kind
    name, kind = _child(rng, he)
    if relation == "sibling":
        sibling = "brother" if he == "he" else "sister"
        return name, kind, f"{rng.pick(('little', 'big'))} {sibling}"
    return name, kind, rng.pick(_FRIEND_RELS)


def set_place(f: dict[str, str], place: lex.Place, rng: Source) -> None:
    f["P"] = place.name
    f["outdoor"] = "1" if place.outdoor else ""
    f["P_cap"] = capitalized(place.name)
    f["at_P"] = f"{place.prep} {place.name}"
    f["to_P"] = f"to {place.name}"
    f["sight"], f["sight2"], f["sight3"] = rng.pick_k(place.sights, 3)


def set_object(f: dict[str, str], rng: Source, obj: lex.Obj) -> tuple[str, str]:
    """Fill object and verb keys; returns (verb word, adjective) for the words list."""
    adj = rng.pick(obj.adjectives + lex.COLORS + lex.SIZES)
    f["N"], f["adj"] = obj.noun, adj
    f["a_obj"] = f"{a_or_an(adj)} {adj} {obj.noun}"
    f["a_N"] = f"{a_or_an(obj.noun)} {obj.noun}"
    f["broke"], f["broken"], f["break"], f["breaks"] = (
        ("tore", "torn", "tear", "tears") if obj.soft else ("broke", "broken", "break", "breaks")
    )
    f["fixer"] = "a needle and thread" if obj.soft else "some glue and tape"
    if rng.chance(0.55):
        phrase = rng.pick(obj.verbs)
        past, ing = lex.inflect(phrase)
        the = f"the {obj.noun}"
        f["vp"], f["vped"], f["vping"] = f"{phrase} {the}", f"{past} {the}", f"{ing} {the}"
        f["vp_it"] = f"{phrase} it"
    else:
        phrase = rng.pick(lex.ACTIVITIES)
        past, ing = lex.inflect(phrase)
        f["vp"], f["vped"], f["vping"], f["vp_it"] = phrase, past, ing, phrase
    return phrase.split(" ", 1)[0], adj


def _draw_home(rng: Source, f: dict[str, str]) -> None:
    f["home"] = rng.pick(lex.ANIMAL_HOMES if f["animal_hero"] else lex.HOMES).strip()


def _draw_looks(rng: Source, f: dict[str, str]) -> None:
    looks = rng.pick_k(lex.LOOKS_ANIMAL if f["animal_hero"] else lex.LOOKS_CHILD, 2)
    f["look"], f["look2"] = looks[0].format_map(f), looks[1].format_map(f)
    f["look_bare"] = f["look"].split(" ", 1)[1] if f["look"].startswith("a ") else f["look"]


def _draw_spots(rng: Source, f: dict[str, str]) -> None:
    spots = lex.HIDING_OUTDOORS if f["outdoor"] else lex.HIDING_INDOORS
    f["spot1"], f["spot2"], hide = rng.pick_k(spots, 3)
    f["hide"] = hide if rng.chance(0.7) else f"near {f['sight3']}"


def _draw_food(rng: Source, f: dict[str, str]) -> None:
    f["food"], f["food2"] = rng.pick_k(lex.FOODS, 2)
    f["Food"] = capitalized(f["food"])


def _draw_critter(rng: Source, f: dict[str, str]) -> None:
    critter = rng.pick(CRITTERS)
    f["critter"], f["a_critter"] = critter, f"{a_or_an(critter)} {critter}"
    f["A_critter"] = capitalized(f["a_critter"])


def _draw_beast(rng: Source, f: dict[str, str]) -> None:
    beast = rng.pick(lex.ANIMALS)
    f["a_beast"] = f"{a_or_an(beast.kind)} {beast.kind}"
    f["A_beast"] = capitalized(f["a_beast"])
    f["beast_sound"], f["beast_moved"] = beast.sound, beast.move


def _draw_count(rng: Source, f: dict[str, str]) -> None:
    f["count"], f["counted"] = rng.pick(lex.NUMBERS), rng.pick(lex.COUNTABLES)


def draw_wrecker(rng: Source, f: dict[str, str]) -> None:
    f["wrecker"], f["wrecked"] = rng.pick(WRECKERS)
    f["Wrecker"] = capitalized(f["wrecker"])


def _draw_one(key: str, pool: Sequence[str]) -> Callable[[Source, dict[str, str]], None]:
    def draw(rng: Source, f: dict[str, str]) -> None:
        f[key] = rng.pick(pool).strip().format_map(f)

    return draw


# Incidental fields, drawn the first time a template asks for them: most stories use only
# a few of them, and not drawing the rest is a good share of the generator's speed. Record
# i stays a function of (seed, i), because its templates are always read in the same order.
_LAZY_DRAWS: dict[str, Callable[[Source, dict[str, str]], None]] = {
    "home": _draw_home,
    **dict.fromkeys(("look", "look2", "look_bare"), _draw_looks),
    **dict.fromkeys(("spot1", "spot2", "hide"), _draw_spots),
    **dict.fromkeys(("food", "food2", "Food"), _draw_food),
    **dict.fromkeys(("critter", "a_critter", "A_critter"), _draw_critter),
    **dict.fromkeys(("a_beast", "A_beast", "beast_sound", "beast_moved"), _draw_beast),
    **dict.fromkeys(("count", "counted"), _draw_count),
    **dict.fromkeys(("wrecker", "wrecked", "Wrecker"), draw_wrecker),
    "day": _draw_one("day", lex.DAY_STARTS),
    "time": _draw_one("time", lex.TIME_PHRASES),
    "trinket": _draw_one("trinket", lex.TRINKETS),
    "game": _draw_one("game", lex.GAMES),
}


class Fields(dict):
    """Template fields of one story; incidental ones are drawn on first use (_LAZY_DRAWS)."""

    __slots__ = ("rng",)

    def __init__(self, rng: Source) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        draw = _LAZY_DRAWS.get(key)
        if draw is None:
            raise KeyError(key)
        draw(self.rng, self)
        return self[key]


def head_noun(noun: str) -> str:
    """The one word of an object noun that goes in the words list ("teddy bear" -> "bear")."""
    if " of " in noun:
        return noun.split(" ", 1)[0]
    return noun.rsplit(" ", 1)[-1]
