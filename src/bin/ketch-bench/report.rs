//! Results: what one run measured (raw samples per metric, written as JSON
//! by `run --json`), the statistics over them, the merge of several runs of
//! several runtimes, and the one table comparing them.
//!
//! Statistics: the median is the middle sample (the mean of the two middle
//! ones for an even count); p90 and p99 are nearest-rank percentiles (the
//! smallest sample with at least that share of samples at or below it), so
//! every figure printed is one that was really measured, except an even
//! count's median.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the JSON layout, bumped when a field changes meaning.
pub const SCHEMA: &str = "ketch-bench/1";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a ketch-bench run file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode results: {0}")]
    Encode(serde_json::Error),
    #[error("no run files given")]
    NoRuns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Milliseconds of wall time.
    Ms,
    /// Mebibytes of resident memory.
    Mib,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
        }
    }
}

/// One measured quantity of one run: its samples, or why there are none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    /// Stable identifier, for tracking a figure over time.
    pub key: String,
    /// The table section this metric belongs to.
    pub group: String,
    pub name: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
    /// Failed attempts (not counted in `samples`).
    pub errors: u64,
    /// The last failure, when there was one.
    pub last_error: Option<String>,
    /// Why nothing could be measured, e.g. "Unimplemented".
    pub unavailable: Option<String>,
}

/// Everything one `run` of the driver measured against one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub schema: String,
    pub label: String,
    pub endpoint: String,
    pub runtime_name: String,
    pub runtime_version: String,
    pub started_unix: u64,
    pub duration_secs: f64,
    pub params: BTreeMap<String, String>,
    pub metrics: Vec<Metric>,
}

impl Run {
    pub fn load(path: &Path) -> Result<Run, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ReportError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(ReportError::Encode)?;
        write_atomic(path, text.as_bytes())
    }
}

/// Collects the metrics of one run in the order they are declared, which is
/// the order of the table.
#[derive(Debug, Default)]
pub struct Recorder {
    metrics: Vec<Metric>,
}

impl Recorder {
    /// Declares a metric so its row exists even when nothing is measured.
    pub fn declare(&mut self, key: &str, group: &str, name: &str, unit: Unit) {
        if self.find(key).is_none() {
            self.metrics.push(Metric {
                key: key.to_owned(),
                group: group.to_owned(),
                name: name.to_owned(),
                unit,
                samples: Vec::new(),
                errors: 0,
                last_error: None,
                unavailable: None,
            });
        }
    }

    fn find(&mut self, key: &str) -> Option<&mut Metric> {
        self.metrics.iter_mut().find(|m| m.key == key)
    }

    pub fn sample(&mut self, key: &str, value: f64) {
        if let Some(m) = self.find(key) {
            m.samples.push(value);
        }
    }

    /// A failed attempt; an `Unimplemented` answer makes the metric
    /// unavailable rather than erroneous.
    pub fn fail(&mut self, key: &str, unimplemented: bool, message: &str) {
        if let Some(m) = self.find(key) {
            if unimplemented {
                m.unavailable = Some("Unimplemented".to_owned());
            } else {
                m.errors += 1;
                m.last_error = Some(message.to_owned());
            }
        }
    }

    /// Marks a metric that could not be attempted (a step before it
    /// failed), unless it already has samples or a reason.
    pub fn block(&mut self, key: &str, reason: &str) {
        if let Some(m) = self.find(key)
            && m.samples.is_empty()
            && m.unavailable.is_none()
            && m.errors == 0
        {
            m.unavailable = Some(reason.to_owned());
        }
    }

    pub fn into_metrics(self) -> Vec<Metric> {
        self.metrics
    }
}

/// count, median, p90, p99, max of a sample set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stats {
            count: n,
            median,
            p90: nearest_rank(&s, 90.0),
            p99: nearest_rank(&s, 99.0),
            max: s[n - 1],
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One runtime's figures for one metric, in the merged report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelResult {
    #[serde(flatten)]
    pub stats: Option<Stats>,
    pub errors: u64,
    pub last_error: Option<String>,
    pub unavailable: Option<String>,
    pub samples: Vec<f64>,
}

/// first label / second label, for each statistic.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ratio {
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergedMetric {
    pub key: String,
    pub group: String,
    pub name: String,
    pub unit: Unit,
    pub results: BTreeMap<String, LabelResult>,
    /// `labels[0]` / `labels[1]`, when both have figures.
    pub ratio: Option<Ratio>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub label: String,
    pub endpoint: String,
    pub runtime_name: String,
    pub runtime_version: String,
    pub started_unix: u64,
    pub duration_secs: f64,
    pub params: BTreeMap<String, String>,
}

/// The comparison of every run given, grouped by label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merged {
    pub schema: String,
    pub generated_unix: u64,
    /// In the order first seen; ratios are `labels[0] / labels[1]`.
    pub labels: Vec<String>,
    pub runs: Vec<RunInfo>,
    pub metrics: Vec<MergedMetric>,
}

