"""Word lists for the storyworld generator: names, animals, objects, places, verbs.

Data only, parsed once at import time into tuples. Everything is kept to the vocabulary
of a young child; the lists are long because corpus variety (distinct words, distinct
stories) comes from them. Nouns are singular; verbs are inflected by `inflect`.
"""

from __future__ import annotations

from typing import NamedTuple

GIRL_NAMES = tuple(
    """Lily Sue Mia Emma Ava Zoe Lucy Anna Ella Amy Rosie Daisy Molly Kate Jane Sara Nora
    Ruby Ivy Grace Chloe Sophie Olivia Lena Maya Hannah Bella Clara Alice Eva Lola Nina Tina
    Wendy Fiona Hazel Ellie Julia Leah Kira Mila Nadia Rita Poppy Millie Hattie Greta Iris
    Jenny Kelly Laura Megan Paula Tara Vera Willa Abby Beth Cora Dora Elsa Freya Gina Holly
    Isla Jade Katie Luna Mara Nell Pia Rina Sadie Tessa Una Viola Yara Zara Amelia Penny
    Harriet Josie Lottie Matilda Nancy Olive Phoebe Queenie Rosa Stella Trudy Agnes Bonnie
    Cecily Delia Edie Flora Gemma Heidi Imogen Lydia Maisie Orla Peggy Ramona Selma
    Thea Ursula Winnie Ada Bea Carla Daphne Esme Faye Gwen Hope Ingrid Juno Lila Marnie Noor
    Priya Renata Sienna Talia Vivian Xena Yasmin Zelda Aisha Mei Sofia Leila Keiko Amara""".split()
)

BOY_NAMES = tuple(
    """Tom Ben Max Sam Leo Jack Tim Joe Bob Jake Luke Noah Liam Owen Finn Adam Eli Theo Oscar
    Hugo Ivan Kai Milo Nate Otto Paul Sid Toby Vic Zack Alex Dan Ed Fred Gus Hank Jim Ken Lou
    Matt Ned Pete Andy Billy Charlie Danny Eddie Frankie Georgie Harry Jamie Kevin Larry Nick
    Ollie Pablo Quinn Ricky Sammy Teddy Vince Wally Xavier Yusuf Zeke Arlo Bruno Cody Dexter
    Emil Felix Gabe Henry Isaac Jonah Kyle Louis Marco Nico Omar Peter Rudy Simon Tobias
    Victor Walter Abel Barney Caleb Dylan Elliot Frank George Hamish Ike Jasper Kit Lenny
    Monty Neil Orson Percy Rafael Stan Tucker Umar Vernon Wesley Yuri Zane Ahmed Benji Chester
    Declan Ezra Freddie Gideon Hector Idris Jude Kofi Lucas Mateo Rohan Tariq Wyatt Hiro""".split()
)

# Pet and animal-character names; none of them is also an object, food or weather word.
ANIMAL_NAMES = tuple(
    """Pip Hop Spot Fluffy Buttons Patch Biscuit Pebble Coco Bubbles Whiskers Peanut Muffin
    Snowy Ginger Pepper Bingo Rusty Dotty Fuzzy Puddles Nibbles Squeak Twinkle Bounce Pickles
    Waffles Noodle Sparky Tilly Clover Jelly Toffee Ziggy Flick Gizmo Jinx Nugget Pudding
    Sprout Wiggles Zippy Cinnamon Bramble Fern Scout Domino Mittens Skipper Tufty Nutmeg
    Paddles Blossom Dusty Freckles Hopper Lulu Mopsy Oreo Pogo Rascal Shadow Socks
    Tango Velvet Wobble Yoyo Blinky Chirpy Doodle Fidget Goober Humphrey Inky Jiggles
    Kipper Loopy Marshmallow Nibbler Pipsqueak Quackers Ripple Sniffles Thimble Whiskey
    Bubba Crumpet Dumpling Fizz Gumdrop Hiccup Scruffy Snuggles Sprinkles Tumble""".split()
)


class Animal(NamedTuple):
    kind: str  # singular noun
    sound: str  # what it does when happy, third person present ("barks")
    move: str  # how it moves, past tense ("ran")


