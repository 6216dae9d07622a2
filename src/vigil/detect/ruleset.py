"""Loading rules from files, and matching events against many rules at once.

Cost per event must not grow with the rule count, so an event meets only
the rules that could fire on it:

1. **Routing**: each event kind has the logsources that cover it (an
   accept never meets a process_creation rule).
2. **Literal index** (_Group): each rule's requirements (compile.py: the
   clauses of literals it needs, the literals that rule it out) are checked
   with one probe per field (an exact-value table, a basename table, one
   Aho-Corasick automaton for substrings) and bit masks; a rule goes on
   only when all of them hold, and a *decided* rule (its requirements are
   its whole condition) fires without its condition running.  Rules with
   no required literal (a regex alone, a negation) are candidates on every
   event of their source, still filtered by what they forbid.
3. **Memories**: probe results per field value, and what a combination of
   hits means, are remembered (bounded): repeats cost a lookup.

docs/detection.md ("Speed") tells the whole story.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from operator import itemgetter

import ahocorasick_rs
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from . import fields as fieldmap
from .compile import INVALID, NEVER_FIRES, Rule, View, compile_rule

RULE_SUFFIXES = (".yml", ".yaml")


def rule_files(paths: Iterable[str]) -> list[str]:
    """Every rule file under `paths` (files given directly are kept as is)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out.extend(
                    os.path.join(root, f) for f in sorted(files) if f.endswith(RULE_SUFFIXES)
                )
        else:
            out.append(p)
    return out


def _invalid(path: str, why: str, rid: str = "") -> Rule:
    return Rule(rid, "", "", [], path, INVALID, [why])


