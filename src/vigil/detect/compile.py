"""A Sigma rule, parsed by pySigma, compiled into Vigil's matcher.

pySigma parses the YAML, applies the value modifiers (contains, windash,
base64offset, cidr, re, lt/gte, exists, ...) and parses the condition;
this module turns its detection items and condition tree into closures
over a `View` (the event's fields, read once and cached per event), and
works out for each rule:

* its verdict: `can-fire`, `degraded` (a field or modifier Vigil lacks
  removes a branch or a filter: the reasons say which), `never-fires`
  (why), or `invalid` (the parse error);
* its *required literals* ("atoms"): a set of (how, field, text) of which
  at least one must hold for the rule to fire, or None when no such set
  exists.  The engine indexes rules by them (engine.py).

An item on a field Vigil cannot know is false (an unconfirmed claim never
raises an alert), and the condition is folded with that constant: a
selection that needs it cannot fire, a filter that needs it is dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
)
from sigma.exceptions import SigmaError
from sigma.modifiers import modifier_mapping
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from . import fields as fieldmap

try:  # linear-time regexes: a crafted command line cannot stall the agent
    import re2
except ImportError:  # pragma: no cover - pysigma depends on google-re2
    re2 = None

CAN_FIRE, DEGRADED, NEVER_FIRES, INVALID = "can-fire", "degraded", "never-fires", "invalid"
PATH_FIELDS = {"Image", "ParentImage", "TargetFilename"}
# modifiers that encode strings as Windows does: nothing on Linux holds them
_WINDOWS_ENCODINGS = {"SigmaWideModifier", "SigmaUTF16Modifier", "SigmaUTF16BEModifier"}

_SIGMA_NAMES = {cls.__name__: name for name, cls in modifier_mapping.items()}
Pred = Callable[["View"], bool]
Atom = tuple[str, str, str]  # ("eq" | "base" | "sub", field, lowered text)


class View:
    """One event's fields, each read (and lowered) at most once."""

    __slots__ = ("ctx", "ev", "getters", "low", "raw")

    def __init__(self, ev: dict, ctx, getters: dict):
        self.ev, self.ctx, self.getters = ev, ctx, getters
        self.raw: dict = {}
        self.low: dict = {}

    def get(self, name: str):
        raw = self.raw
        v = raw.get(name, _UNSET)
        if v is _UNSET:
            v = raw[name] = self.getters[name](self.ev, self.ctx)
        return v

    def lower(self, name: str) -> str | None:
        low = self.low
        s = low.get(name, _UNSET)
        if s is _UNSET:  # self.get() inlined: this is the matcher's hottest path
            raw = self.raw
            v = raw.get(name, _UNSET)
            if v is _UNSET:
                v = raw[name] = self.getters[name](self.ev, self.ctx)
            s = low[name] = None if v is None else (v if type(v) is str else _str(v)).lower()
        return s

    def text(self, name: str) -> str | None:
        v = self.get(name)
        return None if v is None else v if type(v) is str else _str(v)

    def utf8(self, name: str) -> bytes | None:
        """The field as UTF-8 bytes, for RE2 (no per-match offset conversion)."""
        key = (name, "utf8")
        b = self.low.get(key, _UNSET)
        if b is _UNSET:
            t = self.text(name)
            b = self.low[key] = None if t is None else t.encode("utf-8", "surrogatepass")
        return b


_UNSET = object()


def _str(v) -> str:
    if v is True or v is False:
        return "true" if v else "false"
    return str(v)


# -- the compiled tree -----------------------------------------------------------
@dataclass
class Node:
    """and / or / not / item / const; items carry their predicate and atoms."""

    op: str
    args: list = field(default_factory=list)
    pred: Pred | None = None
    atoms: frozenset | None = None
    value: bool = False  # for const
    fields: tuple = ()
    # an item that holds exactly when one of its atoms does (not merely only
    # if): its negation forbids them, which the index can check
    exact: bool = False


