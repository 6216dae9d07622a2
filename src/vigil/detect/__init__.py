"""Detection: Sigma rules compiled into Vigil's matcher, alerts, baselines.

    ruleset.load(paths) -> (RuleSet, every rule with its verdict)
    RuleSet.match(event, Context) -> [(rule, view)]

fields.py is the one table of logsources and fields (docs/detection.md).
"""