def _raw_id(text: str) -> str:
    """The `id:` of a rule pySigma refused, for the error line (one-rule files)."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return ""
    if len(docs) == 1 and isinstance(docs[0], dict):
        return str(docs[0].get("id", "") or "")
    return ""


def load_file(path: str, getters: dict) -> list[Rule]:
    """The rules of one file, each with a verdict; never raises for content."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        return [_invalid(path, f"cannot read: {getattr(err, 'strerror', None) or err}")]
    try:
        coll = SigmaCollection.from_yaml(text, collect_errors=True)
    except (SigmaError, ValueError, TypeError, AttributeError) as err:
        return [_invalid(path, f"{type(err).__name__}: {err}")]
    except Exception as err:  # yaml errors and pySigma bugs on crafted input alike
        return [
            _invalid(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        ]
    out = []
    # the collection repeats the errors of the rules it holds: keep the others
    held = {str(e) for r in coll.rules for e in getattr(r, "errors", ())}
    errors = [e for e in coll.errors if str(e) not in held]
    if errors:  # pySigma reports each problem of a refused rule: one verdict, every reason
        bad = _invalid(path, "", _raw_id(text))
        bad.reasons = list(dict.fromkeys(str(e) for e in errors))
        out.append(bad)
    for item in coll.rules:
        if not isinstance(item, SigmaRule):
            r = _invalid(path, "", str(getattr(item, "id", "") or ""))
            r.title = getattr(item, "title", "") or ""
            r.verdict = NEVER_FIRES
            r.reasons = [f"{type(item).__name__} (correlations and filters are not evaluated)"]
            out.append(r)
            continue
        try:
            out.append(compile_rule(item, path, getters))
        except Exception as err:  # a rule pySigma accepted but we cannot compile
            out.append(_invalid(path, f"{type(err).__name__}: {err}", str(item.id or "")))
    if not out:
        out.append(_invalid(path, "no rule in file"))
    return out


def load(paths: Iterable[str]) -> tuple[RuleSet, list[Rule]]:
    """(the loadable rules as a RuleSet, every rule with its verdict)."""
    getters: dict = {}
    rules: list[Rule] = []
    for path in rule_files(paths):
        rules.extend(load_file(path, getters))
    seen: dict[str, Rule] = {}
    for r in rules:
        if r.loadable and r.id:
            if r.id in seen:
                r.verdict = INVALID
                r.reasons = [f"duplicate rule id (also in {seen[r.id].path})"]
            else:
                seen[r.id] = r
    return RuleSet([r for r in rules if r.loadable], getters), rules


class _Group:
    """The rules of one logsource, indexed by their literals.

    Every atom of every rule (each required clause and the forbidden atoms)
    gets a bit.  A field is probed at most once per event, for all of its
    atoms together: one dict lookup for equality, one for the basename, one
    Aho-Corasick pass for every substring.  Each rule is indexed by one
    clause (one per branch for a decided `1 of selection_*`), the one least
    likely to hold on a field many rules share (so an event probes few
    fields); the hits of those fields name the candidates, and a candidate
    goes on only if each of its other clauses has a hit and no forbidden
    atom does (fields no indexed clause needs are probed when a candidate
    first needs them).  Per-event cost is then the probes of a bounded set
    of fields plus the rules that could really fire, whatever the count.
    """

    def __init__(self, source: fieldmap.LogSource, getters: dict):
        self.source = source
        self.getters = getters
        self.rules: list[Rule] = []

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)

    def build(self) -> None:
        rules = self.rules
        atoms = sorted(
            {a for r in rules for c in r.clauses for a in c}
            | {a for r in rules for a in r.forbidden}
            | {a for r in rules for cs, f in r.branches or () for c in [*cs, f] for a in c}
        )
        ids = {a: i for i, a in enumerate(atoms)}
        self.bits = [1 << i for i in range(len(atoms))]
        tables: dict[str, tuple[dict, dict, dict]] = {}
        for (how, name, lit), i in ids.items():
            t = tables.setdefault(name, ({}, {}, {}))
            t[("eq", "base", "sub").index(how)][lit] = i
        # field -> (name, getter, memo, event key, equality table,
        #           basename table, automaton, atom id per pattern, raw key)
        self.probes: dict[str, tuple] = {}
        for name, (exact, base, subs) in tables.items():
            pats = list(subs)
            ac = ahocorasick_rs.AhoCorasick(pats) if pats else None
            getter = self.getters.get(name) or fieldmap.getter(self.source, name)
            self.probes[name] = (
                name,
                getter,
                {},
                getattr(getter, "evkey", None),
                exact or None,
                base or None,
                ac,
                [subs[p] for p in pats],
                getattr(getter, "rawkey", None),
            )
        # the indexed clause: the one an event is least likely to hold, counting
        # a field's probe shared among the rules indexed on that field
        share: dict[str, int] = {}
        for r in rules:
            clauses = [c for cs, _f in r.branches or [(r.clauses, None)] for c in cs]
            for f in {a[1] for c in clauses for a in c}:
                share[f] = share.get(f, 0) + 1

        def cost(clause: frozenset) -> float:
            # a field probe costs about what three candidate checks do
            probe = max(_PROBE_COST / share[a[1]] for a in clause)
            return min(1.0, sum(_likely(a) for a in clause)) + probe

        # atom id -> [(rule, alternatives)]: a candidate passes if all the
        # checks of one alternative do (a decided rule: one per branch)
        self.index: dict[int, list] = {}
        self.always: list = []  # no required atom: every event is a candidate
        first: set[str] = set()
        for rule in rules:
            if rule.branches is None:  # one alternative: its necessary conditions
                primary = min(rule.clauses, key=cost) if rule.clauses else None
                checks = [self._check(c, ids, True) for c in rule.clauses if c is not primary]
                if rule.forbidden:
                    checks.append(self._check(rule.forbidden, ids, False))
                alts = (tuple(checks),)
            else:  # indexed by one clause of each branch; a branch checks all of its own
                heads = [min(cs, key=cost) if cs else None for cs, _f in rule.branches]
                primary = None if None in heads else frozenset().union(*heads)
                alts = tuple(
                    tuple(self._check(c, ids, True) for c in cs)
                    + ((self._check(f, ids, False),) if f else ())
                    for cs, f in rule.branches
                )
            entry = (rule, alts)
            if primary is None:
                self.always.append(entry)
                continue
            for a in primary:
                self.index.setdefault(ids[a], []).append(entry)
                first.add(a[1])
        # a field read straight from one event key costs a lookup when its
        # value repeats: probe those eagerly too, so that the plan decides
        # the checks on them once per combination (`User: root` filters)
        for rule in rules:
            for cs, forbidden in rule.branches or [(rule.clauses, rule.forbidden)]:
                for f in {a[1] for c in [*cs, forbidden] for a in c}:
                    if self.probes[f][3] is not None:
                        first.add(f)
        self.first = tuple(self.probes[n] for n in self.probes if n in first)
        self.plans: dict[tuple, tuple] = {}
        # the indexed fields read from one event key each (Image, User,
        # EffectiveUserId...) are remembered together, by the tuple of those
        # keys' raw values (itemgetter builds it in C): one lookup for all
        keyed = [p for p in self.first if p[3] is not None]
        self.ident = itemgetter(*[p[3] for p in keyed]) if len(keyed) > 1 else None
        self.ident_probes = tuple(keyed)
        self.ident_memo: dict[tuple, tuple] = {}
        self.rest = tuple(p for p in self.first if p[3] is None) if self.ident else self.first
        self.first_names = frozenset(first)

    @staticmethod
    def _check(atoms: frozenset, ids: dict, want: bool) -> tuple:
        mask = 0
        for a in atoms:
            mask |= 1 << ids[a]
        return tuple(sorted({a[1] for a in atoms})), mask, want

    @staticmethod
    def _probe(view: View, probe: tuple) -> tuple[int, ...]:
        """The atoms of one field that this event holds.

        Remembered per value (executables, users, parents and many command
        lines repeat): a repeat costs one dict lookup instead of lowering,
        two table lookups and an automaton pass.  A field that is a function
        of one event key alone (`evkey`) is remembered per value of that key,
        so a repeat does not even run the getter."""
        name, getter, memo, evkey, exact, base, ac, pat_ids, rawkey = probe
        if evkey is not None:
            k = view.ev.get(evkey)
        elif rawkey is not None:
            k = rawkey(view.ev)
        else:
            raw = view.raw
            k = raw.get(name, _UNSET)
            if k is _UNSET:
                k = raw[name] = getter(view.ev, view.ctx)
        t = type(k)
        keep = t is int or ((t is str or t is bytes) and len(k) <= _MEMO_LEN)
        if keep:
            ids = memo.get(k)
            if ids is not None:
                return ids
        s = view.lower(name)
        found: list[int] = []
        if s is not None:
            if exact is not None:
                i = exact.get(s)
                if i is not None:
                    found.append(i)
            if base is not None:
                _head, slash, name_ = s.rpartition("/")
                i = base.get(name_) if slash else None
                if i is not None:
                    found.append(i)
            if ac is not None:
                found.extend(pat_ids[m[0]] for m in ac.find_matches_as_indexes(s, overlapping=True))
        ids = tuple(dict.fromkeys(found))
        if keep:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[k] = ids
        return ids

    def candidates(self, view: View) -> list[Rule]:
        probe = self._probe
        hit: list[int] = []
        # the indexed fields; a value seen before costs one lookup (_probe
        # inlined for that case: this loop is the per-event floor)
        raw, ev = view.raw, view.ev
        if self.ident is not None:
            try:
                k = self.ident(ev)
                ids = self.ident_memo.get(k)
            except (KeyError, TypeError):  # a key missing, a value unhashable
                k = ids = None
            if ids is None:
                ids = ()
                for p in self.ident_probes:
                    ids += probe(view, p)
                if k is not None:
                    if len(self.ident_memo) >= _MEMO_SIZE:
                        self.ident_memo.clear()
                    self.ident_memo[k] = ids
            if ids:
                hit.extend(ids)
        for p in self.rest:
            evkey = p[3]
            if evkey is not None:
                k = ev.get(evkey)
            elif p[8] is not None:
                k = p[8](ev)
            else:
                k = raw[p[0]] = p[1](ev, view.ctx)
            t = type(k)
            ids = p[2].get(k) if t is str or t is bytes or t is int else None
            if ids is None:
                ids = probe(view, p)
            if ids:
                hit.extend(ids)
        if not hit and not self.always:
            return []
        # what a combination of hits means (the mask, the candidates in rule
        # order) is worked out once per combination: they repeat too
        key = tuple(hit)
        plan = self.plans.get(key)
        if plan is None:
            plan = self._plan(hit)
        mask, entries = plan
        out: list[Rule] = []
        probed = self.first_names
        bits = self.bits
        for rule, alts in entries:
            # checks on the indexed fields were decided by the plan: what is
            # left needs fields this event has not probed yet
            for checks in alts:
                for names, cmask, want in checks:
                    for name in names:
                        if name not in probed:
                            probed = probed | {name}
                            for i in probe(view, self.probes[name]):
                                mask |= bits[i]
                    if (cmask & mask != 0) is not want:
                        break
                else:
                    out.append(rule)
                    break
        return out

    def _plan(self, hit: list[int]) -> tuple[int, list]:
        """(mask of the hits, [(rule, checks left)] in rule order) for one
        combination of hits on the indexed fields."""
        index, bits = self.index, self.bits
        mask = 0
        entries: dict[int, tuple] = {}
        for i in hit:
            mask |= bits[i]
            for e in index.get(i, ()):
                entries[id(e[0])] = e
        for e in self.always:
            entries[id(e[0])] = e
        first = self.first_names
        kept = []
        for rule, alts in sorted(entries.values(), key=_entry_order):
            left_alts = []
            for checks in alts:
                left = []
                for check in checks:
                    names, cmask, want = check
                    if not first.issuperset(names):
                        left.append(check)
                    elif (cmask & mask != 0) is not want:
                        break
                else:
                    if not left:  # decided by the indexed fields alone
                        left_alts = [()]
                        break
                    left_alts.append(tuple(left))
            if left_alts:
                kept.append((rule, tuple(left_alts)))
        plan = mask, kept
        if len(self.plans) >= _MEMO_SIZE:
            self.plans.clear()
        self.plans[tuple(hit)] = plan
        return plan