TRUE, FALSE = Node("const", value=True), Node("const", value=False)


def _and(args: list[Node]) -> Node:
    if any(a.op == "const" and not a.value for a in args):
        return FALSE
    args = [a for a in args if a.op != "const"]
    return TRUE if not args else args[0] if len(args) == 1 else Node("and", args)


def _or(args: list[Node]) -> Node:
    if any(a.op == "const" and a.value for a in args):
        return TRUE
    args = [a for a in args if a.op != "const"]
    return FALSE if not args else args[0] if len(args) == 1 else Node("or", args)


def _not(arg: Node) -> Node:
    if arg.op == "const":
        return FALSE if arg.value else TRUE
    return Node("not", [arg])


class Unsupported(Exception):
    """A value or modifier Vigil cannot evaluate; the item is then false."""


@dataclass
class Compiler:
    """Compiles one rule's detections for one logsource."""

    source: fieldmap.LogSource
    getters: dict  # shared by every rule of the source: field -> getter
    missing: list[str] = field(default_factory=list)  # why items are false

    # -- values ------------------------------------------------------------------
    def value(self, name: str, v) -> tuple[Pred, Atom | None]:
        if isinstance(v, SigmaExpansion):  # windash, base64offset: any of them
            parts = [self.value(name, x) for x in v.values]
            preds = [p for p, _ in parts]
            atoms = [a for _, a in parts]
            return (lambda view: any(p(view) for p in preds)), (
                None if None in atoms else ("any", name, tuple(atoms))
            )
        if isinstance(v, SigmaString):
            return self.string(name, v)
        if isinstance(v, SigmaNumber):
            text = _str(v.number)
            return (lambda view: view.lower(name) == text), ("eq", name, text)
        if isinstance(v, SigmaBool):
            text = "true" if v.boolean else "false"
            return (lambda view: view.lower(name) == text), ("eq", name, text)
        if isinstance(v, SigmaNull):
            return (lambda view: not view.lower(name)), None
        if isinstance(v, SigmaExists):
            want = bool(v.exists)
            return (lambda view: (view.get(name) is not None) == want), None
        if isinstance(v, SigmaRegularExpression):
            lits = regex_literals(str(v.regexp))
            atom = None
            if lits:
                atoms = [_sub(name, x) for x in lits]
                atom = None if None in atoms else ("any", name, tuple(atoms))
            return self.regex(name, v), atom
        if isinstance(v, SigmaCIDRExpression):
            return self.cidr(name, v.network), None
        if isinstance(v, SigmaCompareExpression):
            return self.compare(name, v), None
        raise Unsupported(f"{type(v).__name__} values ({name})")

    def string(self, name: str, v: SigmaString) -> tuple[Pred, Atom | None]:
        parts = list(v.s)
        if any(isinstance(p, Placeholder) for p in parts):
            raise Unsupported(f"placeholder in {name}")
        cased = isinstance(v, SigmaCasedString)
        get = (lambda view: view.text(name)) if cased else (lambda view: view.lower(name))
        fix = (lambda s: s) if cased else str.lower
        star, one = SpecialChars.WILDCARD_MULTI, SpecialChars.WILDCARD_SINGLE
        shape = tuple("*" if p is star else "?" if p is one else "s" for p in parts)
        lits = [fix(p) for p in parts if isinstance(p, str)]
        if shape == ("s",):
            lit = lits[0]
            return (lambda view: get(view) == lit), ("eq", name, lit.lower())
        if shape == ("*", "s", "*"):
            lit = lits[0]
            return (lambda view: (s := get(view)) is not None and lit in s), _sub(name, lit)
        if shape == ("s", "*"):
            lit = lits[0]
            return (lambda view: (s := get(view)) is not None and s.startswith(lit)), _sub(
                name, lit
            )
        if shape == ("*", "s"):
            lit = lits[0]
            pred = lambda view: (s := get(view)) is not None and s.endswith(lit)  # noqa: E731
            base = lit.lower().rpartition("/")[2]
            if name in PATH_FIELDS and "/" in lit and base:
                return pred, ("base", name, base)
            return pred, _sub(name, lit)
        if shape == ("*",):
            return (lambda view: get(view) is not None), None
        pattern = "".join(
            ".*" if p is star else "." if p is one else re.escape(fix(p)) for p in parts
        )
        rx = re.compile(pattern, re.DOTALL)
        longest = max(lits, key=len, default="")
        return (lambda view: (s := get(view)) is not None and rx.fullmatch(s) is not None), (
            _sub(name, longest) if longest else None
        )

    def regex(self, name: str, v: SigmaRegularExpression) -> Pred:
        flags = v.flags
        pattern = str(v.regexp)
        inline = "".join(
            c
            for f, c in (
                (SigmaRegularExpressionFlag.IGNORECASE, "i"),
                (SigmaRegularExpressionFlag.MULTILINE, "m"),
                (SigmaRegularExpressionFlag.DOTALL, "s"),
            )
            if f in flags
        )
        full = f"(?{inline}){pattern}" if inline else pattern
        if re2 is not None:
            try:
                search = re2.compile(full.encode()).search
            except Exception:  # re2 lacks backreferences and lookarounds
                pass
            else:
                return lambda view: (b := view.utf8(name)) is not None and search(b) is not None
        try:
            search = re.compile(full).search
        except re.error as err:
            raise Unsupported(f"regex {pattern!r} ({err})") from None
        return lambda view: (s := view.text(name)) is not None and search(s) is not None

    def cidr(self, name: str, net) -> Pred:
        def pred(view: View) -> bool:
            s = view.text(name)
            if not s:
                return False
            try:
                return ipaddress.ip_address(s) in net
            except ValueError:
                return False

        return pred

    def compare(self, name: str, v: SigmaCompareExpression) -> Pred:
        n = v.number.number
        op = {
            CompareOperators.LT: lambda x: x < n,
            CompareOperators.LTE: lambda x: x <= n,
            CompareOperators.GT: lambda x: x > n,
            CompareOperators.GTE: lambda x: x >= n,
            CompareOperators.NEQ: lambda x: x != n,
        }[v.op]

        def pred(view: View) -> bool:
            x = view.get(name)
            if type(x) is not int and type(x) is not float:
                try:
                    x = float(x)
                except (TypeError, ValueError):
                    return False
            return op(x)

        return pred

    # -- items and detections ------------------------------------------------------
    def item(self, item: SigmaDetectionItem) -> Node:
        name = item.field
        mods = {m.__name__ for m in item.modifiers}
        if mods & _WINDOWS_ENCODINGS:
            names = sorted(_SIGMA_NAMES.get(m, m) for m in mods & _WINDOWS_ENCODINGS)
            self.missing.append(f"modifier {'/'.join(names)} (a Windows string encoding)")
            return FALSE
        if name is None:
            return self.keywords(item)
        get = fieldmap.getter(self.source, name)
        if get is None:
            self.missing.append(f"field {name}")
            return FALSE
        self.getters[name] = get
        if not item.value:  # `Field:` with no value: null
            item_values = [SigmaNull()]
        else:
            item_values = item.value
        try:
            compiled = [self.value(name, v) for v in item_values]
        except Unsupported as err:
            self.missing.append(str(err))
            return FALSE
        fast = _simple_strings(name, item_values, item.value_linking is ConditionAND)
        if fast is not None:
            compiled = [(fast, a) for _, a in compiled]
        preds = [p for p, _ in compiled[:1]] if fast is not None else [p for p, _ in compiled]
        atoms = [a for _, a in compiled]
        if item.value_linking is ConditionAND:
            pred = preds[0] if len(preds) == 1 else (lambda view: all(p(view) for p in preds))
            known = [frozenset(_flat(a)) for a in atoms if a is not None]
            atomset = _best(known) if known else None
        else:
            pred = preds[0] if len(preds) == 1 else (lambda view: any(p(view) for p in preds))
            atomset = None if None in atoms else frozenset(x for a in atoms for x in _flat(a))
        exact = atomset is not None and (
            len(item_values) == 1 or item.value_linking is not ConditionAND
        )
        exact = exact and all(_exact(name, v) for v in item_values)
        node = Node("item", pred=pred, atoms=atomset, fields=(name,), exact=exact)
        if item.negated:
            return _not(node)
        return node

    def keywords(self, item: SigmaDetectionItem) -> Node:
        """A value with no field: searched in every field of the logsource."""
        names = [n for n in self.source.fields if fieldmap.getter(self.source, n) is not None]
        for n in names:
            self.getters[n] = fieldmap.getter(self.source, n)
        preds = []
        for v in item.value:
            if isinstance(v, SigmaString) and not v.contains_special():
                v = SigmaString("*") + v + SigmaString("*")
            try:
                preds.extend(self.value(n, v)[0] for n in names)
            except Unsupported as err:
                self.missing.append(str(err))
                return FALSE
        pred = lambda view: any(p(view) for p in preds)  # noqa: E731
        return Node("item", pred=pred, atoms=None, fields=tuple(names))

    def detection(self, det: SigmaDetection) -> Node:
        kids = [
            self.detection(d) if isinstance(d, SigmaDetection) else self.item(d)
            for d in det.detection_items
        ]
        return _and(kids) if det.item_linking is ConditionAND else _or(kids)