ANIMALS = tuple(
    Animal(*line.strip().split(","))
    for line in """cat,purred,ran
    dog,barked,ran
    bunny,wiggled its nose,hopped
    bird,sang,flew
    frog,croaked,hopped
    duck,quacked,waddled
    fox,yipped,ran
    bear,growled softly,walked
    mouse,squeaked,scurried
    owl,hooted,flew
    turtle,blinked,crawled
    squirrel,chattered,scampered
    pig,oinked,trotted
    cow,mooed,walked
    horse,neighed,galloped
    lamb,baaed,skipped
    goat,bleated,trotted
    chick,peeped,hopped
    puppy,yapped,ran
    kitten,mewed,ran
    deer,stamped its feet,leaped
    hedgehog,sniffed,waddled
    lion,roared,ran
    tiger,purred loudly,ran
    elephant,trumpeted,stomped
    monkey,chattered,swung
    giraffe,nodded,walked
    zebra,snorted,galloped
    penguin,squawked,waddled
    seal,barked,slid
    rabbit,thumped its foot,hopped
    ladybug,buzzed,flew
    bee,buzzed,flew
    butterfly,fluttered,flew
    snail,wiggled,crawled
    beaver,slapped its tail,swam
    raccoon,chittered,ran
    badger,grunted,shuffled
    mole,sniffed,dug
    otter,squeaked,swam
    panda,rolled over,tumbled
    koala,yawned,climbed
    kangaroo,thumped,bounced
    hippo,snorted,splashed
    parrot,squawked,flew
    robin,chirped,flew
    sparrow,chirped,flew
    swan,honked,glided
    goose,honked,waddled
    pony,neighed,trotted
    donkey,brayed,trotted
    dinosaur,roared,stomped
    dragon,puffed smoke,flew
    unicorn,neighed,galloped
    crab,clicked its claws,scuttled
    dolphin,clicked,swam
    octopus,waved its arms,swam
    lizard,flicked its tongue,darted
    chipmunk,chirped,scampered
    hamster,squeaked,scurried
    llama,hummed,trotted
    walrus,grunted,flopped
    flamingo,honked,waded
    peacock,called,strutted
    gorilla,thumped its chest,climbed
    meerkat,squeaked,scampered
    sloth,yawned,crept
    porcupine,snuffled,waddled
    caterpillar,wiggled,inched
    firefly,glowed,flew
    woodpecker,tapped,flew
    moose,bellowed,walked
    polar bear,growled softly,padded
    reindeer,snorted,pranced
    ostrich,squawked,ran""".splitlines()
)


class Obj(NamedTuple):
    noun: str
    verbs: tuple[str, ...]  # base verb plus optional particle, used as "<verb> the <noun>"
    adjectives: tuple[str, ...]  # adjectives that fit this object, beside colours and sizes
    soft: bool  # soft things tear, hard things break
    animal_ok: bool  # an animal hero could own it


def _objects(text: str) -> tuple[Obj, ...]:
    out = []
    for line in text.strip().splitlines():
        noun, verbs, adjs, flags = (part.strip() for part in line.split("|"))
        out.append(
            Obj(
                noun,
                tuple(v.strip() for v in verbs.split(",")),
                tuple(adjs.split()),
                "s" in flags,
                "a" in flags,
            )
        )
    return tuple(out)