def _entry_order(entry: tuple) -> int:
    return entry[0].order


# a field's probe results are remembered for this many values, each at
# most this long (a crafted stream of long unique command lines must not
# grow memory)
_MEMO_SIZE, _MEMO_LEN = 4096, 512
_UNSET = object()


_PROBE_COST = 3.0
# Values most events of their field hold: a clause of them is a poor index.
_COMMON = frozenset(
    [
        "0",
        "root",
        "true",
        "false",
        "sh",
        "bash",
        "dash",
        "zsh",
        "ksh",
        "env",
        "python",
        "python3",
        "perl",
        "cat",
        "ls",
        "grep",
        "head",
        "tail",
        "sed",
        "awk",
        "find",
        "id",
        "whoami",
        "uname",
        "date",
        "sort",
        "cut",
        "wc",
    ]
)


def _likely(atom: tuple) -> float:
    """A rough chance that an event holds `atom`: common values and short
    substrings (`-r`, ` -c `) are held by many events."""
    how, _name, lit = atom
    if how != "sub":
        return 0.5 if lit in _COMMON else 0.02
    return (1.0, 0.9, 0.5, 0.2, 0.1)[len(lit)] if len(lit) < 5 else 0.03


class RuleSet:
    """Loadable rules, routed by event kind and indexed by literals."""

    def __init__(self, rules: list[Rule], getters: dict | None = None):
        self.rules = rules
        getters = getters or {}
        self.groups: dict[int, _Group] = {}
        for i, rule in enumerate(rules):
            rule.order = i
            g = self.groups.get(id(rule.source))
            if g is None:
                g = self.groups[id(rule.source)] = _Group(
                    rule.source, getters.setdefault(id(rule.source), {})
                )
            g.add(rule)
        self.routes: dict[str, list[_Group]] = {}
        for g in self.groups.values():
            g.build()
            for kind in g.source.kinds:
                self.routes.setdefault(kind, []).append(g)
        # for the bench and tests: candidates the index let through, and
        # conditions run (a decided candidate needs none)
        self.considered = 0
        self.evaluated = 0

    def __len__(self) -> int:
        return len(self.rules)

    def forget(self, everything: bool = False) -> None:
        """Drop what the index remembered of derived fields (command lines,
        the parent's image), or `everything`: the bench's cold cases."""
        for g in self.groups.values():
            if everything:
                g.plans.clear()
                g.ident_memo.clear()
            for p in g.probes.values():
                if everything or p[3] is None:
                    p[2].clear()

    def match(self, ev: dict, ctx) -> list[tuple[Rule, View]]:
        """The rules that fire on `ev`, with the view they saw."""
        groups = self.routes.get(ev["kind"])
        if not groups:
            return []
        hits = []
        for g in groups:
            accepts = g.source.accepts
            if accepts is not None and not accepts(ev):
                continue
            view = View(ev, ctx, g.getters)
            cands = g.candidates(view)
            self.considered += len(cands)
            for rule in cands:
                if rule.decided:  # the index's checks were the whole condition
                    hits.append((rule, view))
                    continue
                self.evaluated += 1
                if rule.condition(view):
                    hits.append((rule, view))
        return hits