def _exact(name: str, v) -> bool:
    """True when the value's atom is its whole test, as the index computes
    it: equality or `contains` on the lowered field (case-insensitive),
    numbers and booleans as lowered text, a path ending in `/NAME` (the
    basename table).  Other prefixes and suffixes, wildcards, cased strings
    and regexes give atoms that are only necessary."""
    if isinstance(v, SigmaExpansion):
        return all(_exact(name, x) for x in v.values)
    if isinstance(v, SigmaNumber | SigmaBool):
        return True
    if type(v) is not SigmaString:
        return False
    star = SpecialChars.WILDCARD_MULTI
    shape = tuple("*" if p is star else "s" if isinstance(p, str) else "?" for p in v.s)
    if shape == ("*", "s") and name in PATH_FIELDS:
        lit = v.s[1].lower()
        return len(lit) > 1 and lit.rfind("/") == 0
    return shape == ("s",) or (shape == ("*", "s", "*") and bool(v.s[1]))


def decided(node: Node) -> bool:
    """True when requirements(node) is also sufficient: the index's verdict
    is the rule's, and the condition need not run (an AND of exact items,
    of ORs of them and of their negations)."""
    if node.op == "item":
        return node.exact
    if node.op == "not":
        return exact_atoms(node.args[0]) is not None
    if node.op == "and":
        return all(decided(a) for a in node.args)
    if node.op == "or":
        return exact_atoms(node) is not None
    return False


