"""The fourteen storyworld plots: each one's body, summaries and foreshadowing pairs."""

from __future__ import annotations

import re

from backstory.data.corpus.storyworld import lexicon as lex
from backstory.data.corpus.storyworld.engine import Plot, Source, Teller, a_or_an, capitalized
from backstory.data.corpus.storyworld.fields import PLACES_BY_NAME, draw_wrecker, set_place


def _body_lost(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} took the {N} {to_P}.",
        "{day}, {H} went {to_P} with {F}, and {he} brought {his} {N} along.",
        "{day}, {G} took {H} and {F} {to_P}. {H} held {his} {N} the whole way.",
    )
    t.scene()
    t.add("They saw {sight} and {sight2}.", "There was {sight}, and there was {sight2}.")
    t.add(
        "{H} put the {N} down for a moment to look at {sight}.",
        "{H} set the {N} on the ground and ran to see {sight}.",
    )
    t.add(
        "When {he} came back, the {N} was not there!",
        "When {he} turned around, the {N} was gone!",
        "A moment later, {H} looked down. The {N} had disappeared!",
    )
    t.say(
        "H",
        ("Where is my {N}?", "{H} wondered where {his} {N} could be."),
        ("Oh no, my {adj} {N} is gone!", "{H} called out that {his} {adj} {N} was gone."),
    )
    t.say(
        "F",
        ("Don't worry, we will find it together.", "{F} told {him} not to worry."),
        ("Let's look everywhere!", "{F} said they should look everywhere."),
    )
    t.para()
    t.add(
        "They looked {spot1}. They looked {spot2}. But the {N} was not there.",
        "First they looked {spot1}, and then they looked {spot2}, but they found nothing.",
    )
    t.detail()
    t.conflict(
        "{H} wanted to look {spot1} again, but {F} wanted to look somewhere new.",
        "{F} said the {N} was {spot2}, but {H} said it was not.",
    )
    t.para()
    if t.bad:
        t.twist(
            "A big bird swooped down, picked up the {N} and flew far away over the trees.",
            "A little {critter} ran off with the {N} and disappeared into a deep hole.",
        )
        t.payoff()
        t.add(
            "They looked and looked until it was dark, but the {N} was never found.",
            "They searched until the sun went down, but they never saw the {N} again.",
        )
        t.end(_LOST_SAD, _LOST_SAD)
    else:
        t.twist(
            "A little {critter} had taken the {N} and hidden it {hide}!",
            "The {N} had been carried off by a little {critter}, and it was {hide} now.",
        )
        t.payoff()
        t.add(
            "At last, {H} saw something {adj} {hide}. It was the {N}!",
            "Then {F} pointed {hide}. There was the {adj} {N}!",
        )
        t.say(
            "H",
            ("You found it! Thank you, {F}!", "{H} thanked {F} again and again."),
            ("My {N}! I am so happy!", "{H} said {he} was so happy to have {his} {N} back."),
        )
        t.end(_LOST_HAPPY, _LOST_HAPPY)
    t.moral(
        ("a good friend never gives up", "we should always keep our things close"),
        ("we should keep our things close", "small things are easy to lose"),
    )


_LOST_HAPPY = (
    "{H} hugged the {N} and smiled.",
    "They {vped} together until the sun went down, and they were very happy.",
    "{H} and {F} laughed all the way home.",
    "From then on, {H} kept the {N} safe and was glad to have such a good friend.",
    "{H} held the {N} close and laughed with joy.",
    "{F} and {H} did a happy little dance right there {at_P}.",
)
_LOST_SAD = (
    "{H} walked home without {his} {N} and felt very sad.",
    "{H} cried, and {F} held {his} hand, but the {N} was gone.",
    "Every day, {H} thought about {his} lost {N}.",
    "{His} {adj} {N} was lost forever.",
    "That night, {H} cried into {his} pillow.",
    "{H} hoped someone kind had found it, but {he} never knew.",
)

LOST_FOUND = Plot(
    "lost_and_found",
    re.compile(r"\blos(?:e|es)\b"),
    _body_lost,
    (
        "{H} loses {his} {adj} {N} {at_P}, and {F} helps {him} find it {hide}.",
        "When {H} loses {his} {N} {at_P}, {F} helps {him} search until they find it {hide}.",
    ),
    (
        "{H} loses {his} {adj} {N} {at_P}, and even with help from {F} it is never found.",
        "{H} and {F} lose the {N} {at_P} and never see it again.",
    ),
    (
        (
            "Before they left, {G} gave {H} a little flashlight and said it might come in handy.",
            "Then {H} remembered the flashlight from {G}. {He} turned it on and shined it into "
            "every dark corner.",
        ),
        (
            "{G} had taught {H} to always look low and slow when something was missing.",
            "{H} remembered what {G} had taught {him}. {He} got down low and looked slowly.",
        ),
    ),
    (
        (
            "{G} told {H} to keep the {N} in {his} bag, so it would not get lost.",
            "{H} remembered that {G} had told {him} to keep the {N} in {his} bag. Now it was too "
            "late.",
        ),
        (
            "{G} said that small things get lost easily in big places.",
            "{H} remembered {G}'s words about small things and big places.",
        ),
    ),
)


def _body_sharing(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {F} came to play {at_P}.",
        "{day}, {H} and {F} were playing {at_P}.",
        "{day}, {H} took {his} {N} {to_P}, where {F} was playing.",
    )
    t.scene()
    t.add("{F} saw the {adj} {N} and wanted to play with it too.", "{F} looked at the {N}.")
    t.say(
        "F",
        ("Can I play with your {N}?", "{F} asked if {fhe} could play with the {N}."),
        ("Please, can I have a turn?", "{F} asked nicely for a turn."),
    )
    t.say(
        "H",
        ("No, it is mine!", "{H} said no, because the {N} was {his}."),
        ("No! I want to {vp_it} by myself.", "{H} said {he} wanted to {vp_it} by {himself}."),
    )
    t.para()
    t.detail()
    t.conflict(
        "{F} grabbed the {N}, and {H} pulled it back.",
        "{F} reached for the {N}, but {H} held it tight. They both pulled and pulled.",
    )
    if t.bad:
        told = t.twist(
            "{F} let go all of a sudden, and the {N} flew across the room and {broke}.",
            "A big dog ran up, grabbed the {N} in its mouth and pulled too, and the {N} "
            "{broke} in two.",
        )
        if not told:
            t.add(
                "They pulled so hard that the {N} {broke} in two.",
                "Then there was a loud snap. The {N} {broke} into pieces.",
            )
        t.payoff()
        t.para()
        t.end(_SHARE_SAD, _SHARE_SAD, 3)
    else:
        t.twist(
            "When they both held the {N} at the same time, it began to glow and sparkle like "
            "magic!",
            "{F} pulled {a_N} of {fhis} own out of {fhis} bag. It looked just the same!",
        )
        t.payoff()
        t.para()
        t.add(
            "{H} saw that {F} looked sad, and {he} felt bad.",
            "Then {G} came over and showed them how to take turns.",
        )
        t.say(
            "H",
            ("Here, you can have a turn. Let's share.", "{H} gave {F} a turn and said they "
             "could share."),
            ("We can {vp_it} together!", "{H} said they could {vp_it} together."),
        )
        t.end(_SHARE_HAPPY, _SHARE_HAPPY)
    t.moral(
        ("sharing is caring", "taking turns makes playing better", "it is kind to share"),
        ("grabbing and pulling only leads to trouble", "sharing is better than pulling"),
    )


_SHARE_HAPPY = (
    "They took turns to {vp}, and it was much more fun.",
    "{F} smiled, and {H} smiled too.",
    "They played together all afternoon and were very happy.",
    "Sharing made both of them glad.",
    "Soon they were laughing so hard that they fell over.",
    "{H} found that playing together was twice the fun.",
)
_SHARE_SAD = (
    "Now nobody could play with the {N}, and they both felt very sad.",
    "{H} looked at the {broken} {N} and cried.",
    "{F} went home, and {H} sat alone with {his} {broken} {N}.",
    "The {N} could not be fixed, and it was never the same again.",
    "Neither of them got to play with it ever again.",
    "{H} wished {he} had shared, but now the {N} was {broken}.",
)

