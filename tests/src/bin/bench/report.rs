//! `results.json` and `results.md`: every figure with its reference, ratio and target.

use std::fmt::Write as _;

use crate::bench::stats::Summary;

/// A minimal JSON value (the tests crate has no serde).
#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj(fields: Vec<(&str, Json)>) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    pub fn num(v: f64) -> Json {
        if v.is_finite() {
            Json::Num(v)
        } else {
            Json::Null
        }
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = "  ".repeat(indent + 1);
        let end = "  ".repeat(indent);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(v) => {
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    let _ = write!(out, "{}", *v as i64);
                } else {
                    let _ = write!(out, "{}", (v * 1000.0).round() / 1000.0);
                }
            }
            Json::Str(s) => {
                out.push('"');
                for ch in s.chars() {
                    match ch {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        '\t' => out.push_str("\\t"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Json::Arr(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push_str("[\n");
                for (i, it) in items.iter().enumerate() {
                    out.push_str(&pad);
                    it.write(out, indent + 1);
                    if i + 1 < items.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&end);
                out.push(']');
            }
            Json::Obj(fields) => {
                if fields.is_empty() {
                    out.push_str("{}");
                    return;
                }
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&pad);
                    Json::Str(k.clone()).write(out, indent + 1);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                    if i + 1 < fields.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&end);
                out.push('}');
            }
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }
}

/// How a value compares to its target.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// value <= bound
    AtMost(f64),
    /// value < bound
    Below(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtMost(b) => v <= b,
            Goal::Below(b) => v < b,
        }
    }
    fn text(self, unit: &str) -> String {
        match self {
            Goal::AtMost(b) => format!("<= {}{}", fmt_num(b), sp(unit)),
            Goal::Below(b) => format!("< {}{}", fmt_num(b), sp(unit)),
        }
    }
}

fn sp(unit: &str) -> String {
    if unit.is_empty() || unit == "x" {
        unit.to_string()
    } else {
        format!(" {unit}")
    }
}

pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Metric {
    pub row: &'static str,
    pub key: String,
    pub label: String,
    pub value: f64,
    pub unit: &'static str,
    /// Sample count behind `value` (0: a single reading).
    pub n: usize,
    /// Spread or percentiles, free text.
    pub detail: String,
    /// What the value is compared with: (name, value in the same unit).
    pub reference: Option<(String, f64)>,
    /// The C implementation's figure on this machine kind, if the issue gives one.
    pub c_figure: Option<String>,
    /// The value the target applies to (the value itself, or the ratio), and the goal.
    pub target: Option<(TargetOn, Goal)>,
}

#[derive(Debug, Clone, Copy)]
pub enum TargetOn {
    Value,
    Ratio,
}

impl Metric {
    pub fn new(
        row: &'static str,
        key: &str,
        label: &str,
        value: f64,
        unit: &'static str,
    ) -> Metric {
        Metric {
            row,
            key: key.to_string(),
            label: label.to_string(),
            value,
            unit,
            n: 0,
            detail: String::new(),
            reference: None,
            c_figure: None,
            target: None,
        }
    }

    /// From a summary: the median, with the quartiles and extremes as detail.
    pub fn median(
        row: &'static str,
        key: &str,
        label: &str,
        s: &Summary,
        unit: &'static str,
    ) -> Metric {
        let mut m = Metric::new(row, key, label, s.median, unit);
        m.n = s.n;
        m.detail = format!(
            "p25 {} / p75 {} / min {} / max {}",
            fmt_num(s.p25),
            fmt_num(s.p75),
            fmt_num(s.min),
            fmt_num(s.max)
        );
        m
    }

    pub fn detail(mut self, d: impl Into<String>) -> Metric {
        self.detail = d.into();
        self
    }

    pub fn n(mut self, n: usize) -> Metric {
        self.n = n;
        self
    }

    pub fn vs(mut self, name: &str, v: f64) -> Metric {
        self.reference = Some((name.to_string(), v));
        self
    }

    /// The C implementation's figure, in this metric's unit.
    pub fn c(mut self, v: f64) -> Metric {
        self.c_figure = Some(format!("{}{}", fmt_num(v), sp(self.unit)));
        self
    }

    /// The C implementation's figure, as text (e.g. a ratio).
    pub fn c_text(mut self, t: &str) -> Metric {
        self.c_figure = Some(t.to_string());
        self
    }

    pub fn target(mut self, on: TargetOn, g: Goal) -> Metric {
        self.target = Some((on, g));
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.reference
            .as_ref()
            .map(|(_, r)| self.value / *r)
            .filter(|r| r.is_finite())
    }

    pub fn met(&self) -> Option<bool> {
        let (on, g) = self.target?;
        let v = match on {
            TargetOn::Value => self.value,
            TargetOn::Ratio => self.ratio()?,
        };
        Some(g.met(v))
    }

    fn target_text(&self) -> String {
        match self.target {
            None => String::new(),
            Some((TargetOn::Value, g)) => g.text(self.unit),
            Some((TargetOn::Ratio, g)) => format!("ratio {}", g.text("x")),
        }
    }

    pub fn to_json(&self) -> Json {
        Json::obj(vec![
            ("row", Json::str(self.row)),
            ("key", Json::str(self.key.clone())),
            ("label", Json::str(self.label.clone())),
            ("value", Json::num(self.value)),
            ("unit", Json::str(self.unit)),
            ("samples", Json::num(self.n as f64)),
            ("detail", Json::str(self.detail.clone())),
            (
                "reference",
                match &self.reference {
                    Some((n, v)) => Json::obj(vec![
                        ("name", Json::str(n.clone())),
                        ("value", Json::num(*v)),
                    ]),
                    None => Json::Null,
                },
            ),
            ("ratio", self.ratio().map_or(Json::Null, Json::num)),
            (
                "c_implementation",
                self.c_figure.clone().map_or(Json::Null, Json::Str),
            ),
            (
                "target",
                if self.target.is_some() {
                    Json::str(self.target_text())
                } else {
                    Json::Null
                },
            ),
            ("met", self.met().map_or(Json::Null, Json::Bool)),
        ])
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The Markdown table of all metrics.
pub fn markdown_table(metrics: &[Metric]) -> String {
    let mut s = String::from(
        "| row | measurement | Hirte-rs | n | compared with | ratio | C impl. | target | met | spread |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut sorted: Vec<&Metric> = metrics.iter().collect();
    sorted.sort_by_key(|m| m.row);
    for m in sorted {
        let reference = m
            .reference
            .as_ref()
            .map(|(n, v)| format!("{n} {}{}", fmt_num(*v), sp(m.unit)))
            .unwrap_or_default();
        let ratio = m.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default();
        let c = m.c_figure.clone().unwrap_or_default();
        let met = match m.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let n = if m.n > 0 {
            m.n.to_string()
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            m.row,
            md_cell(&m.label),
            fmt_num(m.value),
            sp(m.unit),
            n,
            md_cell(&reference),
            ratio,
            c,
            md_cell(&m.target_text()),
            met,
            md_cell(&m.detail)
        );
    }
    s
}