def _simple_strings(name: str, values: list, all_of: bool) -> Pred | None:
    """One closure for a list of plain case-insensitive strings on one field
    (equals / contains / startswith / endswith): the field is fetched once
    and str's tuple forms do the loop in C.  None when the list has other
    shapes (those keep one predicate per value)."""
    if len(values) < 2:
        return None
    star = SpecialChars.WILDCARD_MULTI
    eq, sw, ew, co = [], [], [], []
    for v in values:
        if type(v) is not SigmaString:
            return None
        parts = list(v.s)
        strs = [p for p in parts if isinstance(p, str)]
        shape = tuple("*" if p is star else "s" if isinstance(p, str) else "?" for p in parts)
        lit = strs[0].lower() if strs else ""
        if shape == ("s",):
            eq.append(lit)
        elif shape == ("s", "*"):
            sw.append(lit)
        elif shape == ("*", "s"):
            ew.append(lit)
        elif shape == ("*", "s", "*"):
            co.append(lit)
        else:
            return None
    if all_of:
        eqs, sws, ews, cos = eq, sw, ew, co

        def pred_all(view: View) -> bool:
            s = view.lower(name)
            if s is None:
                return False
            return (
                all(s == x for x in eqs)
                and all(s.startswith(x) for x in sws)
                and all(s.endswith(x) for x in ews)
                and all(x in s for x in cos)
            )

        return pred_all
    eqset, swt, ewt, cot = frozenset(eq), tuple(sw), tuple(ew), tuple(co)

    def pred_any(view: View) -> bool:
        s = view.lower(name)
        if s is None:
            return False
        if s in eqset or (swt and s.startswith(swt)) or (ewt and s.endswith(ewt)):
            return True
        for x in cot:  # noqa: SIM110 - a plain loop is faster than any() over a generator
            if x in s:
                return True
        return False

    return pred_any