SHARING = Plot(
    "sharing",
    re.compile(r"\bshar(?:e|es)\b"),
    _body_sharing,
    (
        "{H} will not share {his} {adj} {N} with {F} at first, but then they take turns.",
        "{H} learns to share {his} {N} with {F} {at_P} after they pull it back and forth.",
    ),
    (
        "{H} and {F} will not share the {N}, and it {breaks} when they pull on it.",
        "{H} refuses to share {his} {adj} {N} with {F}, and in the end it {breaks}.",
    ),
    (
        (
            "{G} had a little sand timer in the kitchen that {H} liked to watch.",
            "Then {H} remembered {G}'s sand timer. They could use it to take turns!",
        ),
        (
            "{G} always said that two can play better than one.",
            "{H} remembered what {G} always said about two playing better than one.",
        ),
    ),
    (
        (
            "{G} said the {N} was old and had to be handled gently.",
            "{H} remembered that the {N} was old and had to be handled gently.",
        ),
        (
            "{H} noticed a small crack in the {N}, but {he} did not think about it.",
            "{H} remembered the small crack in the {N}.",
        ),
    ),
    forced=("Conflict",),
)

_FEARS = (
    ("the tall slide", "go down the tall slide", "slid all the way down with a big whoosh"),
    ("the deep water", "swim in the water", "paddled and kicked and floated in the water"),
    ("the big waves", "jump over the waves", "jumped over a wave and splashed"),
    ("the high swing", "go high on the swing", "swung up high, almost to the sky"),
    ("the dark tunnel", "crawl through the tunnel", "crawled all the way through the tunnel"),
    ("the big horse", "ride the horse", "sat on the horse and rode in a slow circle"),
    ("the tall tree", "climb the tree", "climbed up to the first branch"),
    ("the old bridge", "walk across the bridge", "walked across the bridge one step at a time"),
    ("the big dog", "pet the big dog", "patted the big dog on the head"),
    ("the steep hill", "roll down the hill", "rolled all the way down the hill"),
    ("the noisy geese", "walk past the geese", "walked right past the geese"),
    ("the spooky cave", "peek into the cave", "peeked into the cave and waved at the dark"),
    ("the wobbly rope bridge", "cross the rope bridge", "crossed the rope bridge step by step"),
    ("the buzzing bees", "pick a flower near the bees", "picked a flower, and the bees buzzed "
     "on by"),
    ("the cold river", "dip a toe in the river", "dipped a toe in the river and giggled"),
    ("the big rocky hill", "climb to the top of the hill", "climbed all the way to the top"),
    ("the jumping frogs", "catch a frog", "caught a little frog and let it go"),
    ("the loud goats", "feed the goats", "held out some hay, and the goats nibbled it"),
)


def _setup_fear(rng: Source, f: dict[str, str]) -> None:
    f["fear"], f["fear_do"], f["fear_did"] = rng.pick(_FEARS)


def _body_fear(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} went {to_P}.",
        "{day}, {G} took {H} and {F} {to_P} to play.",
    )
    t.scene()
    t.add(
        "{F} wanted to {fear_do}, and {H} wanted to as well.",
        "There was {sight} and there was {fear}. {F} ran to {fear_do}.",
    )
    t.add(
        "But {H} was afraid of {fear}. {He} held {his} {N} tight and did not move.",
        "But when {H} saw {fear}, {he} felt scared. {He} held on to {his} {N} and stayed back.",
    )
    t.say(
        "H",
        ("I am scared. What if something bad happens?", "{H} said {he} was scared."),
        ("I can't do it. It is too scary!", "{H} said {he} could not do it."),
    )
    t.para()
    t.say(
        "F",
        ("You can do it! I will be right here.", "{F} said {H} could do it and that {fhe} "
         "would stay close."),
        ("Let's do it together. Hold my hand.", "{F} said they could do it together."),
    )
    t.detail()
    t.conflict(
        "{F} wanted {H} to hurry up, but {H} wanted to wait.",
        "{F} said it was easy, but {H} said it was not easy at all.",
    )
    if t.bad:
        told = t.twist(
            "A loud clap of thunder boomed, and {H} ran for home so fast that {he} dropped "
            "the {N}.",
            "A little {critter} jumped out of a bush, and {H} ran off so fast that {he} "
            "dropped the {N}.",
        )
        if not told:
            t.add("{H} turned and ran away so fast that {he} dropped the {N}.")
        t.payoff()
        t.para()
        t.add("When {he} went back to look, the {N} was gone.")
        t.end(_FEAR_SAD, _FEAR_SAD)
    else:
        t.twist(
            "The big shadow that had scared {H} was only a little {critter} playing.",
            "{F} said that {fhe} had been scared too, the very first time.",
        )
        t.payoff()
        t.para()
        t.add(
            "{H} took a big breath. Then {he} {fear_did}!",
            "Slowly, {H} stepped forward. {He} {fear_did}!",
        )
        t.say(
            "H",
            ("I did it! I was brave!", "{H} shouted that {he} had been brave."),
            ("That was not scary at all!", "{H} said it was not scary at all."),
        )
        t.end(_FEAR_HAPPY, _FEAR_HAPPY)
    t.moral(
        ("being brave means trying even when you are scared", "a friend can help you be brave"),
        ("running away does not make fears go away", "it is okay to be scared sometimes"),
    )


_FEAR_HAPPY = (
    "{H} smiled a big smile and held up {his} {N}.",
    "{F} cheered, and they did it again and again.",
    "They laughed and played until it was time to go home.",
    "{H} felt very proud and happy.",
    "{G} clapped and gave {H} a happy hug.",
    "{H} could not stop smiling all the way home.",
)
_FEAR_SAD = (
    "{H} never did {fear_do}, and {he} felt very sad.",
    "The {N} was gone, and {H} cried all the way home.",
    "{H} was still scared of {fear}, and now {his} {N} was lost too.",
    "{H} sat down on the ground with tears on {his} face.",
    "{F} tried to help look, but the {N} was lost for good.",
    "That night, {H} felt sad and small.",
)

FEAR = Plot(
    "fear_overcome",
    re.compile(r"\b(?:afraid|scared)\b"),
    _body_fear,
    (
        "{H} is afraid to {fear_do} {at_P}, but {F} helps {him} be brave.",
        "{H} is scared of {fear} {at_P} until {F} shows {him} that {he} can be brave.",
    ),
    (
        "{H} is too scared to {fear_do} {at_P} with {F}, and when {he} runs away {he} loses "
        "{his} {N}.",
        "{H} is afraid of {fear} {at_P}, runs off while {F} watches, and loses {his} {N}.",
    ),
    (
        (
            "{G} had taught {H} a trick for scary things: count to three and take a big breath.",
            "{H} remembered {G}'s trick. {He} counted to three and took a big breath.",
        ),
        (
            "{G} once told {H} that brave people feel scared too.",
            "{H} remembered what {G} had told {him} about brave people.",
        ),
    ),
    (
        (
            "{G} told {H} to hold the {N} tight, because the ground was slippery there.",
            "{H} remembered too late what {G} had said about holding on tight.",
        ),
        (
            "{G} said it was better to leave the {N} at home that day.",
            "{H} remembered that {G} had said to leave the {N} at home.",
        ),
    ),
    places="outdoor",
    setup=_setup_fear,
)

_TROUBLES = (
    (
        "{F} had fallen and hurt {fhis} knee",
        "{H} helped {F} up, let {fhim} lean on {his} shoulder and gave {fhim} the {N} to hold",
        "{F} hurts {fhis} knee",
    ),
    (
        "{F} was sick in bed with a cold",
        "{H} brought the {N} to {F}'s bed so {fhe} would not be bored",
        "{F} is sick in bed",
    ),
    (
        "{F} was stuck in a big muddy puddle",
        "{H} held out a long stick and pulled {F} out of the mud",
        "{F} gets stuck in the mud",
    ),
    (
        "{F} could not find the way home",
        "{H} held {F}'s hand and walked with {fhim} all the way home",
        "{F} cannot find the way home",
    ),
    (
        "{F} was too small to reach the swing",
        "{H} lifted {F} up and gave {fhim} a gentle push",
        "{F} cannot reach the swing",
    ),
    (
        "{F}'s little tower kept falling down",
        "{H} helped {F} build it again, with big blocks at the bottom",
        "{F}'s tower keeps falling down",
    ),
    (
        "{F} had dropped a basket of apples all over the path",
        "{H} helped {F} pick up every single apple",
        "{F} drops a basket of apples",
    ),
    (
        "{F}'s kite was stuck high up in a tree",
        "{H} found a long branch and wiggled the kite free",
        "{F}'s kite gets stuck in a tree",
    ),
    (
        "{F} had spilled a big bag of marbles everywhere",
        "{H} crawled around and helped {F} find every single marble",
        "{F} spills a bag of marbles",
    ),
    (
        "{F}'s wagon had a wobbly wheel and would not roll",
        "{H} pushed the wheel back on and tied it tight with a string",
        "{F}'s wagon has a wobbly wheel",
    ),
    (
        "{F} was shivering in the cold wind",
        "{H} took off {his} scarf and wrapped it around {F}'s neck",
        "{F} is cold",
    ),
    (
        "{F} had nobody to play with and sat all alone",
        "{H} sat down next to {F} and asked {fhim} to {vp} together",
        "{F} is all alone",
    ),
)