/// Pools the samples of every run by label and metric.
pub fn merge(runs: &[Run], generated_unix: u64) -> Result<Merged, ReportError> {
    if runs.is_empty() {
        return Err(ReportError::NoRuns);
    }
    let mut labels: Vec<String> = Vec::new();
    for run in runs {
        if !labels.contains(&run.label) {
            labels.push(run.label.clone());
        }
    }
    // Metric order: first appearance across runs.
    let mut metrics: Vec<MergedMetric> = Vec::new();
    for run in runs {
        for m in &run.metrics {
            let idx = match metrics.iter().position(|x| x.key == m.key) {
                Some(i) => i,
                None => {
                    metrics.push(MergedMetric {
                        key: m.key.clone(),
                        group: m.group.clone(),
                        name: m.name.clone(),
                        unit: m.unit,
                        results: BTreeMap::new(),
                        ratio: None,
                    });
                    metrics.len() - 1
                }
            };
            let entry = metrics[idx]
                .results
                .entry(run.label.clone())
                .or_insert_with(|| LabelResult {
                    stats: None,
                    errors: 0,
                    last_error: None,
                    unavailable: None,
                    samples: Vec::new(),
                });
            entry.samples.extend_from_slice(&m.samples);
            entry.errors += m.errors;
            if m.last_error.is_some() {
                entry.last_error = m.last_error.clone();
            }
            if entry.unavailable.is_none() {
                entry.unavailable = m.unavailable.clone();
            }
        }
    }
    for metric in &mut metrics {
        for result in metric.results.values_mut() {
            result.stats = Stats::of(&result.samples);
            if result.stats.is_some() {
                // Some run measured it: a reason from another run would mislead.
                result.unavailable = None;
            }
        }
        if labels.len() >= 2 {
            let a = metric.results.get(&labels[0]).and_then(|r| r.stats);
            let b = metric.results.get(&labels[1]).and_then(|r| r.stats);
            if let (Some(a), Some(b)) = (a, b) {
                metric.ratio = Some(Ratio {
                    median: ratio(a.median, b.median),
                    p90: ratio(a.p90, b.p90),
                    p99: ratio(a.p99, b.p99),
                    max: ratio(a.max, b.max),
                });
            }
        }
    }
    Ok(Merged {
        schema: SCHEMA.to_owned(),
        generated_unix,
        labels,
        runs: runs
            .iter()
            .map(|r| RunInfo {
                label: r.label.clone(),
                endpoint: r.endpoint.clone(),
                runtime_name: r.runtime_name.clone(),
                runtime_version: r.runtime_version.clone(),
                started_unix: r.started_unix,
                duration_secs: r.duration_secs,
                params: r.params.clone(),
            })
            .collect(),
        metrics,
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

impl Merged {
    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(self).map_err(ReportError::Encode)?;
        write_atomic(path, text.as_bytes())
    }

    /// The table: per metric, each label's count, median, p90, p99 and max,
    /// then the ratios of the first label to the second.
    pub fn table(&self) -> String {
        const NAME_W: usize = 40;
        const NUM_W: usize = 8;
        const STAT_COLS: usize = 5;
        let label_w = STAT_COLS * (NUM_W + 1);
        let mut out = String::new();

        // Header: a line of labels, a line of column names.
        let mut h1 = format!("{:NAME_W$} {:4}", "", "");
        let mut h2 = format!("{:NAME_W$} {:4}", "operation", "unit");
        for label in &self.labels {
            let _ = write!(h1, " |{:^label_w$}", truncate(label, label_w));
            let _ = write!(
                h2,
                " |{:>NUM_W$} {:>NUM_W$} {:>NUM_W$} {:>NUM_W$} {:>NUM_W$}",
                "n", "median", "p90", "p99", "max"
            );
        }
        let with_ratio = self.labels.len() >= 2;
        if with_ratio {
            let title = format!("{}/{}", self.labels[0], self.labels[1]);
            let w = 4 * 7;
            let _ = write!(h1, " |{:^w$}", truncate(&title, w));
            let _ = write!(
                h2,
                " |{:>6} {:>6} {:>6} {:>6}",
                "median", "p90", "p99", "max"
            );
        }
        let rule = "-".repeat(h2.chars().count());
        let _ = writeln!(out, "{h1}\n{h2}\n{rule}");

        let mut group = "";
        for m in &self.metrics {
            if m.group != group {
                group = &m.group;
                let _ = writeln!(out, "{group}");
            }
            let mut line = format!(
                "{:NAME_W$} {:4}",
                truncate(&format!("  {}", m.name), NAME_W),
                m.unit.label()
            );
            for label in &self.labels {
                let cell = match m.results.get(label) {
                    Some(r) => match &r.stats {
                        Some(s) => format!(
                            "{:>NUM_W$} {:>NUM_W$} {:>NUM_W$} {:>NUM_W$} {:>NUM_W$}",
                            count_cell(s.count, r.errors),
                            num(s.median),
                            num(s.p90),
                            num(s.p99),
                            num(s.max)
                        ),
                        None => format!(
                            "  {:<w$}",
                            truncate(&not_measured(r), label_w - 2),
                            w = label_w - 2
                        ),
                    },
                    None => format!("  {:<w$}", "n/a (not run)", w = label_w - 2),
                };
                let _ = write!(line, " |{cell}");
            }
            if with_ratio {
                match &m.ratio {
                    Some(r) => {
                        let _ = write!(
                            line,
                            " |{:>6} {:>6} {:>6} {:>6}",
                            ratio_cell(r.median),
                            ratio_cell(r.p90),
                            ratio_cell(r.p99),
                            ratio_cell(r.max)
                        );
                    }
                    None => {
                        let _ = write!(line, " |{:>6}", "-");
                    }
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }

        // Failures, so an "n" lower than expected is explained.
        let mut notes = Vec::new();
        for m in &self.metrics {
            for label in &self.labels {
                if let Some(r) = m.results.get(label)
                    && r.errors > 0
                {
                    notes.push(format!(
                        "  {label}: {}: {} failed attempt(s), last: {}",
                        m.name,
                        r.errors,
                        r.last_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "\nfailures (not counted in n):");
            for n in notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

fn not_measured(r: &LabelResult) -> String {
    match (&r.unavailable, &r.last_error) {
        (Some(reason), _) => format!("n/a ({reason})"),
        (None, Some(err)) => format!("failed: {err}"),
        (None, None) => "n/a (not run)".to_owned(),
    }
}

fn count_cell(count: usize, errors: u64) -> String {
    if errors > 0 {
        format!("{count}!")
    } else {
        count.to_string()
    }
}

/// Three significant figures, never scientific notation.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio_cell(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "-".to_owned()
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Writes a file whole or not at all: temp file, fsync, rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ReportError> {
    use std::io::Write;
    let err = |source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&samples).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.median, 50.5);
        assert_eq!(s.p90, 90.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.max, 100.0);

        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.p90, s.p99, s.max), (2.0, 3.0, 3.0, 3.0));
        assert!(Stats::of(&[]).is_none());
    }

    fn run(label: &str, samples: Vec<f64>, unavailable: Option<&str>) -> Run {
        let mut rec = Recorder::default();
        rec.declare(
            "pod.run",
            "pod sandbox lifecycle",
            "RunPodSandbox",
            Unit::Ms,
        );
        rec.declare(
            "pod.stop",
            "pod sandbox lifecycle",
            "StopPodSandbox",
            Unit::Ms,
        );
        for s in samples {
            rec.sample("pod.run", s);
        }
        if let Some(u) = unavailable {
            rec.fail("pod.run", true, u);
        }
        rec.block("pod.stop", "needs RunPodSandbox");
        Run {
            schema: SCHEMA.to_owned(),
            label: label.to_owned(),
            endpoint: "/x.sock".to_owned(),
            runtime_name: label.to_owned(),
            runtime_version: "1".to_owned(),
            started_unix: 0,
            duration_secs: 1.0,
            params: BTreeMap::new(),
            metrics: rec.into_metrics(),
        }
    }

    #[test]
    fn merge_pools_runs_and_computes_ratios() {
        let runs = vec![
            run("a", vec![2.0, 4.0], None),
            run("b", vec![1.0], None),
            run("a", vec![6.0], None),
            run("b", vec![3.0], None),
        ];
        let m = merge(&runs, 0).unwrap();
        assert_eq!(m.labels, vec!["a", "b"]);
        let pod = &m.metrics[0];
        assert_eq!(pod.results["a"].stats.unwrap().count, 3);
        assert_eq!(pod.results["a"].stats.unwrap().median, 4.0);
        assert_eq!(pod.results["b"].stats.unwrap().median, 2.0);
        assert_eq!(pod.ratio.unwrap().median, 2.0);
        assert_eq!(pod.ratio.unwrap().max, 2.0);
        let table = m.table();
        assert!(table.contains("RunPodSandbox"), "{table}");
        assert!(table.contains("n/a (needs RunPodSandbox)"), "{table}");
    }

    #[test]
    fn unimplemented_is_shown_not_fatal() {
        let runs = vec![
            run("ketch", vec![], Some("x")),
            run("containerd", vec![5.0], None),
        ];
        let m = merge(&runs, 0).unwrap();
        let pod = &m.metrics[0];
        assert!(pod.ratio.is_none());
        assert_eq!(
            pod.results["ketch"].unavailable.as_deref(),
            Some("Unimplemented")
        );
        let table = m.table();
        assert!(table.contains("n/a (Unimplemented)"), "{table}");
        let json = serde_json::to_string(&m).unwrap();
        let back: Merged = serde_json::from_str(&json).unwrap();
        assert_eq!(back.metrics.len(), 2);
    }
}