def regex_literals(pattern: str) -> list[str] | None:
    """Strings one of which every match of `pattern` contains, or None.

    Reads Python's parse of the regex (the top-level sequence only): the
    longest run of literal characters, where a group of plain alternatives
    (`(W|R)`, `[WR]`) multiplies the run into one string per alternative.
    Anything it does not understand ends a run, so the answer is always a
    necessary condition (never a wrong index), or None.
    """
    try:
        from re import _constants as C
        from re import _parser as P

        items = list(P.parse(pattern))
    except Exception:
        return None
    best: list[str] = []
    run: list[str] = [""]

    def alternatives(op, av) -> list[str] | None:
        if op is C.LITERAL:
            return [chr(av)]
        if op is C.IN and all(o is C.LITERAL for o, _ in av):
            return [chr(a) for _, a in av]
        if op is C.SUBPATTERN:
            return sequence(list(av[-1]))
        if op is C.BRANCH:
            out = []
            for branch in av[1]:
                b = sequence(list(branch))
                if b is None:
                    return None
                out.extend(b)
            return out
        return None

    def sequence(items) -> list[str] | None:
        """Every string the whole sequence can be, if it is that simple."""
        out = [""]
        for op, av in items:
            alts = alternatives(op, av)
            if alts is None or len(out) * len(alts) > 64:
                return None
            out = [o + a for o in out for a in alts]
        return out

    def score(strs: list[str]) -> tuple:
        return (min(map(len, strs)) >= 2, min(map(len, strs)), -len(strs))

    for op, av in items:
        alts = None if op in (C.AT,) else alternatives(op, av)
        if op is C.AT:
            continue  # ^ $ \b: zero width, the run goes on
        if alts is None or len(run) * len(alts) > 64:
            if run != [""] and (not best or score(run) > score(best)):
                best = run
            run = [""]
            continue
        run = [r + a for r in run for a in alts]
    if run != [""] and (not best or score(run) > score(best)):
        best = run
    if not best or min(map(len, best)) < 2:
        return None
    return sorted(set(best))


def _sub(name: str, lit: str) -> Atom | None:
    lit = lit.lower()
    return ("sub", name, lit) if lit else None


def _flat(atom) -> list:
    """An expansion's atom is any of its parts."""
    if atom[0] == "any":
        return [x for a in atom[2] for x in _flat(a)]
    return [atom]


def _score(atoms: frozenset) -> tuple:
    """Cheaper to look up first: exact keys beat substrings, fewer beats more."""
    return (sum(a[0] == "sub" for a in atoms), len(atoms))


def _best(options: list[frozenset]) -> frozenset:
    return min(options, key=_score)


def atoms_of(node: Node) -> frozenset | None:
    """At least one of these must hold for `node` to be true (None: unknown)."""
    if node.op == "item":
        return node.atoms
    if node.op == "const":
        return frozenset() if not node.value else None
    if node.op == "not":
        return None
    kids = [atoms_of(a) for a in node.args]
    if node.op == "and":
        known = [k for k in kids if k is not None]
        return _best(known) if known else None
    if None in kids:
        return None
    return frozenset().union(*kids)