# noun | verbs | adjectives | flags (s: soft, a: an animal could own it)
OBJECTS = _objects(
    """
ball | kick, throw, bounce, roll, catch | bouncy round shiny striped | a
kite | fly, hold | bright colorful light striped | a
boat | sail, push, float | wooden little shiny | a
teddy bear | hug, cuddle, hold | soft fluffy cuddly brown | s
doll | hug, dress, hold | pretty soft tiny | s
truck | push, drive, roll | loud shiny dusty | -
car | drive, push, race | fast shiny speedy | -
train | push, drive, play with | long wooden shiny | -
drum | bang, play, beat | loud noisy round | a
book | read, open, look at | thick old thin | -
crayon | draw with, color with | bright waxy fat | -
hat | wear, hold | funny floppy warm fancy | sa
scarf | wear, wrap | warm soft long woolly | s
balloon | hold, bounce, squeeze | shiny round bright | a
bike | ride, push | fast shiny new | -
scooter | ride, push | fast shiny new | -
wagon | pull, push | rusty little wooden | -
shovel | dig with, carry | little sturdy red | a
bucket | fill, carry | little sturdy bright | a
shell | hold, collect, listen to | pretty pink smooth shiny | a
stone | hold, collect, throw | smooth shiny round flat | a
feather | hold, wave, collect | soft long bright fluffy | sa
acorn | hold, carry, hide | brown round little shiny | a
leaf | hold, catch, wave | golden crunchy huge bright | sa
flower | smell, water, hold | pretty bright yellow sweet | sa
puzzle | solve, finish, build | hard tricky big colorful | -
top | spin, twirl | wooden shiny little fast | a
trumpet | play, blow | shiny loud golden | -
guitar | play, strum | old little wooden | -
flute | play, blow | silver thin shiny | a
robot | play with, wind up | silver shiny clever funny | -
puppet | play with, wave, hold | silly funny soft | s
rocket | fly, launch | shiny fast silver | -
airplane | fly, throw | fast white folded | -
sled | ride, pull | wooden fast long | a
umbrella | open, hold, carry | spotted bright big | -
necklace | wear, hold | pretty shiny sparkly | a
bracelet | wear, hold | shiny pretty sparkly | -
crown | wear, hold | golden shiny sparkly | a
blanket | hold, cuddle, wrap | warm soft cozy fuzzy | sa
pillow | hug, hold, fluff | soft fluffy cozy | sa
cup | hold, fill, carry | little blue shiny | a
basket | carry, fill | little woven sturdy | a
bag | carry, fill, open | little sturdy spotted | sa
box | open, carry, fill | big little sturdy | a
jar | fill, open, carry | empty shiny clear | a
marble | roll, shoot, hold | shiny blue swirly | a
button | hold, collect, roll | shiny round big | a
sock | wear, hold | striped warm fuzzy | sa
boot | wear, clean | muddy new shiny | -
mitten | wear, hold | warm woolly fuzzy | s
coat | wear, hold | warm thick cozy | s
pencil | draw with, write with, hold | sharp yellow long | -
paintbrush | paint with, hold, clean | little soft thin | -
bell | ring, shake, hold | little golden shiny | a
rocking horse | ride, rock | wooden painted old | -
toy dinosaur | play with, hold, push | green big scaly | -
lantern | carry, hold, light | little glowing old | a
clock | wind, look at, hold | old ticking round | -
mirror | look in, hold, clean | little shiny round | a
key | hold, turn, carry | golden tiny old | a
coin | hold, flip, collect | shiny gold lucky | a
ribbon | tie, wave, hold | long pink silky | sa
stick | throw, wave, hold | long brown strong | a
egg | hold, carry, warm | big speckled smooth | a
pinwheel | spin, blow, hold | colorful bright shiny | a
wand | wave, hold | magic sparkly thin | a
sword | wave, hold | wooden shiny pointy | -
flag | wave, hold, carry | little bright striped | sa
snow globe | shake, hold, look at | pretty little sparkly | -
music box | open, wind, listen to | old pretty little | -
camera | hold, carry, use | old little shiny | -
radio | listen to, carry, turn on | old little loud | -
backpack | carry, wear, pack | heavy blue sturdy | s
lunchbox | carry, open, pack | shiny red dented | -
pebble | hold, throw, collect | smooth white tiny | a
rubber duck | squeeze, float, hold | yellow squeaky little | a
jump rope | swing, hold | long bright striped | -
xylophone | play, tap | colorful wooden little | -
kazoo | play, blow, hum into | noisy little buzzy | -
picture | paint, hold, show | bright colorful big | s
card | make, hold, open | bright folded shiny | s
tower of blocks | build, stack, knock down | tall wobbly colorful | -
cape | wear, wave | long red silky | s
mask | wear, hold | funny spooky colorful | s
wooden spoon | hold, stir with, bang | long old smooth | -
nest | hold, carry, fix | round cozy little | a
berry basket | fill, carry | little woven sturdy | a
watering can | fill, carry, use | green little dented | a
skateboard | ride, push | fast bumpy cool | -
tricycle | ride, push | shiny wobbly little | -
dollhouse | play with, open, clean | tiny pretty wooden | -
spinning wheel | spin, turn | old squeaky wooden | -
harmonica | play, blow | shiny silver tiny | -
tambourine | shake, bang, play | jingly round loud | -
kaleidoscope | look through, turn, hold | magic colorful shiny | -
telescope | look through, hold, carry | long brass shiny | -
magnifying glass | look through, hold, carry | round heavy shiny | -
treasure map | read, hold, fold | old crumpled secret | -
compass | hold, carry, read | shiny round brass | -
slingshot | hold, carry | wooden little strong | -
fishing rod | hold, carry, cast | long bendy blue | -
paper crown | wear, hold | wobbly bright glittery | s
glitter jar | shake, hold | sparkly magic glittery | -
teacup | hold, fill, carry | dainty tiny painted | -
scarecrow doll | hold, dress, hug | floppy silly straw | s
knitted bunny | hug, cuddle, hold | soft floppy knitted | s
stuffed elephant | hug, cuddle, hold | soft gray cuddly | s
plush dragon | hug, cuddle, hold | soft green fuzzy | s
toy soldier | hold, line up, play with | tin tiny painted | -
toy boat | sail, float, push | little red wooden | a
rainbow scarf | wear, wrap | long warm stripy | s
party hat | wear, hold | pointy shiny silly | s
jingle bell | ring, shake, hold | tiny silver jingly | a
seashell necklace | wear, hold | pretty pink tiny | a
pine cone | hold, collect, throw | prickly brown bumpy | a
daisy chain | wear, make, hold | pretty white long | sa
snow shovel | dig with, carry, push | big sturdy heavy | -
sand pail | fill, carry, empty | little bright sturdy | a
lollipop | lick, hold | sticky sweet swirly | a
trophy | hold, polish, carry | golden shiny heavy | -
medal | wear, hold, polish | shiny gold heavy | -
banjo | play, strum, tune | twangy old wooden | -
accordion | play, squeeze | wheezy bright noisy | -
scrapbook | open, fill, read | thick messy colorful | -
sticker book | open, fill, read | bright glossy new | -
walkie talkie | hold, use, carry | crackly black handy | -
piggy bank | shake, fill, hold | pink chubby heavy | -
feather duster | wave, hold, use | fluffy long tickly | s
butterfly net | swing, hold, carry | long green floppy | -
bubble wand | wave, blow, dip | magic bright wiggly | -
bow and arrow | hold, carry | wooden little bendy | -
cowboy hat | wear, hold | brown dusty floppy | s
raincoat | wear, hold, zip | yellow shiny slick | s
beach ball | kick, throw, bounce | huge bouncy stripy | a
hula hoop | spin, twirl, roll | bright wobbly spinny | -
racing car | drive, push, zoom | speedy shiny zippy | -
fire truck | push, drive, roll | loud shiny noisy | -
digger | push, drive, dig with | yellow dusty chunky | -
tractor | drive, push, pull | green dusty chunky | -
spaceship | fly, launch, hold | silver zippy shiny | -
submarine | float, push, sail | yellow tiny shiny | -
ladybug pin | wear, hold | spotted tiny shiny | -
hair clip | wear, hold | sparkly tiny shiny | -
snow boot | wear, clean | fuzzy warm chunky | s
glove puppet | wave, hold, play with | floppy silly fuzzy | s
rag doll | hug, hold, dress | floppy soft patched | s
pom pom | shake, wave, hold | fluffy bright bouncy | s
"""
)

