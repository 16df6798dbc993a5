"""The Grafana dashboard (deploy/grafana/recsys-overview.json) cannot drift from the code.

It must be a well-formed dashboard; every metric its queries name must be defined by a
``prometheus_client`` Counter, Gauge, Histogram or Summary in ``services/`` or ``shared/``
(under the series names the client exposes: ``_total``, ``_bucket``, ``_sum``, ``_count``),
with only labels the metric has; and every metric defined in the code must appear in at
least one panel. A new metric therefore needs a panel, and a renamed one breaks this test.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "recsys-overview.json"
SOURCES = (ROOT / "services", ROOT / "shared")
METRIC_KINDS = frozenset({"Counter", "Gauge", "Histogram", "Summary"})
DATASOURCE = "${DS_PROMETHEUS}"
ROWS = ("Ranking API", "Streaming", "Model", "Errors")
# Labels Prometheus adds when it scrapes a target (Kubernetes service discovery).
TARGET_LABELS = frozenset({"namespace", "job", "instance", "pod", "service", "container"})
# Every selector filters on the dashboard's variables.
VARIABLE_MATCHERS = ('namespace=~"$namespace"', 'job=~"$job"')

# PromQL words that are not metric names.
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan", "Inf", "NaN"}
)
COUNTER_LIKE = frozenset({"counter", "bucket", "sum", "count"})


# ------------------------------------------------------------------ metrics in the code


@dataclass(frozen=True)
class Metric:
    """One metric object as defined in the code."""

    name: str
    kind: str
    labels: frozenset[str] | None  # None: not a literal list, so not checked
    where: str

    def series(self) -> dict[str, str]:
        """The series names prometheus_client exposes for it, and each one's role."""
        if self.kind == "Counter":
            base = self.name.removesuffix("_total")
            return {f"{base}_total": "counter", f"{base}_created": "created"}
        if self.kind == "Gauge":
            return {self.name: "gauge"}
        parts = {"sum": "sum", "count": "count", "created": "created"}
        if self.kind == "Histogram":
            parts["bucket"] = "bucket"
        return {f"{self.name}_{suffix}": role for suffix, role in parts.items()}