def _setup_help(rng: Source, f: dict[str, str]) -> None:
    trouble, fix, short = rng.pick(_TROUBLES)
    f["trouble"] = trouble.format_map(f)
    f["Trouble"] = capitalized(f["trouble"])
    f["help_fix"] = fix.format_map(f)
    f["trouble_short"] = short.format_map(f)


def _body_help(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} was on {his} way {to_P} with {his} {N}.",
        "{day}, {H} was playing {at_P} with {his} {N}.",
    )
    t.scene()
    t.add(
        "Then {he} saw that {trouble}.",
        "Suddenly, {H} heard a little cry. {Trouble}.",
    )
    t.say(
        "F",
        ("Can you help me, please?", "{F} asked {H} for help."),
        ("Oh no, what can I do?", "{F} did not know what to do."),
    )
    t.say(
        "H",
        ("Don't worry, I will help you!", "{H} said {he} would help."),
        ("I am coming!", "{H} called that {he} was coming."),
    )
    t.para()
    t.detail()
    t.conflict(
        "{F} wanted to wait for {G}, but {H} wanted to help right away.",
        "{H} had an idea, but {F} said it would not work.",
    )
    if t.bad:
        told = t.twist(
            "The {N} slipped out of {H}'s hands and rolled away down a steep hill.",
            "A gust of wind blew the {N} into the river, and it floated away.",
        )
        if not told:
            t.add("In all the rush, {H} dropped the {N}, and it rolled away and was lost.")
        t.payoff()
        t.para()
        t.add("{H} tried and tried, but {he} could not help.", "It was too hard for {H} alone.")
        t.end(_HELP_SAD, _HELP_SAD)
    else:
        t.twist(
            "A kind old {critter} came along and helped too.",
            "{F}'s big cousin came by at just the right moment to lend a hand.",
        )
        t.payoff()
        t.para()
        t.add("So {help_fix}.", "{H} thought hard. Then {help_fix}.")
        t.say(
            "F",
            ("Thank you, {H}! You are a good friend.", "{F} thanked {H} and said {he} was a "
             "good friend."),
            ("You helped me so much!", "{F} said {H} had helped a lot."),
        )
        t.end(_HELP_HAPPY, _HELP_HAPPY)
    t.moral(
        ("helping others is the right thing to do", "a good friend always helps"),
        (
            "sometimes we cannot fix everything, even when we try",
            "it is wise to ask a grown-up for help",
        ),
    )


_HELP_HAPPY = (
    "{F} smiled, and {H} felt warm inside.",
    "Then they {vped} together, and they were both very happy.",
    "{H} was glad {he} could help {his} friend.",
    "{F} hugged {H} and said thank you again.",
    "{H} smiled all the way home.",
    "The two friends laughed and played until supper.",
)
_HELP_SAD = (
    "{F} was still sad, and {H} was sad too.",
    "{H} went home without {his} {N}, and {he} never saw it again.",
    "Nobody could find the {N} after that.",
    "{H} cried, because {he} had wanted to help so much.",
    "{H} walked home slowly, feeling sad.",
    "{H} never found out what happened to the {N}.",
)

HELPING = Plot(
    "helping_a_friend",
    re.compile(r"\b(?:help|helps)\b"),
    _body_help,
    (
        "{H} helps {F} when {trouble_short} {at_P}.",
        "When {trouble_short} {at_P}, {H} stops to help and they become even better friends.",
    ),
    (
        "{H} tries to help when {trouble_short} {at_P}, but it goes wrong and {his} {N} is lost.",
        "{H} cannot help when {trouble_short} {at_P}, and {his} {N} is lost in the rush.",
    ),
    (
        (
            "{G} always said that a good helper stays calm and thinks first.",
            "{H} remembered {G}'s words: a good helper stays calm. So {he} took a deep breath "
            "and made a plan.",
        ),
        (
            "{G} had taught {H} to ask a grown-up when a job is too big.",
            "{H} remembered what {G} had taught {him} and ran to get {G}, who came to help.",
        ),
    ),
    (
        (
            "{G} told {H} not to take the {N} outside that day.",
            "{H} remembered that {G} had said not to take the {N} outside.",
        ),
        (
            "{H} noticed that the {N} was a little loose and wobbly.",
            "{H} remembered that the {N} had been loose and wobbly.",
        ),
    ),
    places="outdoor",
    setup=_setup_help,
)

# (thing, verb, past, materials, how the object is used, where it can be made)
_CREATIONS = (
    ("sandcastle", "build", "built", "sand and water", "put {his} {adj} {N} on the top tower",
     ("the beach", "the island", "the lake")),
    ("snowman", "build", "built", "lots of snow", "gave the snowman {his} {adj} {N} to hold",
     ("the snowy hill", "the backyard", "the park")),
    ("card for {G}", "make", "made", "paper, glue and crayons", "drew {his} {adj} {N} on "
     "the front", ("the kitchen", "the living room", "the school")),
    ("cake", "bake", "baked", "flour, eggs and sugar", "set {his} {adj} {N} by the bowl to "
     "watch", ("the kitchen",)),
    ("fort", "build", "built", "blankets and pillows", "brought {his} {adj} {N} inside the "
     "fort", ("the living room", "the bedroom", "the backyard")),
    ("tall tower", "build", "built", "wooden blocks", "put {his} {adj} {N} on the very top",
     ("the bedroom", "the living room", "the school")),
    ("big picture", "paint", "painted", "paint and brushes", "painted {his} {adj} {N} right "
     "in the middle", ("the school", "the kitchen", "the backyard")),
    ("bird house", "build", "built", "wood and nails", "hung {his} {adj} {N} by the little "
     "door", ("the backyard", "the garden")),
    ("robot", "build", "built", "old boxes and tape", "used {his} {adj} {N} as the robot's "
     "hat", ("the attic", "the bedroom", "the living room")),
    ("necklace", "make", "made", "beads and string", "tied {his} {adj} {N} in the middle",
     ("the bedroom", "the kitchen", "the beach")),
    ("boat", "make", "made", "sticks and leaves", "put {his} {adj} {N} on the deck",
     ("the pond", "the river", "the lake")),
    ("puppet show", "put on", "put on", "socks and buttons", "gave {his} {adj} {N} a part "
     "in the show", ("the living room", "the school", "the treehouse")),
    ("leaf crown", "make", "made", "leaves and twigs", "tucked {his} {adj} {N} in the front",
     ("the forest", "the woods", "the park")),
    ("scarecrow", "build", "built", "straw, sticks and an old shirt", "gave the scarecrow "
     "{his} {adj} {N} to hold", ("the field", "the vegetable patch", "the farm")),
    ("mud pie", "make", "made", "mud, water and little stones", "stuck {his} {adj} {N} on "
     "top like a candle", ("the backyard", "the garden", "the swamp")),
    ("pillow castle", "build", "built", "every pillow in the house", "put {his} {adj} {N} "
     "on the highest tower", ("the living room", "the bedroom", "the playroom")),
    ("treasure map", "draw", "drew", "a big sheet of paper and some pens", "drew {his} "
     "{adj} {N} right where the treasure was", ("the treehouse", "the attic", "the cabin")),
    ("paper boat", "fold", "folded", "old newspaper", "tucked {his} {adj} {N} inside as a "
     "sailor", ("the pond", "the harbor", "the lake")),
)


def _setup_make(rng: Source, f: dict[str, str]) -> None:
    thing, verb, past, stuff, use, places = rng.pick(_CREATIONS)
    f["thing"] = thing.format_map(f)
    f["make"], f["made"], f["stuff"] = verb, past, stuff
    f["use"] = use.format_map(f)
    set_place(f, PLACES_BY_NAME[rng.pick(places)], rng)
    draw_wrecker(rng, f)


