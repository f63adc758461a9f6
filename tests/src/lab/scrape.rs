//! A scrape of lbd's `/metrics` (the OpenMetrics text `lb_userspace::metrics::render` writes) as series: metric name
//! and labels of every sample, which is what a PromQL selector is matched against, and each sample's value.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
pub struct Scrape {
    series: BTreeMap<String, Vec<Labels>>,
    values: BTreeMap<String, Vec<f64>>,
}

impl Scrape {
    /// Reads the sample lines; `# HELP`/`# TYPE`/`# EOF` lines carry no series. Panics on a line it cannot read,
    /// with the line.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, labels, value) =
                sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
            scrape.values.entry(name.clone()).or_default().push(value);
            scrape.series.entry(name).or_default().push(labels);
        }
        scrape
    }

    /// The label sets of `metric`'s samples (empty when it is not exported).
    pub fn series(&self, metric: &str) -> &[Labels] {
        self.series.get(metric).map_or(&[], Vec::as_slice)
    }

    /// The value of `metric`'s sample whose labels include all of `labels`, if there is one.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let i = self.series(metric).iter().position(|l| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        })?;
        Some(self.values[metric][i])
    }

    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }
}

/// `name{a="x",b="y"} value` or `name value`.
fn sample(line: &str) -> Option<(String, Labels, f64)> {
    let end = line.find(['{', ' '])?;
    let name = line[..end].to_owned();
    let mut labels = Labels::new();
    let mut rest = &line[end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        while !rest.starts_with('}') {
            let (key, after) = rest.split_once("=\"")?;
            let (value, after) = quoted(after)?;
            labels.insert(key.trim_start_matches(',').to_owned(), value);
            rest = after;
        }
        rest = &rest[1..];
    }
    let value = rest.strip_prefix(' ')?.split(' ').next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The escaped label value up to its closing quote, and what follows the quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_labels() {
        let s = Scrape::parse(
            "# TYPE lb_verdicts counter\nlb_verdicts_total{reason=\"tx\"} 4\n\
             lb_backend_up{vip=\"[fd00:19::10]:80/tcp\",backend=\"a\\\"b\"} 1\nlb_xdp_attached 1\n# EOF\n",
        );
        assert_eq!(s.series("lb_verdicts_total")[0]["reason"], "tx");
        assert_eq!(s.series("lb_backend_up")[0]["vip"], "[fd00:19::10]:80/tcp");
        assert_eq!(s.series("lb_backend_up")[0]["backend"], "a\"b");
        assert!(s.series("lb_xdp_attached")[0].is_empty());
        assert_eq!(s.value("lb_verdicts_total", &[("reason", "tx")]), Some(4.0));
        assert_eq!(s.value("lb_verdicts_total", &[("reason", "rx")]), None);
        assert!(
            s.series("lb_verdicts").is_empty(),
            "TYPE lines name families, not series"
        );
    }
}