COLORS = tuple(
    "red blue green yellow pink purple orange white brown golden silver gray black".split()
)
SIZES = tuple("big little small tiny huge giant".split())

# Adjectives for a character: "a <trait> girl named Lily".
TRAITS = tuple(
    """kind curious brave shy cheerful clever playful gentle silly busy sleepy careful friendly
    bright jolly lively polite quiet loud smart funny helpful honest bold chatty eager giggly
    grumpy hungry little young happy sweet bouncy messy tidy thoughtful cheeky daring dreamy
    fearless nosy patient proud sporty stubborn noisy wise calm fussy generous grateful
    jumpy lucky merry mischievous neat plucky sensible speedy spunky tender thrifty
    tiny timid wiggly zany adventurous artistic bubbly clumsy cozy crafty dainty""".split()
)


class Place(NamedTuple):
    name: str  # with article: "the park"
    prep: str  # "at", "in", "on", "by"
    outdoor: bool
    animal_ok: bool
    sights: tuple[str, ...]  # things one sees there, with article


def _places(text: str) -> tuple[Place, ...]:
    """Parse "name | prep | flags" lines, each followed by indented lines of sights."""
    out: list[Place] = []
    header: list[str] = []
    sights: list[str] = []
    for line in text.strip("\n").splitlines() + ["<end>"]:
        if line.startswith(" "):
            sights.append(line.strip())
            continue
        if header:
            name, prep, flags = header
            found = tuple(s.strip() for s in " ".join(sights).split(","))
            out.append(Place(name, prep, "o" in flags, "a" in flags, found))
        header, sights = [part.strip() for part in line.split("|")], []
    return tuple(out)