def _body_make(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} had a big idea. They wanted to {make} a {thing} {at_P}.",
        "{day}, {H} said they should {make} a {thing} {at_P}. {F} liked the idea.",
    )
    t.scene()
    t.say(
        "H",
        ("Let's {make} the best {thing} ever!", "{H} said they should {make} the best {thing} "
         "ever."),
        ("Will you help me {make} a {thing}?", "{H} asked {F} to help {him} {make} a {thing}."),
    )
    t.add("They got {stuff}.", "First they found {stuff}.")
    t.para()
    t.add(
        "They worked and worked. {H} {use}.",
        "They worked hard all morning. At the end, {H} {use}.",
    )
    t.detail()
    t.conflict(
        "{F} wanted the {thing} to be big, but {H} wanted it to be small.",
        "{H} wanted to do it one way, and {F} wanted to do it another way.",
    )
    t.say(
        "F",
        ("It looks so good!", "{F} said it looked very good."),
        ("Can we show {G}?", "{F} wanted to show {G}."),
    )
    t.para()
    if t.bad:
        if not t.twist("{Wrecker} {wrecked}."):
            t.add("Then {wrecker} {wrecked}.", "Just as they finished, {wrecker} {wrecked}.")
        t.payoff()
        t.add(
            "The {thing} was ruined, and the {N} was {broken}.",
            "The {thing} fell apart, and the {N} was {broken} too.",
        )
        t.end(_MAKE_SAD, _MAKE_SAD)
    else:
        t.payoff()
        t.add(
            "When it was done, {G} came to see the {thing}.",
            "When they finished, they showed the {thing} to {G}.",
        )
        t.say("G", ("What a wonderful {thing}!", "{G} said it was a wonderful {thing}."))
        t.twist(
            "{G} had been watching all along, and {ghe} brought {food} for both of them as a "
            "reward.",
            "A little bird flew down and sat right on top of the {thing}, as if it liked it "
            "too.",
        )
        t.end(_MAKE_HAPPY, _MAKE_HAPPY)
    t.moral(
        ("working together makes big jobs easy", "hard work is worth it"),
        ("we should keep our things in a safe place", "good work needs a safe place to stay"),
    )


_MAKE_HAPPY = (
    "{H} and {F} smiled at each other.",
    "They were so proud and happy.",
    "It was the most fun day ever.",
    "{H} gave {F} a high five, and they laughed.",
    "{G} took a picture of them, and they smiled their biggest smiles.",
    "They cheered and planned what to make next.",
)
_MAKE_SAD = (
    "{H} and {F} looked at the mess and felt very sad.",
    "All their hard work was gone.",
    "{H} cried, and the {thing} was never the same again.",
    "They could not fix it, and soon it was time to go home.",
    "{H} picked up what was left of the {N} and felt sad.",
    "The {thing} was gone, and the day was over.",
)

MAKING = Plot(
    "making_something",
    re.compile(r"\bmakes?\b"),
    _body_make,
    (
        "{H} and {F} make a {thing} {at_P}, and {H} adds {his} {adj} {N} to it.",
        "{H} and {F} work hard to make a {thing} out of {stuff}, and {G} loves it.",
    ),
    (
        "{H} and {F} make a {thing} {at_P}, but {wrecker} ruins it and the {N} is {broken}.",
        "{H} and {F} make a {thing}, but it is ruined before they can show {G}.",
    ),
    (
        (
            "That morning, {G} gave {H} a roll of strong tape and said to keep it for a "
            "special job.",
            "{H} remembered the tape from {G}. They used it to hold everything together.",
        ),
        (
            "{G} had shown {H} how to put the big pieces at the bottom.",
            "{H} remembered what {G} had shown {him} and put the big pieces at the bottom.",
        ),
    ),
    (
        (
            "{G} told {H} to watch out for {wrecker}.",
            "{H} remembered that {G} had told {him} to watch out for {wrecker}, but it was too "
            "late.",
        ),
        (
            "Earlier that day, {H} had seen {wrecker} running around.",
            "{H} remembered seeing {wrecker} running around that morning.",
        ),
    ),
    setup=_setup_make,
)


def _body_trip(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {G} took {H} and {F} on a trip {to_P}.",
        "{day}, {G} said they could all go {to_P}.",
        "{day}, everyone climbed into the car. They were going {to_P}!",
    )
    t.scene()
    t.say(
        "H",
        ("Can I bring my {N}?", "{H} asked if {he} could bring {his} {N}."),
        ("Hooray, we are going {to_P}!", "{H} shouted that they were going {to_P}."),
    )
    t.add(
        "{P_cap} was big and full of things to see.",
        "When they got there, {H} looked all around.",
    )
    t.add(
        "They saw {sight}, {sight2} and {sight3}.",
        "First they saw {sight}. Then they saw {sight2}.",
    )
    t.para()
    t.detail()
    t.conflict(
        "{H} wanted to see {sight} first, but {F} wanted to see {sight2}.",
        "{F} wanted to go home early, but {H} wanted to stay.",
    )
    t.add(
        "They ate {food} and drank some juice.",
        "At lunch, {G} gave them {food}.",
    )
    t.say("F", ("This is the best trip ever!", "{F} said it was the best trip ever."))
    if t.bad:
        told = t.twist(
            "{H} put the {N} down to look at {sight}, and when {he} turned back, it was gone.",
            "A big gust of wind came and blew the {N} far away.",
        )
        t.payoff()
        t.para()
        if not told:
            t.add(
                "When it was time to go, {H} could not find {his} {N} anywhere.",
                "On the way home, {H} saw that {his} {N} was not in {his} bag.",
            )
        t.end(_TRIP_SAD, _TRIP_SAD)
    else:
        t.twist(
            "A little {critter} came right up to them and ate a crumb from {H}'s hand.",
            "{G} had a secret: {ghe} had tickets for a ride around the whole place!",
        )
        t.payoff()
        t.para()
        t.add(
            "Before they went home, {H} and {F} got to {vp_it} one more time.",
            "In the afternoon, they found a nice spot to {vp}.",
        )
        t.end(_TRIP_HAPPY, _TRIP_HAPPY)
    t.moral(
        ("new places can teach us many things", "days out are best with family and friends"),
        (
            "we should not take our special things everywhere",
            "we must watch our things when we are out",
        ),
    )


_TRIP_HAPPY = (
    "It was a happy day for everyone.",
    "On the way home, {H} and {F} smiled and fell asleep in the car.",
    "{H} laughed and said it was the best day ever.",
    "They were tired but very happy.",
    "{G} smiled and said they could come back soon.",
    "{H} hugged {F} and said it was so much fun.",
)
_TRIP_SAD = (
    "They looked everywhere, but the {N} was gone.",
    "{H} cried all the way home.",
    "The trip was over, and {H} was very sad.",
    "{H} never saw {his} {adj} {N} again.",
    "{H} was sad for the rest of the day.",
    "Nobody ever found the {N}.",
)

TRIP = Plot(
    "a_trip",
    re.compile(r"\b(?:visit|visits)\b"),
    _body_trip,
    (
        "{H} and {F} visit {P} with {G} and have a wonderful day.",
        "{G} takes {H} and {F} to visit {P}, where they see {sight} and {vp} together.",
    ),
    (
        "{H} and {F} visit {P} with {G}, but {H}'s {N} is lost there.",
        "{G} takes {H} and {F} to visit {P}, and the trip ends badly when the {N} goes missing.",
    ),
    (
        (
            "{G} packed a big umbrella, just in case.",
            "Later, big drops of rain began to fall. {H} remembered the umbrella, and they all "
            "sat under it.",
        ),
        (
            "{G} put a map in {ghis} pocket before they left.",
            "When they could not find the way back, {H} remembered the map in {G}'s pocket.",
        ),
    ),
    (
        (
            "{G} told {H} to leave the {N} at home, but {H} brought it anyway.",
            "{H} remembered that {G} had told {him} to leave the {N} at home.",
        ),
        (
            "{H}'s bag had a little hole in the bottom, but nobody fixed it.",
            "{H} remembered the little hole in the bottom of {his} bag.",
        ),
    ),
    places="out",
)


def _setup_mix(rng: Source, f: dict[str, str]) -> None:
    f["hide"] = rng.pick(lex.HIDING_INDOORS)