def exact_atoms(node: Node) -> frozenset | None:
    """Atoms of which one holds exactly when `node` does, or None."""
    if node.op == "item":
        return node.atoms if node.exact else None
    if node.op == "or":
        kids = [exact_atoms(a) for a in node.args]
        return None if None in kids else frozenset().union(*kids)
    return None


def requirements(node: Node) -> tuple[list[frozenset], frozenset]:
    """(clauses, forbidden): for `node` to hold, each clause must have an
    atom that holds, and no forbidden atom may hold.  Necessary conditions
    only, never sufficient: the index uses them to skip rules that cannot
    fire (every field's literals, not one), the rule's condition decides."""
    op = node.op
    if op == "item":
        return ([node.atoms] if node.atoms is not None else []), frozenset()
    if op == "const":
        return [], frozenset()
    if op == "not":
        return [], exact_atoms(node.args[0]) or frozenset()
    kids = [requirements(a) for a in node.args]
    if op == "and":
        clauses = list(dict.fromkeys(c for k in kids for c in k[0]))
        return clauses, frozenset().union(*(k[1] for k in kids))
    # or: one of the branches holds, so one of their (best) clauses does,
    # and only what every branch forbids is forbidden
    clauses = [frozenset().union(*(_best(k[0]) for k in kids))] if all(k[0] for k in kids) else []
    return clauses, frozenset.intersection(*(k[1] for k in kids))


def closure(node: Node) -> Pred:
    if node.op == "item":
        return node.pred
    if node.op == "const":
        v = node.value
        return lambda view: v
    kids = [closure(a) for a in node.args]
    if node.op == "not":
        (k,) = kids
        return lambda view: not k(view)
    if node.op == "and":
        if len(kids) == 2:
            a, b = kids
            return lambda view: a(view) and b(view)
        return lambda view: all(k(view) for k in kids)
    if len(kids) == 2:
        a, b = kids
        return lambda view: a(view) or b(view)
    return lambda view: any(k(view) for k in kids)


def fields_of(node: Node) -> list[str]:
    if node.op == "item":
        return list(node.fields)
    return list(dict.fromkeys(f for a in node.args for f in fields_of(a)))


# -- rules --------------------------------------------------------------------------
@dataclass
class Rule:
    id: str
    title: str
    level: str
    tags: list[str]
    path: str
    verdict: str
    reasons: list[str]
    source: fieldmap.LogSource | None = None
    logsource: str = ""  # the rule's category (or service, or product), as written
    condition: Pred | None = None
    atoms: frozenset | None = None
    # every clause of required atoms (`atoms` is the one indexed) and the
    # atoms whose presence rules the rule out (requirements())
    clauses: list[frozenset] = field(default_factory=list)
    forbidden: frozenset = frozenset()
    # the condition as an OR of branches, each (clauses, forbidden) and each
    # sufficient as well as necessary: the index then decides the rule and
    # its condition never runs (None: the condition must run)
    branches: list[tuple[list[frozenset], frozenset]] | None = None
    selections: dict[str, tuple[Pred, list[str]]] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    dedup: tuple[str, ...] = ()  # `vigil_dedup:` key fields (default: the process)
    order: int = 0

    @property
    def decided(self) -> bool:
        return self.branches is not None

    @property
    def loadable(self) -> bool:
        return self.verdict in (CAN_FIRE, DEGRADED)

    def brief(self) -> dict:
        out = {"id": self.id, "title": self.title, "level": self.level, "tags": self.tags}
        if self.verdict == DEGRADED:
            out["degraded"] = self.reasons
        return out

    def matched(self, view: View) -> dict[str, dict]:
        """Selections that hold for this event, with the values of their fields."""
        out = {}
        for name, (pred, names) in self.selections.items():
            if pred(view):
                out[name] = {n: view.get(n) for n in names}
        return out