# name | preposition | flags (o: outdoors, a: animals live there), then its sights
PLACES = _places(
    """
the park | at | oa
    a big slide, some ducks, a tall oak tree, a red swing, a wooden bench, a little fountain
the beach | at | oa
    big waves, white sand, a sandcastle, some seagulls, a striped umbrella, a pile of seaweed
the garden | in | oa
    tall sunflowers, a little pond, a vegetable patch, a bird bath, a row of tulips, a rose bush
the forest | in | oa
    tall pine trees, a mossy log, a little stream, some mushrooms, a hollow tree, a fern patch
the farm | on | oa
    a red barn, some pigs, a big haystack, a muddy pond, a noisy rooster, a green tractor
the zoo | at | o
    a sleepy lion, a tall giraffe, a noisy monkey, a pool of seals, a big elephant, a colorful
    parrot
the lake | by | oa
    a wooden dock, some swans, a little rowboat, tall reeds, a sandy shore, a family of ducks
the pond | by | oa
    green lily pads, a family of frogs, tall cattails, a flat rock, some dragonflies, a little
    bridge
the playground | at | o
    a tall slide, a sandbox, a merry go round, some monkey bars, a seesaw, a tire swing
the meadow | in | oa
    wild flowers, tall grass, a buzzing bee, a big butterfly, an old stone wall, a lonely tree
the hill | on | oa
    a windy top, soft green grass, a lonely tree, a little path, some sheep, a view of the town
the river | by | oa
    a rushing stream, round stones, a wooden bridge, a family of otters, a fishing boat, a muddy
    bank
the school | at | -
    a big chalkboard, a reading corner, a class fish tank, colorful desks, a map of the world, a
    shelf of books
the library | at | -
    tall shelves, a soft rug, a sleepy cat, a reading lamp, a pile of books, a big globe
the backyard | in | oa
    a tree swing, a sandbox, a vegetable patch, a little fence, a bird feeder, a clothes line
the kitchen | in | -
    a warm oven, a big table, a bowl of fruit, a cookie jar, a noisy kettle, a shelf of cups
the bedroom | in | -
    a cozy bed, a toy box, a big window, a soft rug, a night light, a shelf of toys
the living room | in | -
    a big couch, a warm fireplace, a soft rug, a tall lamp, a pile of pillows, a ticking clock
the barn | in | oa
    a pile of hay, a sleepy cow, a wooden ladder, a noisy hen, a big door, a shiny bucket
the jungle | in | oa
    tall palm trees, long vines, a loud monkey, a colorful bird, a big waterfall, huge leaves
the mountain | on | oa
    a snowy top, a rocky path, a cold stream, a mountain goat, tall pine trees, a little cave
the field | in | oa
    tall corn, a scarecrow, a big tractor, some crows, a wooden gate, golden wheat
the orchard | in | oa
    rows of apple trees, a ladder, baskets of pears, a buzzing beehive, a wooden cart, ripe
    plums
the market | at | -
    a fruit stand, a flower stall, a man selling bread, a pile of melons, colorful tents, a
    juggler
the fair | at | o
    a big wheel, a carousel, a cotton candy stand, a prize booth, bright lights, a funny clown
the circus | at | -
    a big tent, a juggler, a dancing bear, a tightrope, a silly clown, a ring of ponies
the museum | at | -
    a dinosaur skeleton, old paintings, a shiny suit of armor, a big globe, a model ship, a
    quiet hall
the campsite | at | o
    a little tent, a crackling campfire, tall trees, a lake, a starry sky, a pile of logs
the woods | in | oa
    tall trees, a winding path, a babbling brook, a fallen log, a bird nest, a patch of berries
the island | on | oa
    palm trees, warm sand, a turtle, blue water, a coconut, a little boat
the harbor | at | o
    big ships, a lighthouse, some seagulls, fishing nets, a wooden pier, a red buoy
the castle | at | o
    tall towers, a drawbridge, a moat, a big gate, colorful flags, a stone stairway
the bakery | at | -
    warm bread, sweet buns, a big oven, a tray of cookies, a cake with candles, a smiling baker
the toy shop | at | -
    shelves of toys, a wooden train, a big teddy, spinning tops, a rocking horse, a box of
    puppets
the aquarium | at | -
    a big shark, colorful fish, a glass tunnel, a giant octopus, some jellyfish, a sea turtle
the treehouse | in | oa
    a rope ladder, a little window, a secret door, a pile of comics, a flag on top, a bird nest
    nearby
the attic | in | -
    old boxes, a dusty trunk, a round window, a rocking chair, old photos, a spider web
the snowy hill | on | oa
    deep snow, a snowman, a frozen pond, icicles, a sled track, a pine tree
the pumpkin patch | in | o
    big orange pumpkins, curly vines, a scarecrow, a hay ride, a wooden fence, a wheelbarrow
the swamp | in | a
    green mud, croaking frogs, old logs, tall reeds, a sleepy alligator, foggy water
the waterfall | by | oa
    roaring water, slippery rocks, a misty rainbow, a deep pool, green ferns, a rope bridge
the desert | in | oa
    golden sand dunes, a tall cactus, a sleepy camel, a hot sun, a little lizard, a dusty path
the volcano park | at | o
    bubbling mud pools, black rocks, a steaming hole, a wooden sign, a lookout tower, a smoky
    top
the ice rink | at | o
    shiny ice, a row of skates, a warm hut, twinkling lights, a hot cocoa stand, a big snowman
the lighthouse | by | oa
    a tall white tower, crashing waves, a spiral staircase, a foggy sea, a bright lamp, some
    puffins
the vegetable patch | in | oa
    rows of lettuce, fat tomatoes, a scarecrow, a watering can, crunchy carrots, a tool shed
the train station | at | -
    a big clock, long benches, a shiny train, a ticket booth, a busy crowd, a whistling guard
the playroom | in | -
    a toy kitchen, a pile of blocks, a dress up box, a tiny table, a bean bag, a box of crayons
the cabin | in | -
    a crackling stove, a bunk bed, a fur rug, a window full of snow, a kettle, a shelf of games
the ranch | on | oa
    a wooden fence, a herd of horses, a big red barn, a water trough, a dusty trail, a hay loft
the coral reef | by | a
    colorful coral, a school of fish, a sleepy sea turtle, waving sea grass, a clown fish, a sea
    star
the bamboo forest | in | oa
    tall green bamboo, a lazy panda, a bubbling spring, a stone path, a tiny shrine, a red
    bridge
the sunflower field | in | oa
    tall sunflowers, buzzing bees, a winding path, a wooden swing, a picnic blanket, a windmill
the carnival | at | o
    a spinning teacup ride, a ring toss game, a balloon seller, a popcorn cart, a tall stilt
    walker, a hall of mirrors
the orchard hill | on | oa
    crooked apple trees, a windy path, a wooden bench, a family of rabbits, a stone wall, a
    little stream
the puppet theater | at | -
    red velvet seats, a tiny stage, a big curtain, funny puppets, a ticket booth, a row of lamps
the ferry | on | o
    splashing waves, a loud horn, a rusty rail, a busy deck, a flock of gulls, a far away shore
the bus stop | at | o
    a red bus, a wooden bench, a tall sign, a puddle, a flower box, a sleepy cat
the skating pond | at | oa
    thick ice, a snowy bench, a little hut, a snowman, frozen reeds, a skating duck
the fishing pier | on | oa
    long wooden planks, a bucket of worms, a bobbing boat, some pelicans, a lamp post, a coil of
    rope
the greenhouse | in | -
    rows of tomatoes, tall orchids, a warm misty air, a big fern, a watering hose, clay pots
the pet shop | at | -
    a tank of goldfish, a squeaky hamster wheel, a row of bird cages, a sleepy puppy, bags of
    seed, a talking parrot
the post office | at | -
    a tall counter, piles of letters, a red mailbox, a friendly clerk, a scale for parcels, a
    row of stamps
"""
)