def _prometheus_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> metric kind, for the metric classes imported from prometheus_client."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            for alias in node.names:
                if alias.name in METRIC_KINDS:
                    names[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "prometheus_client":
                    for kind in METRIC_KINDS:
                        names[f"{alias.asname or alias.name}.{kind}"] = kind
    return names


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return ""


def _literal_labels(node: ast.expr | None) -> frozenset[str] | None:
    if node is None:
        return frozenset()
    if isinstance(node, ast.List | ast.Tuple) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return frozenset(str(e.value) for e in node.elts if isinstance(e, ast.Constant))
    return None


def code_metrics() -> list[Metric]:
    metrics = []
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            kinds = _prometheus_names(tree)
            if not kinds:
                continue
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                kind = kinds.get(_called_name(node.func))
                if kind is None:
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                keywords = {k.arg: k.value for k in node.keywords if k.arg}
                assert not {"namespace", "subsystem", "unit"} & set(keywords), (
                    f"{where}: name parts in keywords; teach this test to join them"
                )
                name_node = node.args[0] if node.args else keywords.get("name")
                assert isinstance(name_node, ast.Constant) and isinstance(name_node.value, str), (
                    f"{where}: a metric name must be a string literal"
                )
                labels_node = node.args[2] if len(node.args) > 2 else keywords.get("labelnames")
                metrics.append(Metric(name_node.value, kind, _literal_labels(labels_node), where))
    return metrics


# ------------------------------------------------------------------ the dashboard


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target


@dataclass(frozen=True)
class Query:
    """What one PromQL expression names, found by a light tokenizer (no PromQL parser)."""

    metrics: frozenset[str]
    labels: frozenset[str]  # in matchers and by/without clauses
    selectors: tuple[tuple[str, str], ...]  # (metric, matcher text) for each metric
    rated: frozenset[str]  # metrics directly inside rate(), irate() or increase()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"


def parse_query(expr: str) -> Query:
    for opening, closing in ("()", "{}", "[]"):
        assert expr.count(opening) == expr.count(closing), f"unbalanced {opening}: {expr}"
    selectors = tuple(
        (m.group(1), m.group(2) or "")
        for m in re.finditer(rf"({_IDENT})\s*(?:\{{([^}}]*)\}})?", expr)
        if not expr[m.end() :].lstrip().startswith("(")
    )
    plain = _STRING.sub('""', expr)
    labels = {
        name
        for matchers in re.findall(r"\{([^}]*)\}", plain)
        for name in re.findall(rf"({_IDENT})\s*(?:=~|!~|!=|=)", matchers)
    }
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", plain):
        labels.update(label.strip() for label in clause.split(",") if label.strip())
    # What is left once matchers, clauses, durations and function calls are removed.
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", plain)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    bare = re.sub(rf"{_IDENT}\s*\(", "(", bare)
    metrics = {
        word for word in re.findall(rf"(?<![\w.$]){_IDENT}", bare) if word not in PROMQL_KEYWORDS
    }
    rated = set(re.findall(rf"\b(?:rate|irate|increase)\(\s*({_IDENT})", plain))
    return Query(
        metrics=frozenset(metrics),
        labels=frozenset(labels),
        selectors=tuple(s for s in selectors if s[0] in metrics),
        rated=frozenset(rated),
    )


# ------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def metrics() -> list[Metric]:
    found = code_metrics()
    assert found, "no prometheus_client metrics found in services/ or shared/"
    return found


@pytest.fixture(scope="module")
def series(metrics: list[Metric]) -> dict[str, tuple[Metric, str]]:
    """Every exposed series name -> (its metric, its role)."""
    out: dict[str, tuple[Metric, str]] = {}
    for metric in metrics:
        for name, role in metric.series().items():
            assert name not in out, f"{name} defined twice: {out[name][0].where}, {metric.where}"
            out[name] = (metric, role)
    return out


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36, "Grafana 10+ dashboards"
    assert "id" not in dashboard or dashboard["id"] is None, "an exported id breaks imports"
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert all(isinstance(i, int) for i in ids)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert set(ROWS) <= set(rows), rows
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["title"], panel
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["DS_PROMETHEUS"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    for name in ("namespace", "job"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"]["uid"] == DATASOURCE
        assert variable["includeAll"] and variable["allValue"] == ".*"
        assert variable["definition"].startswith("label_values(")


def test_every_query_names_only_metrics_and_labels_the_code_defines(
    dashboard: dict[str, Any], series: dict[str, tuple[Metric, str]]
) -> None:
    problems = []
    for title, target in targets(dashboard):
        expr = target["expr"]
        query = parse_query(expr)
        if not query.metrics:
            problems.append(f"{title}: no metric in {expr}")
        unknown = sorted(query.metrics - set(series))
        if unknown:
            problems.append(f"{title}: {unknown} not defined in services/ or shared/")
            continue
        used = [series[name] for name in query.metrics]
        allowed = set(TARGET_LABELS)
        for metric, role in used:
            allowed |= metric.labels if metric.labels is not None else {"*"}
            if role == "bucket":
                allowed.add("le")
        if "*" not in allowed and not query.labels <= allowed:
            problems.append(f"{title}: labels {sorted(query.labels - allowed)} in {expr}")
        for name in query.rated:
            if series[name][1] not in COUNTER_LIKE:
                problems.append(f"{title}: rate/increase of {name}, a {series[name][1]}")
        if "histogram_quantile" in expr and not (
            any(role == "bucket" for _, role in used) and re.search(r"by\s*\([^)]*\ble\b", expr)
        ):
            problems.append(f"{title}: histogram_quantile needs _bucket series summed by le")
        for metric_name, matchers in query.selectors:
            for needed in VARIABLE_MATCHERS:
                if needed not in matchers:
                    problems.append(f"{title}: {metric_name} is not filtered by {needed}")
    assert not problems, "\n".join(problems)


def test_every_metric_in_the_code_has_a_panel(
    dashboard: dict[str, Any], metrics: list[Metric], series: dict[str, tuple[Metric, str]]
) -> None:
    shown = {
        series[name][0].name
        for _, target in targets(dashboard)
        for name in parse_query(target["expr"]).metrics
        if name in series
    }
    missing = [f"{m.name} ({m.where})" for m in metrics if m.name not in shown]
    assert not missing, f"metrics without a panel in {DASHBOARD.name}: {missing}"


def test_histograms_show_quantiles(dashboard: dict[str, Any], metrics: list[Metric]) -> None:
    exprs = [target["expr"] for _, target in targets(dashboard)]
    for metric in metrics:
        if metric.kind == "Histogram":
            quantiles = [
                e for e in exprs if "histogram_quantile" in e and f"{metric.name}_bucket" in e
            ]
            assert any("0.5," in e for e in quantiles), f"{metric.name}: no p50"
            assert any("0.99," in e for e in quantiles), f"{metric.name}: no p99"


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        (
            'sum by (method) (rate(recsys_x_total{namespace=~"$namespace", code!="OK"}[5m]))',
            {"recsys_x_total"},
            {"method", "namespace", "code"},
        ),
        (
            "histogram_quantile(0.99, sum by (le) (rate(recsys_h_bucket[$__rate_interval])))",
            {"recsys_h_bucket"},
            {"le"},
        ),
        (
            "max(recsys_g) / on (job) group_left count(recsys_c_total)",
            {"recsys_g", "recsys_c_total"},
            {"job"},
        ),
    ],
)
def test_query_tokenizer(expr: str, metrics: set[str], labels: set[str]) -> None:
    query = parse_query(expr)
    assert query.metrics == metrics
    assert query.labels == labels
