"""The chart's monitoring objects: the Grafana dashboard ConfigMap and the PrometheusRule alerts (both opt-in),
and a check that every PromQL expression in them names metrics the operator exports."""

# The chart fixtures (helm, values_file, render) live in test_chart; imported here, pytest's way of
# sharing them makes every test parameter named like one look like a redefinition to ruff.
# ruff: noqa: F811

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from test_chart import CHART, K8S_VERSIONS, NAMESPACE, helm, only, render, values_file  # noqa: F401

from continual_operator.observe.metrics import Metrics

DASHBOARD = CHART / "dashboards" / "continual-training.json"
MONITORING = {
    "grafana": {"dashboard": {"enabled": True, "labels": {"team": "ml"}}},
    "prometheusRule": {
        "enabled": True,
        "labels": {"release": "prometheus"},
        "backlogMaxAgeMinutes": 120,
        "noProgressMinutes": 15,
        "degradedFor": "10m",
    },
}
#: The fields of monitoring.coreos.com/v1 PrometheusRule the chart uses, as the Prometheus Operator's CRD
#: types them; anything else is an error (strict, like kubernetes-validate for built-in kinds).
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {
                                            "type": "string",
                                            "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$",
                                        },
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
#: A Prometheus metric name in PromQL; the operator's all start with continual_.
METRIC = re.compile(r"\bcontinual_[a-zA-Z0-9_:]*")


def exported_series() -> set[str]:
    """The series names the operator's registry exposes (counters with _total, histograms' parts)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix for family in Metrics().registry.collect() for suffix in suffixes[family.type]
    }


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in only(docs, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


def test_monitoring_objects_are_opt_in(render: Callable[..., list[dict[str, Any]]]) -> None:
    kinds = {doc["kind"] for doc in render({})}
    assert "PrometheusRule" not in kinds
    assert "ConfigMap" not in kinds


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_dashboard_config_map_is_the_dashboard_for_the_sidecar(
    render: Callable[..., list[dict[str, Any]]], k8s: str
) -> None:
    config_map = only(render(MONITORING), "ConfigMap")
    kubernetes_validate.validate(config_map, k8s, strict=True)
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["team"] == "ml"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    (text,) = config_map["data"].values()
    assert json.loads(text) == json.loads(DASHBOARD.read_text())


def test_prometheus_rule_has_the_three_alerts_with_the_values(
    render: Callable[..., list[dict[str, Any]]],
) -> None:
    docs = render(MONITORING)
    rule = only(docs, "PrometheusRule")
    jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA).validate(rule)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    by_name = {r["alert"]: r for r in rules(docs)}
    assert set(by_name) == {
        "ContinualTrainingRunDegraded",
        "ContinualTrainingBacklogTooOld",
        "ContinualTrainingNoProgress",
    }
    assert by_name["ContinualTrainingRunDegraded"]["for"] == "10m"
    assert by_name["ContinualTrainingBacklogTooOld"]["expr"].endswith("> 7200")
    assert "> 900 and" in by_name["ContinualTrainingNoProgress"]["expr"]
    for alert in by_name.values():
        assert "{{ $labels.namespace }}/{{ $labels.run }}" in alert["annotations"]["summary"]


def test_the_schema_check_is_not_vacuous(render: Callable[..., list[dict[str, Any]]]) -> None:
    rule = json.loads(json.dumps(only(render(MONITORING), "PrometheusRule")))
    rule["spec"]["groups"][0]["rules"][0]["expression"] = rule["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError, match="expression"):
        jsonschema.Draft7Validator(PROMETHEUS_RULE_SCHEMA).validate(rule)


def test_every_promql_expression_names_exported_metrics(render: Callable[..., list[dict[str, Any]]]) -> None:
    exported = exported_series()
    exprs = [
        *dashboard_exprs(json.loads(DASHBOARD.read_text())),
        *(r["expr"] for r in rules(render(MONITORING))),
    ]
    assert len(exprs) > 20
    used: set[str] = set()
    for expr in exprs:
        names = set(METRIC.findall(expr))
        assert names, f"no continual_ metric in {expr!r}"
        assert names <= exported, f"{expr!r} names {sorted(names - exported)}, not exported"
        used |= names
    # and the dashboard shows every training-level series
    assert {n for n in exported if n.startswith("continual_run_")} <= used


def test_a_misspelt_metric_is_caught() -> None:
    """The check above compares real names: a typo is not among them."""
    assert "continual_run_global_steps" not in exported_series()
    assert "continual_run_global_step" in exported_series()
