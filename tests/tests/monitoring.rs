//! The Grafana dashboard and the Prometheus alert rules the package ships (`monitoring/`, installed under
//! /usr/share/lbd/): every query parses as PromQL and names only metrics, labels and label values that a live lbd
//! exports in the lab, so they cannot drift from the code; and they cover what an operator watches.

use std::collections::BTreeSet;
use std::time::Duration;

use lb_tests::harness::netns::skip_unless_root;
use lb_tests::lab::daemon::Lbd;
use lb_tests::lab::promql;
use lb_tests::lab::scrape::Scrape;
use lb_tests::lab::{Lab, LabOptions};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const DASHBOARD: &str = include_str!("../../monitoring/grafana-dashboard.json");
const RULES: &str = include_str!("../../monitoring/prometheus-alerts.yml");

/// What the dashboard must show (issue 15): per-VIP and per-backend packets and bytes, verdicts, backend health and
/// flips, new flows and flow-table misses, reloads, attach state.
const DASHBOARD_METRICS: &[&str] = &[
    "lb_vip_packets_total",
    "lb_vip_bytes_total",
    "lb_backend_packets_total",
    "lb_backend_bytes_total",
    "lb_verdicts_total",
    "lb_backend_up",
    "lb_backend_health_transitions_total",
    "lb_vip_new_flows_total",
    "lb_vip_flow_table_misses_total",
    "lb_reloads_total",
    "lb_xdp_attached",
];

/// The alerts an operator needs: a backend down, a VIP with no healthy backend, drops by reason above a threshold,
/// lb_xdp detached, reload failures.
const ALERTS: &[&str] = &[
    "LbdBackendDown",
    "LbdVipNoHealthyBackend",
    "LbdDropsHigh",
    "LbdXdpDetached",
    "LbdReloadFailed",
];

/// A PromQL query and where it comes from, for the failure message.
struct Query {
    origin: String,
    expr: String,
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("monitoring/grafana-dashboard.json is JSON")
}

/// Every panel, also those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("dashboard panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        out.push(p);
    }
    out
}

/// The panels' queries, and the template variables' `label_values(SELECTOR, LABEL)` written as the PromQL that
/// needs the same series and label: `count by (LABEL) (SELECTOR)`.
fn dashboard_queries() -> Vec<Query> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                origin: format!("dashboard panel {:?} target {}", p["title"], t["refId"]),
                expr: promql::from_grafana(t["expr"].as_str().expect("target expr")),
            });
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"].as_str().expect("variable query");
        let args = q
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let (selector, label) = args
            .rsplit_once(',')
            .expect("label_values(SELECTOR, LABEL)");
        out.push(Query {
            origin: format!("dashboard variable {}", v["name"]),
            expr: promql::from_grafana(&format!("count by ({}) ({selector})", label.trim())),
        });
    }
    out
}

fn rules() -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(RULES).expect("monitoring/prometheus-alerts.yml is YAML");
    docs[0]["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").clone())
        .collect()
}

fn rule_queries() -> Vec<Query> {
    rules()
        .iter()
        .map(|r| Query {
            origin: format!("alert {}", r["alert"].as_str().unwrap_or("?")),
            expr: r["expr"].as_str().expect("rule expr").to_owned(),
        })
        .collect()
}

#[test]
fn dashboard_and_alert_rules_cover_what_an_operator_watches() {
    let d = dashboard();
    for key in ["title", "uid", "schemaVersion", "templating", "panels"] {
        assert!(!d[key].is_null(), "the dashboard lacks {key:?}");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].to_string()),
            "panel id {} twice",
            p["id"]
        );
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "panel {title}: gridPos.{key}");
        }
        if p["type"] == "row" {
            continue;
        }
        // Importable anywhere: the data source is the dashboard's own variable, not an instance's uid.
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title}: datasource"
        );
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert!(
                t["refId"].is_string() && t["expr"].is_string(),
                "panel {title}: {t}"
            );
        }
    }
    let mut shown = BTreeSet::new();
    for q in dashboard_queries() {
        shown.extend(promql::metrics(&q.expr).unwrap_or_else(|e| panic!("{}: {e}", q.origin)));
    }
    for m in DASHBOARD_METRICS {
        assert!(shown.contains(*m), "the dashboard shows no {m}");
    }

    let rules = rules();
    let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for a in ALERTS {
        assert!(names.contains(a), "no alert {a} in {names:?}");
    }
    for r in &rules {
        let name = r["alert"].as_str().expect("every rule is an alert");
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}: labels.severity"
        );
        assert!(
            r["annotations"]["summary"].as_str().is_some(),
            "{name}: annotations.summary"
        );
        if let Some(f) = r["for"].as_str() {
            assert!(
                f.trim_end_matches(['s', 'm', 'h']).parse::<u32>().is_ok(),
                "{name}: for {f:?}"
            );
        }
    }
}

#[test]
fn dashboard_and_alert_rules_name_only_what_a_live_lbd_exports() {
    if skip_unless_root("dashboard_and_alert_rules_name_only_what_a_live_lbd_exports") {
        return;
    }
    let lab = Lab::new(&LabOptions::default());
    // Announcing on (with a drain file of the lab's own): its metrics exist only then. No BGP speaker is needed to
    // write the routes.
    let drain_file = lab.dir.path().join("drained").display().to_string();
    let cfg = lab.write_config("lbd.toml", |c| {
        let mut announce = toml::Table::new();
        announce.insert("enabled".into(), true.into());
        announce.insert("drain_file".into(), drain_file.into());
        c.insert("announce".into(), announce.into());
    });
    let lbd = Lbd::start(&lab, &cfg);
    // Health probes must have run: the probe latency and per-result counts exist only after them.
    lbd.wait_all_backends_up(&lab, Duration::from_secs(20));
    let scrape = Scrape::parse(&lbd.metrics());

    let mut problems = Vec::new();
    for q in dashboard_queries().into_iter().chain(rule_queries()) {
        for p in promql::check(&q.expr, &scrape) {
            problems.push(format!("{}: {p}\n    {}", q.origin, q.expr));
        }
    }
    assert!(
        problems.is_empty(),
        "the shipped dashboard and alert rules ask for what lbd does not export:\n{}\n\nexported: {:?}",
        problems.join("\n"),
        scrape.metric_names().collect::<Vec<_>>()
    );
    lbd.shutdown_detach();
}
