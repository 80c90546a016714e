"""The Grafana dashboard and the HPA's metric name only metrics the gateway, the governor
and the twin really export (read from their live registries)."""

from __future__ import annotations

import json

import pytest

from tests.deploy.manifests import (
    ADAPTER_VALUES,
    DASHBOARD,
    DEPLOY,
    KUBERNETES,
    dashboard_queries,
    exported_series,
    gateway_series,
    governor_series,
    load_yaml,
    load_yaml_documents,
    promql_metric_names,
    twin_series,
)

QUERIES = dashboard_queries(json.loads(DASHBOARD.read_text()))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum(rate(a_total{kind="completion"}[$__rate_interval])) / sum(rate(b[1m]))',
            {"a_total", "b"},
        ),
        ("histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))", {"c_bucket"}),
        (
            'sum by (slo) (rate(d[5m])) / ignoring(slo) group_left sum(rate(e{x=~"a|b"}[5m]))',
            {"d", "e"},
        ),
        ("max(f) * 1e3 > bool 2", {"f"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr, names):
    assert promql_metric_names(expr) == names


def test_the_live_registries_are_read():
    assert "throttllem_queue_length" in gateway_series()
    assert "throttllem_requests_total" in gateway_series()  # a labelled counter, no child yet
    assert "throttllem_time_to_first_token_seconds_bucket" in gateway_series()
    assert "throttllem_gpu_clock_mhz" in governor_series()
    assert "nv_energy_consumption" in twin_series()


def test_every_metric_the_dashboard_queries_is_exported():
    exported = exported_series()
    assert QUERIES
    for title, expr in QUERIES:
        unknown = promql_metric_names(expr) - exported
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which nothing exports"


def test_the_dashboard_shows_what_the_issue_asks_for():
    """Clock, power, energy, tokens per joule, queue, TTFT/TBT percentiles, SLO attainment."""
    exprs = [expr for _, expr in QUERIES]

    def some(*needles: str) -> bool:
        return any(all(needle in expr for needle in needles) for expr in exprs)

    assert some("throttllem_gpu_clock_mhz")
    assert some("nv_gpu_power_usage")
    assert some("nv_energy_consumption")
    assert some("throttllem_tokens_total", "/", "nv_energy_consumption")  # tokens per joule
    assert some("throttllem_queue_length")
    for histogram in ("time_to_first_token", "time_between_tokens"):
        for quantile in ("0.5", "0.9", "0.99"):
            assert some(f"histogram_quantile({quantile}", f"throttllem_{histogram}_seconds_bucket")
    assert some('throttllem_slo_requests_total{outcome="met"}', "/")


def test_every_panel_reads_the_provisioned_datasource():
    datasource = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_the_hpa_scales_on_a_metric_prometheus_adapter_serves_from_a_gateway_metric():
    rules = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    served = {}
    for rule in rules:
        (series,) = promql_metric_names(rule["seriesQuery"])
        assert series in gateway_series()
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        served[rule["name"]["as"]] = series
    hpas = [
        doc
        for doc in load_yaml_documents(KUBERNETES / "gateway-hpa.yaml")
        if doc["kind"] == "HorizontalPodAutoscaler"
    ]
    pod_metrics = [
        m["pods"]["metric"]["name"]
        for hpa in hpas
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert pod_metrics == ["throttllem_queue_length"]
    assert set(pod_metrics) <= set(served)