HOMES = tuple(
    """in a small house by the sea
    in a big house with a red door
    in a cozy house near the woods
    in a little village
    in a tall building in the city
    on a quiet street
    in a yellow house with a garden
    in a little cottage on a hill
    in a blue house by the river
    on a busy street full of shops
    in a white house next to the park
    on a farm with many animals
    in a red house at the end of the lane
    in a tiny flat above a bakery
    in a wooden house by the lake
    in a stone cottage with a green gate
    in a houseboat on the river
    near the top of a windy hill""".split("\n")
)

ANIMAL_HOMES = tuple(
    """in a hole under a big tree
    in a nest high in an oak tree
    by a quiet pond
    in a cozy burrow
    in a hollow log in the forest
    under a bush in the meadow
    near a little stream
    in a warm barn
    in a den by the river
    in a tree at the edge of the woods
    in a snug hole under a garden shed
    among the reeds by the river
    in a cave behind a waterfall
    in a cozy corner of the old mill
    under the roots of a giant willow""".split("\n")
)

ADULTS = (("Mom", "she"), ("Dad", "he"), ("Grandma", "she"), ("Grandpa", "he"))

# Food as it follows "ate" or "made": plural or uncountable, never with an article.
FOODS = tuple(
    food.strip()
    for food in """apples|bananas|cookies|cake|sandwiches|cheese|grapes|carrots|apple pie
    muffins|pancakes
    berries|cherries|soup|popcorn|pretzels|strawberries|peaches|pears|plums|watermelon
    bread|cupcakes|jam sandwiches|noodles|toast|waffles|porridge|biscuits|raisins|yogurt
    pizza|banana bread|lemon tarts|oat cookies|fruit salad|honey buns|cheese crackers
    rice pudding|carrot cake|blueberry muffins|little pies""".replace("\n", "|").split("|")
)

