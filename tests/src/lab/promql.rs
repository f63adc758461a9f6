//! What a PromQL expression of the shipped Grafana dashboard or alert rules needs from lbd. The expression is parsed
//! with promql-parser (a syntax error is a finding too), then every series selector, label matcher and grouping
//! label in it is looked up in a [`Scrape`] of a live lbd, so a renamed metric, label or verdict reason shows up
//! as a failed test instead of an empty panel or an alert that can never fire.

use std::collections::BTreeSet;
use std::convert::Infallible;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};

use crate::lab::scrape::Scrape;

/// Labels Prometheus attaches to every series of a scrape target: queries may group by them although lbd never
/// exports them.
pub const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Grafana's interval variables, which are not PromQL, are replaced by a duration, and every other `$var` or
/// `${var}` (template variables, used inside `=~"..."` matchers) by the regex `.*`, which is what "All" selects.
pub fn from_grafana(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let var = &rest[at + 1..];
        let (name, after) = match var.strip_prefix('{') {
            Some(braced) => braced.split_once('}').unwrap_or((braced, "")),
            None => {
                let end = var
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(var.len());
                (&var[..end], &var[end..])
            }
        };
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The metric names `expr` reads.
pub fn metrics(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr).map_err(|e| format!("{expr:?}: {e}"))?;
    Ok(metrics_of(&ast))
}

/// What `expr` asks of `scrape` that it does not have, one sentence each (empty: every metric, label and matched
/// value is exported).
pub fn check(expr: &str, scrape: &Scrape) -> Vec<String> {
    let ast = match parser::parse(expr) {
        Ok(ast) => ast,
        Err(e) => return vec![format!("not PromQL: {e}")],
    };
    let mut v = Checker {
        scrape,
        problems: Vec::new(),
    };
    let _ = walk_expr(&mut v, &ast);
    v.problems
}

struct Checker<'a> {
    scrape: &'a Scrape,
    problems: Vec<String>,
}

impl ExprVisitor for Checker<'_> {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        match expr {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(m) => self.selector(&m.vs),
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.grouping(&m.labels().labels, &a.expr);
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    self.grouping(&m.labels().labels, expr);
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

impl Checker<'_> {
    fn selector(&mut self, vs: &VectorSelector) {
        let Some(name) = selector_name(vs) else {
            self.problems
                .push(format!("`{vs}` selects no metric by name"));
            return;
        };
        let series = self.scrape.series(&name);
        if series.is_empty() {
            self.problems.push(format!("`{name}` is not exported"));
            return;
        }
        for m in matchers(vs).filter(|m| !TARGET_LABELS.contains(&m.name.as_str())) {
            let values: Vec<&str> = series
                .iter()
                .filter_map(|s| s.get(&m.name).map(String::as_str))
                .collect();
            if values.is_empty() {
                self.problems
                    .push(format!("`{name}` has no label `{}`", m.name));
            } else if matches!(m.op, MatchOp::Equal | MatchOp::Re(_))
                && !values.iter().any(|v| m.is_match(v))
            {
                self.problems.push(format!(
                    "no `{name}` series matches {}{}{:?} (values: {values:?})",
                    m.name, m.op, m.value
                ));
            }
        }
    }

    /// `by`/`without`/`on`/`ignoring` labels must be labels of some metric the grouped expression reads.
    fn grouping(&mut self, labels: &[String], inner: &Expr) {
        let metrics = metrics_of(inner);
        for label in labels
            .iter()
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
        {
            let known = metrics
                .iter()
                .any(|m| self.scrape.series(m).iter().any(|s| s.contains_key(label)));
            if !known {
                self.problems.push(format!(
                    "groups by `{label}`, which none of {metrics:?} has"
                ));
            }
        }
    }
}

fn selector_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| {
        matchers(vs)
            .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
            .map(|m| m.value.clone())
    })
}

fn matchers(vs: &VectorSelector) -> impl Iterator<Item = &Matcher> {
    vs.matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten())
        .filter(|m| m.name != "__name__")
}

fn metrics_of(ast: &Expr) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
            let vs = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(m) => &m.vs,
                _ => return Ok(true),
            };
            self.0.extend(selector_name(vs));
            Ok(true)
        }
    }
    let mut names = Names(BTreeSet::new());
    let _ = walk_expr(&mut names, ast);
    names.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        Scrape::parse(
            "lb_verdicts_total{reason=\"tx\"} 1\nlb_verdicts_total{reason=\"drop_no_route\"} 0\n\
             lb_backend_up{vip=\"v\",backend=\"b\"} 1\n",
        )
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            from_grafana(r#"sum(rate(x{instance=~"$instance",vip=~"${vip}"}[$__rate_interval]))"#),
            r#"sum(rate(x{instance=~".*",vip=~".*"}[5m]))"#
        );
    }

    #[test]
    fn finds_what_the_scrape_lacks() {
        let s = scrape();
        assert!(
            check(
                r#"sum by (instance, reason) (rate(lb_verdicts_total{reason=~"drop_.*"}[5m])) > 1"#,
                &s
            )
            .is_empty()
        );
        assert!(check("max by (vip) (lb_backend_up) == 0", &s).is_empty());
        for (expr, finding) in [
            ("lb_backend_down == 1", "not exported"),
            (
                r#"lb_verdicts_total{reason="drop"}"#,
                "no `lb_verdicts_total` series",
            ),
            (r#"lb_verdicts_total{cause="x"}"#, "no label `cause`"),
            ("sum by (vip) (lb_verdicts_total)", "groups by `vip`"),
            ("sum(rate(lb_verdicts_total[5m])", "not PromQL"),
        ] {
            let problems = check(expr, &s);
            assert!(
                problems.iter().any(|p| p.contains(finding)),
                "{expr}: {problems:?}"
            );
        }
    }
}