def _body_mix(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} could not find {his} {N}.",
        "{day}, {H} looked for {his} {adj} {N}, but it was not in its usual place.",
    )
    t.scene()
    t.add(
        "Later, {he} went {to_P} and saw {F} holding {a_N} just like it.",
        "Then {H} saw {F} {at_P}. {F} had {a_obj} in {fhis} hands!",
    )
    t.add("{H} thought that {F} had taken {his} {N}.", "{H} was sure {F} had taken it.")
    t.say(
        "H",
        ("Give it back! That is my {N}!", "{H} told {F} to give back {his} {N}."),
        ("Why did you take my {N}?", "{H} asked {F} why {fhe} took the {N}."),
    )
    t.say(
        "F",
        ("But this is mine!", "{F} said that it was {fhis} own."),
        ("I did not take it!", "{F} said {fhe} did not take it."),
    )
    t.para()
    t.detail()
    t.conflict(
        "{H} said it was {his}, and {F} said it was {fhis}.",
        "{H} would not listen, and {F} felt hurt.",
    )
    t.add("{F} went home, and {H} went home too.")
    if t.bad:
        t.twist(
            "{F} had got that {N} for {fhis} birthday, and now {fhe} did not want to see {H} "
            "at all.",
            "{G} said that {F}'s family was moving to a new town the next day.",
        )
        t.payoff()
        t.para()
        t.add(
            "The next day, {H} found {his} {N} {hide}. It had been there all along.",
            "Later, {H} found {his} own {N} {hide}. {F} had not taken it after all.",
        )
        t.end(_MIX_SAD, _MIX_SAD)
    else:
        t.payoff()
        t.para()
        told = t.twist(
            "When {H} got home, {G} was holding {his} {N}! {Ghe} had found it {hide}.",
            "When {H} looked {hide}, a little mouse was asleep on top of {his} {N}!",
        )
        if told:
            t.add("So the {N} had been {hide} all along!")
        else:
            t.add(
                "Then {H} found {his} {N} {hide}. It had been there all along!",
                "At home, {H} looked {hide}, and there was {his} {N}!",
            )
        t.add("{H} ran to {F}'s house.")
        t.say(
            "H",
            ("I am sorry. I was wrong.", "{H} said sorry and told {F} {he} had been wrong."),
            ("Sorry, {F}. Can we still be friends?", "{H} said sorry and asked if they could "
             "still be friends."),
        )
        t.end(_MIX_HAPPY, _MIX_HAPPY)
    t.moral(
        ("we should not blame others before we know what happened", "saying sorry matters"),
        ("blaming others can hurt a friendship", "we should ask before we blame"),
    )


_MIX_HAPPY = (
    "{F} smiled and said it was okay.",
    "They {vped} together, and they were happy again.",
    "{H} and {F} laughed about the mix-up.",
    "From then on, they were best friends again, and {H} was glad.",
    "{F} hugged {H}, and they were glad to be friends again.",
    "They laughed and laughed about the two {adj} things.",
)
_MIX_SAD = (
    "But {F} would not play with {H} anymore, and {H} felt sad and alone.",
    "{H} said sorry, but it was too late. {F} never came to play again.",
    "{H} sat by the window and cried.",
    "Their friendship was broken, and {H} was very sad.",
    "{H} missed {F} very much, but {F} never came back.",
    "{H} knew now how much a friend is worth, and felt sad.",
)

MIXUP = Plot(
    "misunderstanding",
    re.compile(r"\bthinks?\b"),
    _body_mix,
    (
        "{H} thinks {F} took {his} {adj} {N}, but it was {hide} all along, and they make up.",
        "{H} thinks {F} has taken {his} {N}, until {he} finds it {hide} and says sorry.",
    ),
    (
        "{H} thinks {F} took {his} {N}, and after their quarrel {F} does not want to play anymore.",
        "{H} wrongly thinks {F} took {his} {N}, and the two friends stop playing together.",
    ),
    (
        (
            "The night before, {H} had played with the {N} {hide}, right before bed.",
            "Then {H} remembered playing with the {N} {hide} the night before!",
        ),
        (
            "{H} liked to tuck the {N} in safe places before bedtime.",
            "{H} remembered that {he} liked to tuck the {N} in safe places.",
        ),
    ),
    (
        (
            "{G} always said it is better to ask than to blame.",
            "{H} remembered what {G} always said about asking, but it was too late.",
        ),
        (
            "{H} had seen {a_N} just like {his} in the toy shop window.",
            "{H} remembered the {N} in the toy shop window. There were many like it!",
        ),
    ),
    setup=_setup_mix,
    forced=("Conflict",),
)


def _body_race(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} were {at_P}.",
        "{day}, {H} and {F} went {to_P} to play.",
    )
    t.scene()
    t.say(
        "F",
        ("Let's have a race to {sight}!", "{F} said they should have a race to {sight}."),
        ("I bet I can run faster than you!", "{F} said {fhe} could run faster."),
    )
    t.add(
        "The winner would get to {vp} first.",
        "{H} held {his} {N} and got ready to run.",
    )
    t.add("Ready, set, go! They ran as fast as they could.", "On the count of three, they ran.")
    t.para()
    t.detail()
    t.conflict(
        "{F} started before the count of three, and {H} said that was cheating.",
        "{H} said {F} had started too early, but {F} said {fhe} had not.",
    )
    if t.bad:
        if not t.twist("{H} tripped over a big root, and the {N} flew out of {his} hands."):
            t.add(
                "Halfway there, {H} tripped over a big root, and the {N} flew out of {his} "
                "hands."
            )
        t.payoff()
        t.para()
        t.add(
            "The {N} landed hard on a rock and {broke}.",
            "The {N} hit the ground hard and {broke} into pieces.",
        )
        t.end(_RACE_SAD, _RACE_SAD)
    else:
        t.twist(
            "A little {critter} zoomed right past them both and got there first!",
            "{G} was waiting at the finish with a prize for each of them.",
        )
        t.payoff()
        t.para()
        t.add(
            "Halfway there, {F} tripped and fell down.",
            "Near the end, {F} slipped on the grass and fell.",
        )
        t.add("{H} stopped running and went back to help {fhim} up.")
        t.say(
            "F",
            ("You stopped for me!", "{F} could not believe that {H} had stopped."),
            ("Thank you, {H}.", "{F} thanked {H}."),
        )
        t.add("They walked to the finish together, hand in hand.")
        t.end(_RACE_HAPPY, _RACE_HAPPY)
    t.moral(
        ("being kind is more important than winning", "friends matter more than prizes"),
        ("we should watch where we are going", "rushing can make us careless"),
    )


_RACE_HAPPY = (
    "They both laughed, because they were both winners.",
    "Then they took turns to {vp}, and it was so much fun.",
    "{H} smiled, and {F} smiled back.",
    "It was a happy day for both of them.",
    "{G} cheered for both of them.",
    "They were tired and happy, and they lay in the grass and laughed.",
)
_RACE_SAD = (
    "{H} sat down and cried.",
    "Nobody won the race, and the {N} was {broken}.",
    "{H} and {F} walked home slowly, and they both felt sad.",
    "{H} never raced with the {N} again.",
    "The race was over, and the {N} could never be fixed.",
    "{H} sat by the path and cried.",
)

RACE = Plot(
    "race",
    re.compile(r"\braces?\b"),
    _body_race,
    (
        "{H} and {F} race to {sight} {at_P}, and when {F} falls, {H} stops to help.",
        "{H} and {F} have a race {at_P} and find out that being kind matters more than winning.",
    ),
    (
        "{H} and {F} race {at_P}, but {H} trips and {his} {N} is {broken}.",
        "{H} and {F} race to {sight}, and the race ends with the {N} {broken}.",
    ),
    (
        (
            "{H} saw a big root sticking out of the path that morning.",
            "{H} remembered the big root and jumped over it just in time.",
        ),
        (
            "{G} had told {H} that the grass was slippery after the rain.",
            "{H} remembered that the grass was slippery, so {he} ran carefully.",
        ),
    ),
    (
        (
            "{H} saw a big root sticking out of the path that morning.",
            "{H} remembered the root {he} had seen that morning, but it was too late.",
        ),
        (
            "{G} told {H} not to run with the {N} in {his} hands.",
            "{H} remembered that {G} had told {him} not to run with the {N} in {his} hands.",
        ),
    ),
    places="outdoor",
)


