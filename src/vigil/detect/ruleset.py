"""Loading rules from files, and matching events against many rules at once.

Cost per event must not grow with the rule count, so an event meets only
the rules that could fire on it:

1. **Routing**: each event kind has the logsources that cover it (an
   accept never meets a process_creation rule).
2. **Literal index**: each rule's required literals (compile.py) go into
   an exact-value table, a basename table (`Image|endswith: /curl`) or one
   Aho-Corasick automaton per field (substrings); a rule is evaluated only
   when the event holds one of its literals.  Rules with no such set (a
   regex alone, a negation) are evaluated on every event of their source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

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


@dataclass
class _Group:
    """The rules of one logsource, indexed by their literals."""

    source: fieldmap.LogSource
    getters: dict
    always: list[Rule] = field(default_factory=list)
    exact: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    base: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    subs: dict[str, dict[str, list[Rule]]] = field(default_factory=dict)
    automata: list = field(default_factory=list)  # (field, automaton, [rules per pattern])

    def add(self, rule: Rule) -> None:
        if rule.atoms is None:
            self.always.append(rule)
            return
        for how, name, lit in rule.atoms:
            table = {"eq": self.exact, "base": self.base, "sub": self.subs}[how]
            table.setdefault(name, {}).setdefault(lit, []).append(rule)

    def build(self) -> None:
        self.automata = []
        for name, pats in self.subs.items():
            patterns = list(pats)
            self.automata.append(
                (name, ahocorasick_rs.AhoCorasick(patterns), [pats[p] for p in patterns])
            )
        self.exact_items = list(self.exact.items())
        self.base_items = list(self.base.items())

    def candidates(self, view: View) -> list[Rule]:
        found: set[int] = set()
        out: list[Rule] = list(self.always)
        lower = view.lower
        for name, table in self.exact_items:
            hit = table.get(lower(name))
            if hit:
                out.extend(hit)
        for name, table in self.base_items:
            s = lower(name)
            if s:
                hit = table.get(s.rpartition("/")[2])
                if hit:
                    out.extend(hit)
        for name, ac, rules in self.automata:
            s = lower(name)
            if s:
                for idx in {m[0] for m in ac.find_matches_as_indexes(s, overlapping=True)}:
                    out.extend(rules[idx])
        if len(out) > 1:
            uniq = []
            for r in out:
                if id(r) not in found:
                    found.add(id(r))
                    uniq.append(r)
            out = uniq
        return out


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
        self.evaluated = 0  # rule evaluations, for the bench and tests

    def __len__(self) -> int:
        return len(self.rules)

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
            self.evaluated += len(cands)
            for rule in cands:
                if rule.condition(view):
                    hits.append((rule, view))
        return hits
