#!/usr/bin/env python3
"""Generate deploy/kubernetes/base/prometheusrule.yaml from deploy/prometheus/alerts.yml.

alerts.yml is the one source of truth for berth's alert rules (promtool unit-tests it,
plain Prometheus loads it). The PrometheusRule wraps its rule groups, text and comments
unchanged, in the prometheus-operator resource:

    deploy/kubernetes/gen-prometheusrule.py            # rewrite the file
    deploy/kubernetes/gen-prometheusrule.py --check    # exit 1 when the file differs

The generated rules are checked for the shape the PrometheusRule CRD
(monitoring.coreos.com/v1) accepts: known keys only, an alert or record name per rule,
a non-empty expr, durations in Prometheus form, string labels and annotations, unique
group names. Needs PyYAML (Debian: python3-yaml).
"""

import argparse
import difflib
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCE = ROOT / "deploy" / "prometheus" / "alerts.yml"
TARGET = HERE / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/kubernetes/gen-prometheusrule.py:
# do not edit; edit alerts.yml and rerun the script (CI runs it with --check).
# For prometheus-operator (kube-prometheus-stack): a Prometheus whose ruleSelector
# matches these labels loads the rules (many installs select `release: <its name>`;
# add that label in your overlay).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: berth
spec:
"""

# The CRD's fields (monitoring.coreos.com/v1 PrometheusRule, spec.groups[] and
# spec.groups[].rules[]).
GROUP_KEYS = {"name", "interval", "rules", "partial_response_strategy", "limit",
              "query_offset", "labels"}
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")


def generate(source_text: str) -> str:
    """The PrometheusRule text: HEADER, then alerts.yml from its `groups:` line on,
    every line indented two spaces (under `spec:`). Comments before `groups:` (the
    file's own header) are left out; comments inside the groups are kept."""
    lines = source_text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "groups:")
    except StopIteration:
        raise SystemExit(f"{SOURCE}: no top-level `groups:` line")
    body = []
    for line in lines[start:]:
        if line.startswith("---") or line.startswith("..."):
            raise SystemExit(f"{SOURCE}: one YAML document expected")
        body.append(("  " + line) if line.strip() else "")
    return HEADER + "\n".join(body).rstrip("\n") + "\n"


def check_shape(groups) -> list:
    """What the PrometheusRule CRD would refuse in `groups`, as messages."""
    problems = []
    if not isinstance(groups, list) or not groups:
        return ["spec.groups must be a non-empty list"]
    names = set()
    for gi, group in enumerate(groups):
        where = f"spec.groups[{gi}]"
        if not isinstance(group, dict):
            problems.append(f"{where} must be a mapping")
            continue
        for key in sorted(set(group) - GROUP_KEYS):
            problems.append(f"{where}: unknown field {key!r}")
        name = group.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name must be a non-empty string")
        elif name in names:
            problems.append(f"{where}.name {name!r} is not unique")
        names.add(name)
        if "interval" in group and not DURATION.match(str(group["interval"])):
            problems.append(f"{where}.interval is not a duration")
        rules = group.get("rules")
        if not isinstance(rules, list):
            problems.append(f"{where}.rules must be a list")
            continue
        for ri, rule in enumerate(rules):
            rwhere = f"{where}.rules[{ri}]"
            if not isinstance(rule, dict):
                problems.append(f"{rwhere} must be a mapping")
                continue
            for key in sorted(set(rule) - RULE_KEYS):
                problems.append(f"{rwhere}: unknown field {key!r}")
            if ("alert" in rule) == ("record" in rule):
                problems.append(f"{rwhere}: exactly one of alert and record")
            for key in ("alert", "record"):
                if key in rule and (not isinstance(rule[key], str) or not rule[key]):
                    problems.append(f"{rwhere}.{key} must be a non-empty string")
            expr = rule.get("expr")
            if not isinstance(expr, (str, int)) or not str(expr).strip():
                problems.append(f"{rwhere}.expr must be a non-empty string")
            for key in ("for", "keep_firing_for"):
                if key in rule and not DURATION.match(str(rule[key])):
                    problems.append(f"{rwhere}.{key} {rule[key]!r} is not a duration")
            if "record" in rule and ("for" in rule or "annotations" in rule):
                problems.append(f"{rwhere}: a recording rule takes no for or annotations")
            for key in ("labels", "annotations"):
                value = rule.get(key, {})
                if not isinstance(value, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                    problems.append(f"{rwhere}.{key} must map strings to strings")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when {TARGET.relative_to(ROOT)} differs from what would be generated")
    args = parser.parse_args()

    source_text = SOURCE.read_text()
    text = generate(source_text)
    # The wrapped text must mean exactly what alerts.yml means, and have the CRD's shape.
    generated = yaml.safe_load(text)
    if generated["spec"]["groups"] != yaml.safe_load(source_text)["groups"]:
        print("internal error: the generated groups differ from alerts.yml", file=sys.stderr)
        return 2
    problems = check_shape(generated["spec"]["groups"])
    if problems:
        for p in problems:
            print(f"{SOURCE.relative_to(ROOT)}: {p}", file=sys.stderr)
        return 1

    rel = TARGET.relative_to(ROOT)
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                f"{rel} (committed)", f"{rel} (generated)"))
            print(f"{rel} is out of date: run deploy/kubernetes/gen-prometheusrule.py",
                  file=sys.stderr)
            return 1
        print(f"{rel}: up to date with {SOURCE.relative_to(ROOT)}")
        return 0
    TARGET.write_text(text)
    print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