def _body_broken(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} were playing {at_P}. {H} wanted to {vp}.",
        "{day}, {H} showed {his} {N} to {F} {at_P}.",
    )
    t.scene()
    t.add(
        "But the {N} slipped and fell on the hard floor. It {broke}!",
        "{F} stepped back and landed right on the {N}. It {broke}!",
        "{H} held it up high, but it slipped out of {his} hands. The {N} {broke}!",
    )
    t.say(
        "H",
        ("Oh no! My {N} is {broken}!", "{H} saw that {his} {N} was {broken}."),
        ("My {adj} {N}! What do I do now?", "{H} did not know what to do."),
    )
    t.para()
    t.detail()
    t.conflict(
        "{H} said it was {F}'s fault, and {F} said it was not.",
        "{F} said {H} should have held it better, and {H} felt cross.",
    )
    t.say(
        "F",
        ("Let's ask {G}. {Ghe} can fix things.", "{F} said {G} might be able to fix it."),
        ("Maybe we can fix it.", "{F} thought they might be able to fix it."),
    )
    t.add("They took the pieces to {G}.", "They picked up all the pieces and went to {G}.")
    if t.bad:
        t.twist(
            "As {G} put in the last piece, the {N} slipped and {broke} again into even more "
            "pieces.",
            "One of the pieces was missing, and nobody could find it.",
        )
        t.payoff()
        t.para()
        t.say("G", ("I am sorry. I cannot fix it.", "{G} said sorry, but {ghe} could not fix it."))
        t.end(_BROKEN_SAD, _BROKEN_SAD)
    else:
        t.twist(
            "{F} had a secret. {Fhe} knew how to fix things, because {fhis} grandpa had "
            "taught {fhim}!",
            "Inside the {N}, {G} found a tiny note that said it was made by {ghis} own dad "
            "long ago.",
        )
        t.payoff()
        t.para()
        t.add(
            "{G} got out {fixer}. They worked slowly and carefully.",
            "With {fixer}, {G} and the children fixed the {N} piece by piece.",
        )
        t.add("Soon the {N} was as good as new.", "At last, the {N} was whole again.")
        t.end(_BROKEN_HAPPY, _BROKEN_HAPPY)
    t.moral(
        ("most things can be fixed with patience", "we should be gentle with our things"),
        ("some things cannot be fixed, so we must be careful with them",),
    )


_BROKEN_HAPPY = (
    "{H} hugged {G} and smiled.",
    "{H} and {F} were so happy that they danced around the room.",
    "They {vped} together, and {H} was very glad.",
    "{H} laughed and said thank you.",
    "{F} cheered, and {H} gave {G} a big hug.",
    "{H} was so happy that {he} promised to be careful from then on.",
)
_BROKEN_SAD = (
    "The {N} stayed {broken}, and {H} was very sad.",
    "{H} put the pieces in a box and cried.",
    "{H} never got to {vp} again.",
    "It was broken forever, and nothing could make it whole.",
    "{H} was sad for a long time.",
    "{F} said sorry, but the {N} was still {broken}.",
)

BROKEN = Plot(
    "broken_thing_fixed",
    re.compile(r"\b(?:break|breaks|tear|tears)\b"),
    _body_broken,
    (
        "{H}'s {adj} {N} {breaks} while {he} plays with {F}, and {G} helps them fix it.",
        "When {H}'s {N} {breaks} {at_P}, {F} and {G} help {him} fix it piece by piece.",
    ),
    (
        "{H}'s {N} {breaks} while {he} plays with {F} {at_P}, and nobody can fix it.",
        "{H} and {F} {break} the {adj} {N} {at_P}, and it can never be fixed.",
    ),
    (
        (
            "{H} knew that {G} kept {fixer} in the kitchen drawer.",
            "Then {H} remembered {fixer} in the kitchen drawer.",
        ),
        (
            "{G} could fix almost anything, from shoes to chairs.",
            "{H} remembered that {G} could fix almost anything.",
        ),
    ),
    (
        (
            "{G} told {H} to be gentle with the {N}, because it could {break} easily.",
            "{H} remembered that {G} had told {him} to be gentle.",
        ),
        (
            "The {N} was very old, and it had already {broke} once before.",
            "{H} remembered that the {N} had already {broke} once before.",
        ),
    ),
)


def _setup_surprise(rng: Source, f: dict[str, str]) -> None:
    draw_wrecker(rng, f)


def _body_surprise(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} had a secret. It was {G}'s birthday!",
        "{day}, {H} and {F} wanted to do something special for {G}.",
    )
    t.scene()
    t.say(
        "H",
        ("Let's make a surprise for {G}!", "{H} said they should make a surprise for {G}."),
        ("Shh! It is a secret.", "{H} whispered that it was a secret."),
    )
    t.add(
        "They made {food} and drew a big picture.",
        "They got some {food} and made a card with a heart on it.",
    )
    t.add(
        "{H} wrapped {his} {adj} {N} as a present, because it was the best thing {he} had.",
        "{H} decided to give {G} {his} {adj} {N}, because it was {his} favorite.",
    )
    t.para()
    t.detail()
    t.conflict(
        "{F} wanted to hide behind the door, but {H} wanted to hide behind the couch.",
        "{H} wanted to give the present first, but {F} wanted to sing first.",
    )
    if t.bad:
        if not t.twist("{Wrecker} had sneaked into the house while they were busy."):
            t.add("Then {wrecker} got into the house.")
        t.payoff()
        t.para()
        t.add("It {wrecked}. {Food} went all over the floor, and the {N} was {broken}.")
        t.end(_SURPRISE_SAD, _SURPRISE_SAD)
    else:
        t.payoff()
        t.para()
        t.add("When {G} came in, they jumped out.", "At last, {G} walked in the door.")
        t.say("H", ("Surprise! Happy birthday!", "{H} and {F} shouted happy birthday."))
        t.twist(
            "{G} had planned a surprise for them too! {Ghe} had {food2} waiting for them.",
            "{G} had known about the surprise all along, and {ghe} had a present for them too.",
        )
        t.end(_SURPRISE_HAPPY, _SURPRISE_HAPPY)
    t.moral(
        ("giving makes people feel good", "a gift from the heart is the best gift"),
        ("surprises need careful planning", "plans can go wrong when we are not careful"),
    )


_SURPRISE_HAPPY = (
    "{G} hugged them both and smiled a big smile.",
    "{G} loved the {N} and the {food}, and everyone was happy.",
    "They ate {food} together and laughed all evening.",
    "It was the best birthday {G} ever had, and {ghe} was so glad.",
    "{G} said it was the happiest day of the year.",
    "They all sang and laughed until bedtime.",
)
_SURPRISE_SAD = (
    "The surprise was ruined, and {H} felt very sad.",
    "{H} and {F} cried, because all their work was gone.",
    "There was nothing left to give {G}.",
    "The {N} could never be fixed.",
    "{G} came home to a mess, and everyone was sad.",
    "The present was {broken}, and there was no time to make another.",
)

SURPRISE = Plot(
    "surprise_for_someone",
    re.compile(r"\bsurprise\b"),
    _body_surprise,
    (
        "{H} and {F} plan a surprise for {G}'s birthday, and {H} gives {his} {adj} {N} as a "
        "present.",
        "{H} and {F} plan a surprise for {G}, and it makes {G} very happy.",
    ),
    (
        "{H} and {F} plan a surprise for {G}, but {wrecker} ruins it before {G} comes home.",
        "{H} and {F} prepare a surprise for {G}'s birthday, but the {N} gets {broken}.",
    ),
    (
        (
            "{G} once said that there was no treat better than {food}.",
            "{H} remembered that there was no treat better than {food} for {G}, so they made "
            "extra.",
        ),
        (
            "{H} had seen {G} looking at the {N} with a smile many times.",
            "{H} remembered {G} looking at the {N} with a smile.",
        ),
    ),
    (
        (
            "{H} saw {wrecker} sniffing around outside the window.",
            "{H} remembered seeing {wrecker} outside the window, but it was too late.",
        ),
        (
            "{G} told {H} to close the back door, but {he} forgot.",
            "{H} remembered the back door. {He} had left it open!",
        ),
    ),
    places="home",
    setup=_setup_surprise,
)


def _body_new_friend(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} went {to_P} alone.",
        "{day}, {H} was playing by {himself} {at_P}.",
    )
    t.scene()
    t.add(
        "There {he} saw {a_ftrait} {fkind} {H} had never met before. The {fkind} was named {F}.",
        "{He} saw a new {fkind} sitting near {sight}. The {fkind}'s name was {F}.",
    )
    t.add(
        "{H} felt shy. {He} held {his} {N} and did not know what to say.",
        "{H} wanted to say hello, but {he} felt a little shy.",
    )
    t.say(
        "H",
        ("Hello, I am {H}. Do you want to play?", "At last, {H} said hello and asked if {F} "
         "wanted to play."),
        ("Hi! Do you like my {N}?", "{H} showed {F} {his} {N}."),
    )
    t.say(
        "F",
        ("Yes! My name is {F}, and I am new here.", "{F} said yes, and that {fhe} was new "
         "there."),
    )
    t.para()
    t.add(
        "They took turns to {vp}.",
        "Together they {vped} and looked at {sight2}.",
    )
    t.add(
        "Then they played {game}, and {H} forgot all about feeling shy.",
        "After that, {F} taught {H} how to play {game}.",
        "They played {game} until their cheeks were pink.",
    )
    t.detail()
    t.conflict(
        "{F} wanted to play a different game, and {H} did not like that.",
        "{H} wanted to be the leader, but {F} wanted to be the leader too.",
    )
    if t.bad:
        t.twist(
            "{F}'s family was only visiting for one day.",
            "{F}'s family had to leave that very evening.",
        )
        t.payoff()
        t.para()
        t.add(
            "The next day, {F} was gone, and {H} never saw {fhim} again.",
            "{F} went away before they could say goodbye, and {fhe} never came back.",
        )
        t.end(_NEWFRIEND_SAD, _NEWFRIEND_SAD)
    else:
        t.twist(
            "{F} lived in the house right next door to {H}!",
            "{F} had the very same birthday as {H}!",
        )
        t.payoff()
        t.para()
        t.say(
            "F",
            ("Can we play again tomorrow?", "{F} asked if they could play again the next day."),
            ("You are my new best friend!", "{F} said {H} was {fhis} new best friend."),
        )
        t.end(_NEWFRIEND_HAPPY, _NEWFRIEND_HAPPY)
    t.moral(
        ("saying hello can make a new friend", "it is good to be kind to someone new"),
        ("goodbyes can come too soon", "we should say goodbye while we can"),
    )


