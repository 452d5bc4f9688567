"""A seeded synthetic fact base for retrieval-augmented QA and knowledge editing.

Entities are made-up people ("first last", two invented words); each holds a
few of `RELATIONS` (born in a city, speaks a language, plays an instrument,
...), each relation drawing its value from a pool of invented words (or
years). Every fact has one statement (the passage a document memory stores)
and questions in several templates: `questions` are for training and
evaluation, `paraphrases` are held out to measure generalisation. Nothing is
downloaded: everything follows from the seed.

Several relations share a value pool (born in / lives in / works in a city)
and several share words ("plays the", "plays ... on weekends"), so a reader
must match the relation, not only the entity or the kind of answer.

Shape legend: F facts, E entities, R relations.

Example:

  base = generate(num_facts=100_000, seed=0)
  base.statement(7)                -> "dovatu rekimo plays the lesami ."
  base.question(7, template=0)     -> "which instrument does dovatu rekimo play ?"
  base.answer(7)                   -> "lesami"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from memjax import _checks

UNKNOWN = "unknown"
"""The answer to a question whose fact is not known (absent or deleted)."""


@dataclasses.dataclass(frozen=True)
class Relation:
  """One relation: how its facts are stated and asked.

  Attributes:
    name: identifier, e.g. "born_in".
    pool: the name of the value pool its values come from.
    statement: passage template with `{e}` (entity) and `{v}` (value).
    questions: question templates with `{e}`, used for training and testing.
    paraphrases: further question templates, never trained on.
  """
  name: str
  pool: str
  statement: str
  questions: tuple[str, ...]
  paraphrases: tuple[str, ...]


RELATIONS: tuple[Relation, ...] = (
    Relation("born_in", "city", "{e} was born in {v} .",
             ("where was {e} born ?", "in which city was {e} born ?",
              "what is the birthplace of {e} ?"),
             ("{e} was born in what city ?", "which city was {e} born in ?")),
    Relation("lives_in", "city", "{e} lives in {v} .",
             ("where does {e} live ?", "in which city does {e} live ?",
              "what city is home to {e} ?"),
             ("{e} lives in which city ?", "which city does {e} live in ?")),
    Relation("works_in", "city", "{e} works in {v} .",
             ("where does {e} work ?", "in which city does {e} work ?",
              "what city does {e} commute to for work ?"),
             ("{e} works in which city ?", "which city does {e} work in ?")),
    Relation("citizen_of", "country", "{e} is a citizen of {v} .",
             ("what is the nationality of {e} ?", "which country is {e} a citizen of ?",
              "{e} holds the passport of which country ?"),
             ("of which country is {e} a citizen ?",
              "what country issued the passport of {e} ?")),
    Relation("occupation", "occupation", "{e} works as a {v} .",
             ("what does {e} do for a living ?", "what is the job of {e} ?",
              "what is the occupation of {e} ?"),
             ("what is the job {e} does for a living ?", "{e} works as what ?")),
    Relation("born_year", "year", "{e} was born in the year {v} .",
             ("when was {e} born ?", "in what year was {e} born ?",
              "what is the birth year of {e} ?"),
             ("{e} was born in which year ?", "which year was {e} born in ?")),
    Relation("colour", "colour", "the favourite colour of {e} is {v} .",
             ("what is the favourite colour of {e} ?", "which colour does {e} like best ?",
              "what colour does {e} prefer ?"),
             ("{e} likes which colour best ?", "what colour is the favourite of {e} ?")),
    Relation("instrument", "instrument", "{e} plays the {v} .",
             ("which instrument does {e} play ?", "what instrument does {e} play ?",
              "what does {e} play in the band ?"),
             ("{e} plays which instrument ?", "what musical instrument does {e} play ?")),
    Relation("language", "language", "{e} speaks {v} .",
             ("which language does {e} speak ?", "what language does {e} speak ?",
              "what is the language of {e} ?"),
             ("{e} speaks which language ?", "in what language does {e} speak ?")),
    Relation("pet", "animal", "{e} owns a {v} .",
             ("what pet does {e} have ?", "what animal does {e} own ?",
              "which pet does {e} keep ?"),
             ("{e} owns which animal ?", "what kind of pet does {e} own ?")),
    Relation("employer", "company", "{e} is employed by {v} .",
             ("who employs {e} ?", "which company employs {e} ?",
              "for which company does {e} work ?"),
             ("{e} is employed by which company ?", "what company is {e} employed by ?")),
    Relation("sport", "sport", "{e} plays {v} on weekends .",
             ("which sport does {e} play ?", "what sport does {e} practise ?",
              "what game does {e} play on weekends ?"),
             ("{e} plays which sport ?", "what sport does {e} play on weekends ?")),
    Relation("food", "food", "{e} loves to eat {v} .",
             ("what food does {e} love ?", "what does {e} love to eat ?",
              "which dish does {e} like most ?"),
             ("{e} loves to eat what ?", "which food does {e} love to eat ?")),
    Relation("university", "university", "{e} studied at {v} .",
             ("where did {e} study ?", "which university did {e} attend ?",
              "at which university did {e} study ?"),
             ("{e} studied at which university ?", "what university did {e} study at ?")),
    Relation("hobby", "hobby", "{e} enjoys {v} in the evenings .",
             ("what hobby does {e} have ?", "what does {e} enjoy in the evenings ?",
              "which hobby does {e} enjoy ?"),
             ("{e} enjoys what hobby ?", "what hobby does {e} enjoy in the evenings ?")),
    Relation("car", "car", "{e} drives a {v} .",
             ("what car does {e} drive ?", "which car brand does {e} drive ?",
              "what does {e} drive ?"),
             ("{e} drives which car ?", "what kind of car does {e} drive ?")),
)

# Invented words per pool; "year" is numeric. Sizes are the number of values.
POOL_SIZES = {
    "city": 300, "country": 80, "occupation": 80, "year": 70, "colour": 24,
    "instrument": 30, "language": 50, "animal": 40, "company": 150, "sport": 30,
    "food": 60, "university": 80, "hobby": 40, "car": 40,
}
FIRST_YEAR = 1940
NUM_FIRST_NAMES = 400
NUM_LAST_NAMES = 800

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


class Edit(NamedTuple):
  """One knowledge edit.

  Attributes:
    kind: "insert" (a fact that was not known), "update" (a new value for a
      known fact) or "delete" (forget a known fact).
    entity: entity index.
    relation: relation index.
    old_value: value index before the edit, -1 if there was none.
    new_value: value index after the edit, -1 for a delete.
    fact: index of the fact edited (`update`, `delete`), or -1 (`insert`).
  """
  kind: str
  entity: int
  relation: int
  old_value: int
  new_value: int
  fact: int


def _template_words() -> set[str]:
  words = {UNKNOWN}
  for r in RELATIONS:
    for t in (r.statement, *r.questions, *r.paraphrases):
      words.update(w for w in t.replace("{e}", " ").replace("{v}", " ").split())
  return words


def invented_words(count: int, rng: np.random.Generator, *, syllables: Sequence[int] = (2, 3),
                   exclude: set[str] = frozenset()) -> list[str]:
  """`count` distinct pronounceable invented words (consonant-vowel syllables).

  Args:
    count: how many.
    rng: NumPy random generator.
    syllables: allowed syllable counts.
    exclude: words not to produce (e.g. English template words).

  Returns:
    A list of `count` distinct lower-case words, none in `exclude`.
  """
  out: list[str] = []
  seen = set(exclude)
  while len(out) < count:
    need = count - len(out)
    n = 2 * need + 16
    lengths = rng.choice(np.asarray(syllables), size=n)
    cons = rng.integers(len(_CONSONANTS), size=(n, max(syllables)))
    vows = rng.integers(len(_VOWELS), size=(n, max(syllables)))
    for i in range(n):
      w = "".join(_CONSONANTS[cons[i, j]] + _VOWELS[vows[i, j]] for j in range(lengths[i]))
      if w not in seen:
        seen.add(w)
        out.append(w)
        if len(out) == count:
          break
  return out


@dataclasses.dataclass
class FactBase:
  """A fact base: facts (entity, relation, value), their passages and questions.

  Attributes:
    entities: [E] entity names, "first last".
    values: value words; a fact's value is an index into this list.
    pool_values: pool name -> [V_pool] int indices into `values`.
    subject: [F] int32 entity index of each fact.
    relation: [F] int32 relation index of each fact.
    value: [F] int32 value index of each fact.
    spare_entities: entity names not used by any fact (for inserting new
      entities by edits).
    relations: the relations.
  """
  entities: list[str]
  values: list[str]
  pool_values: dict[str, np.ndarray]
  subject: np.ndarray
  relation: np.ndarray
  value: np.ndarray
  spare_entities: list[str]
  relations: tuple[Relation, ...] = RELATIONS

  def __len__(self) -> int:
    return int(self.subject.shape[0])

  @property
  def num_relations(self) -> int:
    return len(self.relations)

  def statement_text(self, entity: str, relation: int, value: str) -> str:
    return self.relations[relation].statement.format(e=entity, v=value)

  def statement(self, fact: int) -> str:
    """The passage stating fact `fact`."""
    return self.statement_text(self.entities[self.subject[fact]], int(self.relation[fact]),
                               self.values[self.value[fact]])

  def statements(self, facts: Sequence[int] | np.ndarray | None = None) -> list[str]:
    """Passages of several facts (all by default)."""
    if facts is None:
      facts = range(len(self))
    return [self.statement(int(f)) for f in facts]

  def question_text(self, entity: str, relation: int, template: int, *,
                    paraphrase: bool = False) -> str:
    r = self.relations[relation]
    templates = r.paraphrases if paraphrase else r.questions
    return templates[template % len(templates)].format(e=entity)

  def question(self, fact: int, template: int = 0, *, paraphrase: bool = False) -> str:
    """A question about fact `fact` in question (or paraphrase) template `template`."""
    return self.question_text(self.entities[self.subject[fact]], int(self.relation[fact]),
                              template, paraphrase=paraphrase)

  def answer(self, fact: int) -> str:
    return self.values[self.value[fact]]

  def vocabulary(self) -> list[str]:
    """Every word a statement, question or answer can contain, sorted."""
    words = set(_template_words())
    for name in (*self.entities, *self.spare_entities):
      words.update(name.split())
    words.update(self.values)
    return sorted(words)

  def fact_index(self) -> dict[tuple[int, int], int]:
    """(entity, relation) -> fact index."""
    return {(int(e), int(r)): i
            for i, (e, r) in enumerate(zip(self.subject, self.relation))}

  def sample_edits(self, count: int, seed: int, *,
                   kinds: Sequence[str] = ("insert", "update", "delete"),
                   weights: Sequence[float] | None = None) -> list[Edit]:
    """`count` random edits on distinct (entity, relation) pairs.

    Inserts add a relation an existing entity does not have, or (half of
    them) a fact about a new entity from `spare_entities`; updates give a
    known fact a different value from the same pool; deletes forget a known
    fact.

    Args:
      count: number of edits.
      seed: random seed.
      kinds: which kinds to draw.
      weights: their probabilities (uniform by default).

    Returns:
      A list of `Edit`, in the order to apply them. Edits never touch the
      same (entity, relation) twice.
    """
    bad = set(kinds) - {"insert", "update", "delete"}
    if bad or not kinds:
      raise ValueError(f"kinds must be a non-empty subset of insert/update/delete; got {kinds}")
    rng = np.random.default_rng(seed)
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    chosen = rng.choice(len(kinds), size=count, p=p)
    known = self.fact_index()
    used: set[tuple[int, int]] = set()
    spare_next = 0
    edits: list[Edit] = []
    for c in chosen:
      kind = kinds[c]
      while True:
        if kind == "insert":
          relation = int(rng.integers(self.num_relations))
          if rng.random() < 0.5 and spare_next < len(self.spare_entities):
            entity = len(self.entities) + spare_next  # a new entity (see `entity_name`)
            spare_next += 1
          else:
            entity = int(rng.integers(len(self.entities)))
          if (entity, relation) in known or (entity, relation) in used:
            continue
          pool = self.pool_values[self.relations[relation].pool]
          edit = Edit("insert", entity, relation, -1, int(rng.choice(pool)), -1)
        else:
          fact = int(rng.integers(len(self)))
          entity, relation = int(self.subject[fact]), int(self.relation[fact])
          if (entity, relation) in used:
            continue
          old = int(self.value[fact])
          if kind == "update":
            pool = self.pool_values[self.relations[relation].pool]
            new = int(rng.choice(pool[pool != old]))
          else:
            new = -1
          edit = Edit(kind, entity, relation, old, new, fact)
        used.add((entity, relation))
        edits.append(edit)
        break
    return edits

  def entity_name(self, entity: int) -> str:
    """Name of entity `entity`; indices past `entities` name `spare_entities`."""
    if entity < len(self.entities):
      return self.entities[entity]
    return self.spare_entities[entity - len(self.entities)]


def generate(num_facts: int = 100_000, *, facts_per_entity: int = 4, seed: int = 0,
             num_spare_entities: int = 2_000) -> FactBase:
  """Generates a fact base, deterministically from `seed`.

  Args:
    num_facts: F, the number of facts (a multiple of `facts_per_entity` is
      used exactly; otherwise the last entity holds fewer).
    facts_per_entity: distinct relations per entity, 1..len(RELATIONS).
    seed: random seed.
    num_spare_entities: further entity names, unused by the facts, for edits
      that insert facts about new entities.

  Returns:
    A `FactBase` with `num_facts` facts on distinct (entity, relation) pairs.
  """
  num_facts = _checks.integer(num_facts, "num_facts")
  if not 1 <= facts_per_entity <= len(RELATIONS):
    raise ValueError(f"facts_per_entity must be in [1, {len(RELATIONS)}]; "
                     f"got {facts_per_entity}")
  num_entities = -(-num_facts // facts_per_entity)
  total_names = num_entities + num_spare_entities
  if total_names > NUM_FIRST_NAMES * NUM_LAST_NAMES:
    raise ValueError(f"num_facts / facts_per_entity + num_spare_entities must be at most "
                     f"{NUM_FIRST_NAMES * NUM_LAST_NAMES} entities; got {total_names}")
  rng = np.random.default_rng(seed)
  exclude = _template_words()
  words = invented_words(NUM_FIRST_NAMES + NUM_LAST_NAMES + sum(
      n for k, n in POOL_SIZES.items() if k != "year"), rng, exclude=exclude)
  first = words[:NUM_FIRST_NAMES]
  last = words[NUM_FIRST_NAMES:NUM_FIRST_NAMES + NUM_LAST_NAMES]
  rest = words[NUM_FIRST_NAMES + NUM_LAST_NAMES:]
  values: list[str] = []
  pool_values: dict[str, np.ndarray] = {}
  for pool, n in POOL_SIZES.items():
    if pool == "year":
      new = [str(FIRST_YEAR + i) for i in range(n)]
    else:
      new, rest = rest[:n], rest[n:]
    pool_values[pool] = np.arange(len(values), len(values) + n, dtype=np.int32)
    values.extend(new)
  pairs = rng.choice(NUM_FIRST_NAMES * NUM_LAST_NAMES, size=total_names, replace=False)
  names = [f"{first[p // NUM_LAST_NAMES]} {last[p % NUM_LAST_NAMES]}" for p in pairs]
  # Each entity takes `facts_per_entity` distinct relations: the first columns
  # of a random permutation per row.
  perms = np.argsort(rng.random((num_entities, len(RELATIONS))), axis=1)
  relation = perms[:, :facts_per_entity].reshape(-1)[:num_facts].astype(np.int32)
  subject = np.repeat(np.arange(num_entities, dtype=np.int32), facts_per_entity)[:num_facts]
  value = np.empty(num_facts, np.int32)
  for r, rel in enumerate(RELATIONS):
    sel = relation == r
    pool = pool_values[rel.pool]
    value[sel] = pool[rng.integers(len(pool), size=int(sel.sum()))]
  # Shuffle the facts so that neighbouring indices are unrelated.
  order = rng.permutation(num_facts)
  return FactBase(entities=names[:num_entities], values=values, pool_values=pool_values,
                  subject=subject[order], relation=relation[order], value=value[order],
                  spare_entities=names[num_entities:])


_CHAT = (
    "how was your day ?", "the weather is lovely today .", "did you sleep well ?",
    "i made some tea , do you want a cup ?", "that sounds like a good plan .",
    "let me check my calendar first .", "i am running a bit late today .",
    "have you seen the new film everyone talks about ?", "thanks , that helps a lot .",
    "shall we meet again next week ?", "i need to buy groceries after work .",
    "the train was crowded this morning .", "sorry , could you say that again ?",
    "i think it will rain tomorrow .", "what are you reading at the moment ?",
    "my phone battery is almost empty .", "let us talk about something else .",
    "i finally finished that report .", "the coffee here is really good .",
    "ok , noted .",
)


class Dialogue(NamedTuple):
  """A synthetic dialogue: facts told early, chatter, then questions about the facts.

  Attributes:
    turns: (speaker, text) in order.
    questions: questions asked at the end, one per told fact.
    answers: their answers.
    fact_turn: for each question, the index of the turn that told its fact.
    facts: for each question, the index of its fact in the fact base.
  """
  turns: list[tuple[str, str]]
  questions: list[str]
  answers: list[str]
  fact_turn: list[int]
  facts: list[int]


def dialogue(base: FactBase, num_facts: int = 10, num_chatter: int = 100,
             seed: int = 0) -> Dialogue:
  """A dialogue in which the user tells `num_facts` facts among `num_chatter` other turns.

  The facts are told in the first half of the dialogue, so that by the end
  they lie far outside any short context window.

  Args:
    base: the fact base the facts come from.
    num_facts: facts told (and asked about).
    num_chatter: turns of small talk, alternating between "user" and "assistant".
    seed: random seed.

  Returns:
    A `Dialogue`.
  """
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(base), size=num_facts, replace=False)
  turns: list[tuple[str, str]] = []
  chatter = [_CHAT[i] for i in rng.integers(len(_CHAT), size=num_chatter)]
  slots = np.sort(rng.choice(max(num_chatter // 2, num_facts), size=num_facts, replace=False))
  fact_turn = []
  c = 0
  for i, f in enumerate(chosen):
    while c < slots[i]:
      turns.append(("user" if len(turns) % 2 == 0 else "assistant", chatter[c]))
      c += 1
    fact_turn.append(len(turns))
    turns.append(("user", base.statement(int(f))))
  while c < num_chatter:
    turns.append(("user" if len(turns) % 2 == 0 else "assistant", chatter[c]))
    c += 1
  questions = [base.question(int(f), int(rng.integers(3))) for f in chosen]
  return Dialogue(turns=turns, questions=questions, answers=[base.answer(int(f)) for f in chosen],
                  fact_turn=fact_turn, facts=[int(f) for f in chosen])