def _condition_tree(parsed, detections, nodes: dict[str, Node]) -> Node:
    if isinstance(parsed, ConditionIdentifier):
        try:
            return nodes[parsed.identifier]
        except KeyError:
            raise SigmaError(f"condition names undefined detection {parsed.identifier!r}") from None
    if isinstance(parsed, ConditionSelector):
        ids = parsed.resolve_referenced_detections(detections)
        if not ids:
            raise SigmaError(f"condition '{parsed.args[0]} of {parsed.pattern}' matches nothing")
        kids = [nodes[i.identifier] for i in ids]
        return _and(kids) if parsed.cond_class is ConditionAND else _or(kids)
    kids = [_condition_tree(a, detections, nodes) for a in parsed.args]
    if isinstance(parsed, ConditionNOT):
        return _not(kids[0])
    if isinstance(parsed, ConditionAND):
        return _and(kids)
    if isinstance(parsed, ConditionOR):
        return _or(kids)
    raise SigmaError(f"unsupported condition element {type(parsed).__name__}")


def compile_rule(rule: SigmaRule, path: str, getters_by_source: dict) -> Rule:
    """A parsed rule -> Rule with its verdict (never raises for rule content)."""
    rid = str(rule.id) if rule.id else ""
    out = Rule(
        id=rid,
        title=rule.title or "",
        level=rule.level.name.lower() if rule.level else "",
        tags=[str(t) for t in rule.tags],
        path=path,
        verdict=INVALID,
        reasons=[],
    )
    if rule.errors:
        out.reasons = list(dict.fromkeys(str(e) for e in rule.errors))
        return out
    ls = rule.logsource
    out.logsource = ls.category or ls.service or ls.product or ""
    source = fieldmap.find(ls.category, ls.product, ls.service)
    if source is None:
        out.verdict = NEVER_FIRES
        what = ", ".join(
            f"{k}: {v}"
            for k, v in (
                ("category", ls.category),
                ("product", ls.product),
                ("service", ls.service),
            )
            if v
        )
        out.reasons = [f"no Vigil sensor gives logsource {{{what}}}"]
        return out
    out.source = source
    getters = getters_by_source.setdefault(id(source), {})
    comp = Compiler(source, getters)
    try:
        dets = rule.detection
        nodes = {name: comp.detection(det) for name, det in dets.detections.items()}
        if len(dets.parsed_condition) != 1:
            raise SigmaError("more than one condition")
        parsed = dets.parsed_condition[0].parse(postprocess=False)
        root = _condition_tree(parsed, dets, nodes)
    except SigmaError as err:
        out.reasons = [str(err)]
        return out
    reasons = list(dict.fromkeys(comp.missing))
    if root.op == "const":
        out.verdict = NEVER_FIRES
        if root.value:
            out.reasons = [f"without {', '.join(reasons)} it would match every event"]
        else:
            out.reasons = [f"needs {r}, which Vigil does not know" for r in reasons] or [
                "condition can never hold"
            ]
        return out
    dedup = rule.custom_attributes.get("vigil_dedup") or ()
    if isinstance(dedup, str):
        dedup = [dedup]
    for name in dedup:
        get = fieldmap.getter(source, str(name))
        if get is None:
            out.reasons = [f"vigil_dedup names field {name!r}, which {source.category} lacks"]
            return out
        getters[str(name)] = get
    out.dedup = tuple(str(n) for n in dedup)
    out.reasons = [f"ignores {r}" for r in reasons]
    if source.limit:  # the source's own blind spot: every rule on it shares it
        out.reasons.append(source.limit)
    out.verdict = DEGRADED if out.reasons else CAN_FIRE
    out.condition = closure(root)
    out.atoms = atoms_of(root)
    out.clauses, out.forbidden = requirements(root)
    if decided(root):
        out.branches = [(out.clauses, out.forbidden)]
    elif root.op == "or" and all(decided(a) for a in root.args):  # `1 of selection_*`
        out.branches = [requirements(a) for a in root.args]
    out.fields = fields_of(root)
    out.selections = {
        name: (closure(node), fields_of(node)) for name, node in nodes.items() if node.op != "const"
    }
    return out