# Verbs a hero can do with no object: "Lily loved to dance every day."
ACTIVITIES = tuple(
    dict.fromkeys(
    """run jump dance sing swim climb hop skip play giggle spin twirl march race explore
    paint draw read bake dig skate slide swing splash whistle hum clap wiggle stretch nap rest
    wander roll crawl float sail fish camp cook build count write color knit garden hike ride
    bounce tiptoe travel somersault stomp jog gallop skateboard sketch doodle whisper yodel
    juggle rhyme scribble tumble cartwheel stargaze paddle sled waddle scamper prance
    stroll zoom dash leap tinker sew kayak surf snorkel bowl tap drum sculpt whittle
    scoot rollerskate knead weave crochet fiddle shimmy tango""".split()
    )
)

TIME_PHRASES = tuple(
    """every day
    in the morning
    after lunch
    all day long
    before bedtime
    in the sunshine
    on rainy days
    whenever {he} could
    with {his} friends
    after school
    on sunny afternoons
    at the weekend
    when nobody was watching
    under the big tree
    in the backyard
    before breakfast""".split("\n")
)

DAY_STARTS = tuple(
    """One sunny morning
    One day
    One bright afternoon
    One warm summer day
    One cold winter morning
    One windy day
    Early one morning
    On a lovely spring day
    One fall afternoon
    On a cloudy day
    One Saturday morning
    After breakfast one day
    One chilly evening
    On a bright Sunday
    One foggy morning
    On the first day of summer
    One rainy afternoon that soon turned sunny
    Late one afternoon
    On a quiet Monday
    One snowy morning""".split("\n")
)

HIDING_OUTDOORS = (
    "under a bush",
    "behind a big rock",
    "in the tall grass",
    "under a pile of leaves",
    "beside an old log",
    "under a wooden bench",
    "next to a muddy puddle",
    "in a hole by a tree",
    "inside a hollow stump",
    "under a pile of sticks",
    "behind a big flower pot",
    "in a patch of clover",
    "under a fallen branch",
    "inside an old boot",
    "next to a sleepy snail",
    "in a bird bath",
)
HIDING_INDOORS = (
    "under the bed",
    "behind the couch",
    "in the toy box",
    "under a pillow",
    "inside a boot",
    "behind the curtain",
    "in the laundry basket",
    "under the rug",
    "on top of the fridge",
    "inside a drawer",
    "under the stairs",
    "in the dog's basket",
    "behind the big clock",
    "in a coat pocket",
    "inside the piano bench",
    "under a pile of laundry",
)

# Verbs whose last consonant doubles before -ed and -ing (stop -> stopped, stopping).
_DOUBLING = frozenset(
    """hop skip clap drop hug dig pat grab jog nap plan rub scrub shop slip tap trip wrap zip
    dip sled strum stop bat chat drum hum pop skim spot stir trim wag flip knit run swim spin
    sit get""".split()
)
_IRREGULAR_PAST = {
    "run": "ran", "swim": "swam", "sing": "sang", "throw": "threw", "catch": "caught",
    "fly": "flew", "ride": "rode", "drive": "drove", "build": "built", "read": "read",
    "draw": "drew", "wear": "wore", "hold": "held", "blow": "blew", "spin": "spun",
    "shake": "shook", "ring": "rang", "find": "found", "make": "made", "give": "gave",
    "beat": "beat", "shoot": "shot", "swing": "swung", "write": "wrote", "slide": "slid",
    "dig": "dug", "stick": "stuck", "wind": "wound", "light": "lit", "sleep": "slept",
    "get": "got", "take": "took", "see": "saw", "eat": "ate", "do": "did", "go": "went",
    "come": "came", "sit": "sat", "fall": "fell", "break": "broke", "tear": "tore",
    "feel": "felt", "keep": "kept", "lose": "lost", "hide": "hid", "know": "knew",
    "teach": "taught", "bring": "brought", "buy": "bought", "put": "put",
    "cast": "cast", "weave": "wove",
}
_VOWELS = frozenset("aeiou")


def inflect(base: str) -> tuple[str, str]:
    """Return (past, -ing form) of a base verb; only the first word of a phrase is inflected."""
    verb, _, rest = base.partition(" ")
    past, ing = _inflect_word(verb)
    if rest:
        return f"{past} {rest}", f"{ing} {rest}"
    return past, ing


def _inflect_word(verb: str) -> tuple[str, str]:
    if verb in _DOUBLING:
        stem = verb + verb[-1]
        past = _IRREGULAR_PAST.get(verb, stem + "ed")
        return past, stem + "ing"
    if verb.endswith("ie"):
        ing = verb[:-2] + "ying"
    elif verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        ing = verb[:-1] + "ing"
    else:
        ing = verb + "ing"
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb], ing
    if verb.endswith("e"):
        return verb + "d", ing
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ied", ing
    return verb + "ed", ing