_NEWFRIEND_HAPPY = (
    "{H} smiled from ear to ear.",
    "From that day on, {H} and {F} were best friends, and they were very happy.",
    "They played every day after that and had so much fun.",
    "{H} was glad {he} had said hello.",
    "{G} smiled to see {H} with a new friend.",
    "{H} skipped all the way home, happy and proud.",
)
_NEWFRIEND_SAD = (
    "{H} sat alone with {his} {N} and felt sad.",
    "{H} cried, because {he} missed {fhim}.",
    "The place felt empty without {F}.",
    "{H} never had a chance to say goodbye.",
    "{H} waited {at_P} every day, but {F} never came.",
    "{H} felt lonely and sad.",
)

NEW_FRIEND = Plot(
    "new_friend",
    re.compile(r"\bmeets?\b"),
    _body_new_friend,
    (
        "{H} meets {F} {at_P}, and they become friends while they {vp} together.",
        "Shy {H} meets a new {fkind} named {F} {at_P}, and they become best friends.",
    ),
    (
        "{H} meets {F} {at_P}, but {F} has to move away the next day.",
        "{H} meets a new friend named {F} {at_P}, but {F} goes away and never comes back.",
    ),
    (
        (
            "That morning, {G} packed extra {food} in {H}'s bag, just in case.",
            "{H} remembered the extra {food} in {his} bag and shared some with {F}.",
        ),
        (
            "{G} told {H} that the best way to make a friend is to say hello.",
            "{H} remembered what {G} had said about saying hello.",
        ),
    ),
    (
        (
            "{H} saw a big moving truck parked down the street.",
            "{H} remembered the big moving truck down the street.",
        ),
        (
            "{H} saw a lot of boxes and suitcases near the gate that morning.",
            "{H} remembered all the boxes and suitcases near the gate.",
        ),
    ),
    places="out",
    intro_friend=False,
)

# (word for summaries, how it arrives)
_WEATHER = (
    ("storm", "Dark clouds rolled in, and the thunder went boom!"),
    ("wind", "A strong wind began to blow, and the trees bent and shook."),
    ("rainstorm", "Big drops of rain began to fall, faster and faster."),
    ("snowstorm", "Snow began to fall, and soon the wind blew it everywhere."),
    ("hailstorm", "Little balls of ice began to fall from the sky and bounce on the ground."),
    ("thunderstorm", "The sky turned dark gray, and lightning flashed far away."),
    ("windstorm", "The wind howled and tugged at their clothes and hair."),
)


def _setup_weather(rng: Source, f: dict[str, str]) -> None:
    f["wx"], f["wx_arrives"] = rng.pick(_WEATHER)


def _body_weather(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} were playing {at_P}.",
        "{day}, {H} took {his} {N} {to_P}, and {F} came too.",
    )
    t.scene()
    t.add("They liked to {vp} there.", "They were having a good time.")
    t.add("{wx_arrives}")
    t.say(
        "F",
        ("We need to go inside!", "{F} said they needed to go inside."),
        ("What is happening?", "{F} asked what was happening."),
    )
    t.para()
    t.add(
        "They ran as fast as they could, but {H} dropped {his} {N} on the way.",
        "They ran for cover, and the {N} was left behind.",
        "They hurried to hide under a roof, and in the rush the {N} fell in the grass.",
    )
    t.add(
        "{H} wanted to go back for it, but the {wx} was too strong.",
        "They waited and waited for the {wx} to stop.",
        "{G} wrapped them in a blanket while the {wx} roared outside.",
    )
    t.detail()
    t.conflict(
        "{H} wanted to go back for the {N}, but {F} said it was not safe.",
        "{F} said it was {H}'s fault for bringing the {N}, and {H} said it was not.",
    )
    if t.bad:
        t.twist(
            "The wind picked up the {N} and carried it up over the roofs and far away.",
            "The rain turned the path into a little river, and it carried the {N} away.",
        )
        t.payoff()
        t.para()
        t.add("When the {wx} was over, they went back to look, but the {N} was gone.")
        t.end(_WEATHER_SAD, _WEATHER_SAD)
    else:
        t.payoff()
        t.para()
        told = t.twist(
            "When the {wx} was over, they saw that the wind had blown the {N} right to the "
            "door of {G}'s house.",
            "When the {wx} was over, a big rainbow came out, and the {N} was sitting right "
            "under it.",
        )
        if not told:
            t.add(
                "When the {wx} was over, the sun came out, and they found the {N} safe and "
                "dry under a bush.",
                "After the {wx}, they went outside and found the {N}. It was wet, but it was "
                "fine.",
            )
        t.end(_WEATHER_HAPPY, _WEATHER_HAPPY)
    t.moral(
        ("it is wise to stay safe when the weather turns bad", "the sun always comes back"),
        ("we should go inside before a storm comes", "we should listen when grown-ups warn us"),
    )


_WEATHER_HAPPY = (
    "{H} hugged the {N} and smiled.",
    "They jumped in the puddles and laughed.",
    "{H} and {F} were very happy, and they played until dinner.",
    "Everyone was safe, and {H} was glad.",
    "{G} made them warm cocoa, and they smiled.",
    "{H} laughed and said the {wx} had been an adventure.",
)
_WEATHER_SAD = (
    "{H} looked everywhere, but {he} never saw it again.",
    "{H} sat by the window and cried.",
    "The {N} was gone, and {H} felt very sad.",
    "The {wx} had taken the {adj} {N} forever.",
    "{H} cried, and {F} was sad too.",
    "{H} never got the {N} back.",
)

WEATHER = Plot(
    "weather_trouble",
    re.compile(r"\b(?:storm|wind|rainstorm|snowstorm|hailstorm|thunderstorm|windstorm)\b"),
    _body_weather,
    (
        "A sudden {wx} surprises {H} and {F} {at_P}, but after it passes they find the {N} "
        "safe.",
        "{H} and {F} run from a {wx} {at_P} and leave the {N} behind, but they find it later.",
    ),
    (
        "A sudden {wx} catches {H} and {F} {at_P}, and {H}'s {N} is lost for good.",
        "{H} and {F} run from a {wx} {at_P}, and the {N} is never seen again.",
    ),
    (
        (
            "{H} saw some dark clouds far away, but they looked small.",
            "{H} remembered the dark clouds and knew they had to hurry.",
        ),
        (
            "{G} said the radio had warned of bad weather later that day.",
            "{H} remembered what the radio had said, so they ran straight home.",
        ),
    ),
    (
        (
            "{H} saw some dark clouds far away, but {he} did not think about them.",
            "{H} remembered the dark clouds from that morning. They should have gone home sooner.",
        ),
        (
            "{G} told {H} to come home if the sky turned gray.",
            "{H} remembered what {G} had said about the gray sky.",
        ),
    ),
    places="outdoor",
    setup=_setup_weather,
)

_SEEDS = (
    ("sunflower", "a sunflower taller than the fence", "a giant pumpkin"),
    ("pumpkin", "a big orange pumpkin", "a funny, bumpy squash"),
    ("bean", "a bean plant that climbed up high", "a tall tomato plant"),
    ("tomato", "a plant full of red tomatoes", "a strawberry plant full of berries"),
    ("carrot", "a long orange carrot", "a fat purple beet"),
    ("daisy", "a field of white daisies", "a bush of pink roses"),
    ("apple", "a little apple tree", "a cherry tree with red cherries"),
    ("pea", "a plant full of green peas", "a vine with tiny cucumbers"),
    ("melon", "a big round melon", "a patch of striped zucchini"),
    ("tulip", "a bright red tulip", "a row of purple lilies"),
    ("lemon", "a little lemon tree", "an orange tree with shiny oranges"),
    ("corn", "a tall stalk of corn", "a giant sunflower"),
)


