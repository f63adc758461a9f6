//! Printing: aligned plain-text tables for people, pretty JSON for scripts.

use serde::Serialize;

pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Left-aligned columns separated by two spaces; numbers are right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut t = StreamTable::new(headers);
    t.rows(rows);
    t.finish();
}

/// A [`table`] printed as its rows arrive: the header goes out with the first rows, sized to them, and a column
/// widens (from then on) when a wider cell comes.
pub struct StreamTable {
    headers: Vec<String>,
    widths: Vec<usize>,
    started: bool,
}

impl StreamTable {
    pub fn new(headers: &[&str]) -> StreamTable {
        StreamTable {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            widths: headers.iter().map(|h| h.len()).collect(),
            started: false,
        }
    }

    pub fn rows(&mut self, rows: &[Vec<String>]) {
        for row in rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        if !self.started {
            self.started = true;
            self.line(&self.headers);
        }
        for row in rows {
            self.line(row);
        }
    }

    /// The header alone when no row came.
    pub fn finish(&mut self) {
        if !self.started {
            self.rows(&[]);
        }
    }

    fn line(&self, cells: &[String]) {
        let parts: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .map(|(c, w)| {
                if !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit() || ch == '.') {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        println!("{}", parts.join("  ").trim_end());
    }
}

/// `message` for a successful mutation, or `{"ok": true, "message": ...}` with --json.
pub fn done(json_out: bool, message: &str) -> anyhow::Result<()> {
    if json_out {
        json(&serde_json::json!({ "ok": true, "message": message }))
    } else {
        println!("{message}");
        Ok(())
    }
}

/// Human-readable rate: 1234567 → "1.23M".
pub fn si(v: f64) -> String {
    let (v, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.1}");
    };
    format!("{v:.2}{unit}")
}