# What a character looks like: "Lily had curly red hair."
LOOKS_CHILD = (
    "curly red hair",
    "a big gap-toothed smile",
    "freckles on {his} nose",
    "bright blue shoes",
    "a yellow raincoat",
    "long brown braids",
    "a missing front tooth",
    "round glasses",
    "a striped shirt",
    "muddy knees",
    "a red cap",
    "spiky black hair",
    "rosy cheeks",
    "a dimple in {his} chin",
    "a purple backpack",
    "a bandage on {his} elbow",
    "dark curls",
    "a green sweater with a fox on it",
    "sparkly sneakers",
    "a loud laugh",
    "a pocket full of pebbles",
    "two wobbly pigtails",
    "a scraped knee",
    "a fuzzy orange hat",
    "a shiny new backpack",
    "a messy ponytail",
    "mittens on a string",
    "bright green boots",
    "a smudge of jam on {his} cheek",
    "a sailor shirt",
)
LOOKS_ANIMAL = (
    "soft gray fur",
    "a fluffy white tail",
    "long floppy ears",
    "bright black eyes",
    "a shiny wet nose",
    "tiny pink paws",
    "a spotted back",
    "big round ears",
    "a stripy tail",
    "golden feathers",
    "a little pointy nose",
    "long whiskers",
    "a patch of white on {his} chest",
    "wobbly legs",
    "a curly tail",
    "speckled wings",
    "a velvety nose",
    "a bushy tail",
    "bright orange spots",
    "a pair of tiny horns",
    "fuzzy brown ears",
    "a long, stripy neck",
)

# A sentence about the day, outdoors and indoors; none of them decides how a story ends.
SCENES_OUTDOORS = (
    "The sun was shining, and a soft breeze was blowing.",
    "Fluffy white clouds drifted across the sky.",
    "Birds were singing in the trees.",
    "The air smelled of fresh grass.",
    "It was warm, and the bees were buzzing.",
    "The leaves were red and gold and crunchy.",
    "A cool wind made the flowers sway.",
    "Puddles from last night's rain shone in the sun.",
    "The sky was a bright, clear blue.",
    "Frost sparkled on the grass.",
    "A butterfly fluttered past.",
    "Somewhere, a dog was barking.",
    "Little white daisies dotted the ground.",
    "The wind whistled through the branches.",
    "Dew drops glittered on every blade of grass.",
    "A rainbow curved over the hills.",
    "The sun peeked out from behind a cloud.",
    "Snowflakes drifted slowly down.",
    "Crickets chirped in the long grass.",
    "The smell of pine trees filled the air.",
)
SCENES_INDOORS = (
    "Sunlight came in through the window.",
    "The clock on the wall went tick, tock.",
    "It was warm and quiet inside.",
    "Rain tapped softly on the window.",
    "The room smelled of fresh bread.",
    "A cat was napping on the windowsill.",
    "Music was playing softly on the radio.",
    "The floor was covered with toys.",
    "The kettle whistled in the kitchen.",
    "A fire crackled in the fireplace.",
    "The curtains fluttered in the breeze.",
    "Dust danced in a beam of sunlight.",
)

GAMES = (
    "hide and seek",
    "tag",
    "hopscotch",
    "catch",
    "pirates",
    "follow the leader",
    "I spy",
    "leapfrog",
    "house",
    "red light, green light",
    "duck, duck, goose",
    "tea party",
    "knights and dragons",
    "shop",
    "musical chairs",
    "simon says",
    "marbles",
    "dress up",
    "doctors",
    "treasure hunt",
    "statues",
    "shadow tag",
    "sleeping lions",
    "rock, paper, scissors",
    "hot potato",
    "wheelbarrow races",
)

NUMBERS = tuple("two three four five six seven eight nine ten".split())
COUNTABLES = (
    "ladybugs", "clouds", "red cars", "puddles", "birds", "stones", "snails", "bicycles",
    "windows", "dogs", "trees", "butterflies", "mailboxes", "chimneys", "fence posts",
)
# Small finds: "Tom found a shiny button."
TRINKETS = (
    "a shiny button",
    "a smooth stone",
    "a blue feather",
    "a tiny shell",
    "a bottle cap",
    "a four-leaf clover",
    "a red marble",
    "a lost mitten",
    "a bright yellow leaf",
    "a snail shell",
    "an old key",
    "a piece of green glass",
    "a pretty pebble",
    "a tiny acorn",
    "a penny",
    "a curly ribbon",
)