def _setup_garden(rng: Source, f: dict[str, str]) -> None:
    f["seed"], f["grown"], f["other"] = rng.pick(_SEEDS)
    f["a_seed"] = f"{a_or_an(f['seed'])} {f['seed']}"


def _body_garden(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {G} gave {H} a tiny {seed} seed.",
        "{day}, {H} and {F} found a little {seed} seed.",
    )
    t.scene()
    t.say(
        "H",
        ("Let's plant it {at_P}!", "{H} said they should plant it {at_P}."),
        ("What will it grow into?", "{H} wondered what it would grow into."),
    )
    t.add(
        "They dug a little hole and put the seed inside. {H} marked the spot with {his} {adj} "
        "{N}.",
        "{H} and {F} planted the seed {at_P}, and {H} put {his} {adj} {N} next to it so they "
        "would not forget the spot.",
    )
    t.para()
    t.add(
        "Every day, they came to look. At first, nothing happened.",
        "They waited and waited. Days went by, and nothing came up.",
    )
    t.detail()
    t.conflict(
        "{F} wanted to dig it up to see, but {H} said they had to wait.",
        "{H} wanted to give it lots of water, but {F} said a little was better.",
    )
    t.say("F", ("Is it ever going to grow?", "{F} asked if it would ever grow."))
    t.payoff()
    t.para()
    if t.bad:
        t.twist(
            "A hungry rabbit hopped in and ate the little green shoot in one bite.",
            "A big dog dug up the whole spot and ran off with the {N}.",
        )
        t.add(
            "The little plant was gone, and it never grew back.",
            "Nothing ever grew in that spot again.",
        )
        t.end(_GARDEN_SAD, _GARDEN_SAD)
    else:
        t.add("Then one morning, a little green shoot came up.")
        if not t.twist("It was not {a_seed} plant at all! It grew into {other}!"):
            t.add("Soon it grew into {grown}!", "Day by day it grew, until it was {grown}.")
        t.end(_GARDEN_HAPPY, _GARDEN_HAPPY)
    t.moral(
        ("good things take time", "patience helps things grow"),
        ("not everything we plant will grow", "small plants need to be kept safe"),
    )


_GARDEN_HAPPY = (
    "{H} and {F} cheered and danced around it.",
    "{G} smiled and said they were very good gardeners.",
    "They were so happy, and they took good care of it every day.",
    "{H} was glad they had waited.",
    "{H} and {F} smiled every time they saw it.",
    "They were glad and proud of their plant.",
)
_GARDEN_SAD = (
    "{H} and {F} were very sad.",
    "{H} cried and went inside.",
    "All their waiting had been for nothing.",
    "The spot stayed bare, and the seed was lost forever.",
    "{H} cried when {he} saw the empty spot.",
    "{F} was sad too, and they never planted there again.",
)

GARDEN = Plot(
    "growing_a_garden",
    re.compile(r"\bplants?\b"),
    _body_garden,
    (
        "{H} and {F} plant {a_seed} seed {at_P}, and after a long wait it grows into {grown}.",
        "{H} and {F} plant a tiny seed and mark it with {H}'s {N}, and it grows big.",
    ),
    (
        "{H} and {F} plant {a_seed} seed {at_P}, but it never grows.",
        "{H} and {F} plant a seed and wait, but their little plant is lost.",
    ),
    (
        (
            "{G} said that plants need water and sun to grow.",
            "{H} remembered that plants need water and sun, so they watered it every day.",
        ),
        (
            "{G} told {H} that the best things take a long time.",
            "{H} remembered that the best things take a long time, so they kept waiting.",
        ),
    ),
    (
        (
            "{G} said that the rabbits around there were very hungry.",
            "{H} remembered what {G} had said about the hungry rabbits.",
        ),
        (
            "{G} told {H} to put a fence around the seed, but {he} did not.",
            "{H} remembered the fence {he} never built.",
        ),
    ),
    places="garden",
    setup=_setup_garden,
)


def _body_care(t: Teller) -> None:
    t.para()
    t.add(
        "{day}, {H} and {F} were walking {at_P}.",
        "{day}, {H} went {to_P} with {F} and {his} {N}.",
    )
    t.scene()
    t.add(
        "They heard a tiny sound near {sight}. It was a little {critter}, and it was hurt.",
        "Near {sight}, they found a little {critter} with a hurt leg.",
    )
    t.say(
        "F",
        ("Poor thing! We have to help it.", "{F} said they had to help it."),
        ("Look, it is hurt!", "{F} pointed and said it was hurt."),
    )
    t.para()
    t.add(
        "They made a soft bed for it in a box, and {H} put {his} {N} next to it.",
        "{H} carried it home gently, and they gave it water and some {food}.",
    )
    t.detail()
    t.conflict(
        "{H} wanted to keep the {critter} forever, but {F} said it should go back home.",
        "{F} wanted to hold it, but {H} said it needed rest.",
    )
    t.add("Every day they looked after it.", "They took care of it for many days.")
    t.payoff()
    t.para()
    if t.bad:
        if not t.twist("A big cat came and scared the {critter}, and it ran off into the night."):
            t.add(
                "The {critter} ran away before it was well, and it never came back.",
                "One morning, the box was empty. The {critter} was gone.",
            )
        t.end(_CARE_SAD, _CARE_SAD)
    else:
        t.add(
            "Soon the {critter} was strong again, and they let it go {at_P}.",
            "At last the {critter} was well, and it ran back home.",
        )
        t.twist(
            "The {critter} came back the next day with its whole family!",
            "The next morning, the {critter} was sitting on the window sill, as if to say "
            "thank you.",
        )
        t.end(_CARE_HAPPY, _CARE_HAPPY)
    t.moral(
        ("we should be kind to animals", "small acts of care can save a life"),
        ("wild animals are not ours to keep", "some animals need more help than we can give"),
    )
_CARE_HAPPY = (
    "{H} and {F} waved goodbye and smiled.",
    "They felt happy, because they had helped a friend.",
    "{H} hugged {F}, and they both cheered.",
    "Every time they saw {a_critter} after that, they were glad.",
    "{H} and {F} laughed and waved.",
    "They were happy to see it run free.",
)
_CARE_SAD = (
    "{H} and {F} felt very sad.",
    "{H} cried, and {F} was quiet.",
    "They never knew if the little {critter} was safe.",
    "The little bed in the box stayed empty.",
    "{H} looked for the {critter} every day, but it never came back.",
    "{F} cried, and {H} sat close beside {fhim}.",
)

ANIMAL_CARE = Plot(
    "caring_for_an_animal",
    re.compile(r"\bcare\b"),
    _body_care,
    (
        "{H} and {F} find a hurt {critter} {at_P} and take care of it until it is well.",
        "{H} and {F} take care of a little {critter} they find {at_P}, and it gets better.",
    ),
    (
        "{H} and {F} take care of a hurt {critter}, but it runs away and never comes back.",
        "{H} and {F} find a hurt {critter} {at_P}, but their care is not enough and it is lost.",
    ),
    (
        (
            "{G} had once shown {H} how to make a soft bed in a box.",
            "{H} remembered how {G} made a soft bed in a box.",
        ),
        (
            "{G} told {H} that hurt animals need quiet and rest.",
            "{H} remembered that hurt animals need quiet, so they kept very still.",
        ),
    ),
    (
        (
            "{G} said that the box had a loose lid.",
            "{H} remembered that the box had a loose lid.",
        ),
        (
            "{G} told {H} that wild animals are hard to keep.",
            "{H} remembered what {G} had said about wild animals.",
        ),
    ),
    places="outdoor",
)

PLOTS: tuple[Plot, ...] = (
    LOST_FOUND,
    SHARING,
    FEAR,
    HELPING,
    MAKING,
    TRIP,
    MIXUP,
    RACE,
    BROKEN,
    SURPRISE,
    NEW_FRIEND,
    WEATHER,
    GARDEN,
    ANIMAL_CARE,
)
PLOT_NAMES = tuple(p.name for p in PLOTS)


def classify_plot(summary: str) -> str | None:
    """Name the plot of a storyworld summary: the plot whose key word comes first."""
    best: tuple[int, str] | None = None
    for plot in PLOTS:
        match = plot.key.search(summary)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), plot.name)
    return best[1] if best else None
