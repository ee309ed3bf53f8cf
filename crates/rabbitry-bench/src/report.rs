//! Results: medians, targets, a table for people and JSON lines for scripts.

use serde_json::{Map, Value, json};

/// How a scenario's ratio is judged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// The ratio must be at least this.
    pub(crate) min_ratio: f64,
}

/// One scenario's outcome.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) sdk: Vec<f64>,
    pub(crate) baseline: Vec<f64>,
    pub(crate) target: Option<Target>,
    pub(crate) extra: Map<String, Value>,
    pub(crate) skipped: Option<String>,
    /// Other targets (name, met), e.g. relay RSS.
    pub(crate) checks: Vec<(String, bool)>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, target: Option<Target>) -> Self {
        Self {
            scenario,
            sdk: Vec::new(),
            baseline: Vec::new(),
            target,
            extra: Map::new(),
            skipped: None,
            checks: Vec::new(),
        }
    }

    pub(crate) fn skipped(scenario: &'static str, reason: impl Into<String>) -> Self {
        let mut r = Self::new(scenario, None);
        r.skipped = Some(reason.into());
        r
    }

    fn ratio(&self) -> Option<f64> {
        let b = median(&self.baseline)?;
        (b > 0.0).then(|| median(&self.sdk).unwrap_or(0.0) / b)
    }

    fn met(&self) -> Option<bool> {
        let ratio_ok = match (self.target, self.ratio()) {
            (Some(t), Some(r)) => Some(r >= t.min_ratio),
            _ => None,
        };
        if self.checks.is_empty() {
            return ratio_ok;
        }
        Some(ratio_ok.unwrap_or(true) && self.checks.iter().all(|(_, ok)| *ok))
    }

    pub(crate) fn json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("scenario".into(), json!(self.scenario));
        if let Some(reason) = &self.skipped {
            obj.insert("skipped".into(), json!(reason));
            return Value::Object(obj);
        }
        obj.insert("sdk".into(), json!(median(&self.sdk).map(round)));
        obj.insert("baseline".into(), json!(median(&self.baseline).map(round)));
        obj.insert(
            "ratio".into(),
            json!(self.ratio().map(|r| (r * 1000.0).round() / 1000.0)),
        );
        obj.insert("unit".into(), json!("msg/s"));
        obj.insert(
            "rounds".into(),
            json!(self.sdk.len().min(self.baseline.len())),
        );
        obj.insert("sdk_min".into(), json!(min(&self.sdk).map(round)));
        obj.insert("sdk_max".into(), json!(max(&self.sdk).map(round)));
        obj.insert("baseline_min".into(), json!(min(&self.baseline).map(round)));
        obj.insert("baseline_max".into(), json!(max(&self.baseline).map(round)));
        if let Some(t) = self.target {
            obj.insert("target_ratio".into(), json!(t.min_ratio));
        }
        if let Some(met) = self.met() {
            obj.insert("target_met".into(), json!(met));
        }
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }

    pub(crate) fn row(&self) -> String {
        if let Some(reason) = &self.skipped {
            return format!("{:<20} skipped: {reason}", self.scenario);
        }
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let verdict = match self.met() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        let extra: Vec<String> = self.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{:<20} {:>10} {:>10} {:>7} {:>8} {:>7}  sdk {}..{}  base {}..{}  {}",
            self.scenario,
            fmt(median(&self.sdk)),
            fmt(median(&self.baseline)),
            self.ratio().map_or("-".into(), |r| format!("{r:.2}")),
            self.target
                .map_or("-".into(), |t| format!(">={:.1}", t.min_ratio)),
            verdict,
            fmt(min(&self.sdk)),
            fmt(max(&self.sdk)),
            fmt(min(&self.baseline)),
            fmt(max(&self.baseline)),
            extra.join(" ")
        )
    }
}

pub(crate) fn header() -> String {
    format!(
        "{:<20} {:>10} {:>10} {:>7} {:>8} {:>7}  (msg/s, medians; ranges are min..max)",
        "scenario", "sdk", "baseline", "ratio", "target", "verdict"
    )
}

fn round(v: f64) -> f64 {
    v.round()
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 0.5)
}

/// Nearest-rank percentile (`p` in 0..=1) of `v`.
pub(crate) fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if p == 0.5 && s.len().is_multiple_of(2) {
        let m = s.len() / 2;
        return Some((s[m - 1] + s[m]) / 2.0);
    }
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(
            percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.99),
            Some(10.0)
        );
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_missed_target_is_reported_as_missed() {
        let mut r = Report::new("x", Some(Target { min_ratio: 1.2 }));
        r.sdk = vec![100.0, 110.0, 90.0];
        r.baseline = vec![100.0, 100.0, 100.0];
        assert_eq!(r.met(), Some(false));
        assert!(r.row().contains("MISSED"));
        assert_eq!(r.json()["ratio"], json!(1.0));
    }
}
