"""Checks of the alert rules beyond promtool's; run by scripts/check-rules with Debian's python3.

- Every alert has a severity (critical or warning), a summary, a description and a runbook_url
  `docs/runbook.md#<anchor>` whose anchor is a heading of docs/runbook.md; every alert section of
  the runbook ("## Alerts", one "###" per alert) is an alert of the rules (none stale, none missing).
- The promtool tests (ops/prometheus/rules_test.yaml) hold, for every alert, at least one case
  where it fires and one where it stays silent.
- The runbook's "What counts as an error" table places every ErrorReason of
  proto/c2p/enrollment/v1/error_reason.proto once, and its "yes" rows are exactly the reasons the
  availability recording rules count.
- ops/prometheus/rules.yaml is the chart's file (a link), so that there is one source.
Prints one line per check and ends with `rules checks: N passed, M failed`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "c2p-enroll" / "files" / "prometheus" / "rules.yaml"
TESTS = ROOT / "ops" / "prometheus" / "rules_test.yaml"
LINK = ROOT / "ops" / "prometheus" / "rules.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
REASONS = ROOT / "proto" / "c2p" / "enrollment" / "v1" / "error_reason.proto"
RUNBOOK_PREFIX = "docs/runbook.md#"
SEVERITIES = {"critical", "warning"}
# The recording rules of the availability objective: the reasons they count as errors.
ERROR_RULE = re.compile(r"^namespace_job:c2p_enroll_card_errors:ratio_rate\w+$")


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, name: str, detail: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""))


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections(text: str) -> tuple[set[str], list[str]]:
    """(every heading's anchor, the "###" headings under "## Alerts")."""
    anchors, alerts, section = set(), [], None
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if not m:
            continue
        level, title = len(m.group(1)), m.group(2)
        anchors.add(slug(title))
        if level == 2:
            section = title.strip()
        elif level == 3 and section == "Alerts":
            alerts.append(title.strip())
    return anchors, alerts


def error_table(text: str) -> dict[str, list[str]]:
    """reason -> the values of its "counts as an error" cells in the runbook's table."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([A-Z_]+)`\s*\|\s*(yes|no)\s*\|", line)
        if m:
            rows.setdefault(m.group(1), []).append(m.group(2))
    return rows


def proto_reasons() -> set[str]:
    names = set(re.findall(r"^\s*([A-Z][A-Z_]+)\s*=\s*\d+\s*;", REASONS.read_text(), re.M))
    names.discard("ERROR_REASON_UNSPECIFIED")
    return names


def counted_reasons(rules: list[dict]) -> tuple[set[str], int]:
    """The reasons the availability rules count, and how many such rules there are; they must
    all count the same ones."""
    found: list[set[str]] = []
    for rule in rules:
        if ERROR_RULE.match(rule.get("record", "")):
            m = re.search(r'reason=~"([A-Z_|]+)"', rule["expr"])
            found.append(set(m.group(1).split("|")) if m else set())
    if not found or any(f != found[0] for f in found):
        return set(), len(found)
    return found[0], len(found)


def main() -> int:
    checks = Checks()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    alerts = [r for r in rules if "alert" in r]
    names = [a["alert"] for a in alerts]
    runbook = RUNBOOK.read_text()
    anchors, sections = runbook_sections(runbook)

    checks.check(LINK.is_symlink() and LINK.resolve() == RULES.resolve(),
                 "ops/prometheus/rules.yaml links to the chart's rules file", str(LINK))
    checks.check(len(names) == len(set(names)) and len(names) > 0, f"{len(names)} alerts, names unique",
                 str(names))
    for alert in alerts:
        name = alert["alert"]
        labels, ann = alert.get("labels", {}), alert.get("annotations", {})
        problems = []
        if labels.get("severity") not in SEVERITIES:
            problems.append(f"severity {labels.get('severity')!r}")
        for key in ("summary", "description"):
            if not str(ann.get(key, "")).strip():
                problems.append(f"no {key}")
        url = str(ann.get("runbook_url", ""))
        anchor = url[len(RUNBOOK_PREFIX):] if url.startswith(RUNBOOK_PREFIX) else None
        if anchor is None:
            problems.append(f"runbook_url {url!r} is not {RUNBOOK_PREFIX}<anchor>")
        elif anchor not in anchors:
            problems.append(f"docs/runbook.md has no heading with anchor #{anchor}")
        elif anchor != slug(name):
            problems.append(f"runbook_url #{anchor} is not the alert's own section #{slug(name)}")
        checks.check(not problems, f"{name}: severity, summary, description, runbook_url -> docs/runbook.md#{anchor}",
                     "; ".join(problems))
    checks.check(sorted(sections) == sorted(names), "docs/runbook.md has one section per alert under \"## Alerts\"",
                 f"sections without alert: {sorted(set(sections) - set(names))}; "
                 f"alerts without section: {sorted(set(names) - set(sections))}")

    tests = yaml.safe_load(TESTS.read_text())
    firing: dict[str, int] = {n: 0 for n in names}
    silent: dict[str, int] = {n: 0 for n in names}
    unknown = set()
    for case in tests.get("tests", []):
        for t in case.get("alert_rule_test", []):
            name = t["alertname"]
            if name not in firing:
                unknown.add(name)
                continue
            if t.get("exp_alerts"):
                firing[name] += 1
            else:
                silent[name] += 1
    checks.check(not unknown, "promtool tests name only alerts of the rules", str(sorted(unknown)))
    for name in names:
        checks.check(firing[name] >= 1 and silent[name] >= 1,
                     f"{name}: promtool cases firing {firing[name]}, silent {silent[name]}",
                     "needs at least one of each")

    table = error_table(runbook)
    reasons = proto_reasons()
    twice = sorted(r for r, v in table.items() if len(v) != 1)
    checks.check(set(table) == reasons and not twice,
                 f"docs/runbook.md places each of the {len(reasons)} ErrorReasons once",
                 f"missing {sorted(reasons - set(table))}, unknown {sorted(set(table) - reasons)}, twice {twice}")
    counted, n_rules = counted_reasons(rules)
    errors = {r for r, v in table.items() if v == ["yes"]}
    checks.check(n_rules == 7 and counted == errors,
                 f"the {n_rules} availability rules count exactly the runbook's errors {sorted(errors)}",
                 f"rules count {sorted(counted)}")

    print(f"rules checks: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
