//! The answer of `check`: one entry per image as written (and credential, and platforms), with
//! the containers using it, as a table for people or JSON for scripts (docs/check.md), and the
//! exit code.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::error::Warning;
use crate::inventory::ContainerRef;
use crate::inventory::running::Digest;
use crate::registry::{RateLimit, State};
use crate::sources::manifests::InputError;

#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    /// The reference as written.
    pub image: String,
    pub canonical: Option<String>,
    pub state: State,
    pub digest: Option<String>,
    pub registry: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
    /// Whose answer this is: `pull secret shop/regcred`, `registry config`, `credential provider
    /// ecr-credential-provider`; absent when anonymous.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    pub workloads: Vec<WorkloadUse>,
    /// Only for an image on a deprecated registry, or `absent` from a moved repository: the same
    /// image under the replacement, and whether it can be pulled today.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<ReplacementReport>,
}

/// A container using the image, with what its pods run (a cluster's; none for manifests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadUse {
    #[serde(flatten)]
    pub user: ContainerRef,
    /// The digests its running pods started with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub running_digests: Vec<Digest>,
    /// Some running pod runs another digest than the tag resolves to now; left out when
    /// unknown (no running pod, not resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<bool>,
}

/// The image under the registry that replaced its deprecated one, and its probe's answer.
#[derive(Clone, Debug, Serialize)]
pub struct ReplacementReport {
    /// The canonical replacement reference (`registry.k8s.io/pause:3.9`).
    pub image: String,
    /// A moved repository's (shown only because the image is absent), not a deprecated
    /// registry's: the table says which.
    #[serde(skip)]
    pub moved: bool,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Images by state, and the pull budgets registries announced while they were probed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub states: BTreeMap<State, usize>,
    /// Present only when some registry sent `ratelimit-*` headers (Docker Hub does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitReport>,
}

/// The lowest budget a registry announced to one credential during the check: the last one,
/// since what remains only falls within a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimitReport {
    pub registry: String,
    /// The credential's name (`pull secret shop/regcred`, `registry config`, `anonymous`), never
    /// its content.
    pub credential: String,
    #[serde(flatten)]
    pub budget: RateLimit,
}

impl RateLimitReport {
    /// One report per (registry, credential), the lowest remaining kept, sorted.
    pub fn lowest<'a>(seen: impl IntoIterator<Item = (&'a str, String, RateLimit)>) -> Vec<Self> {
        let mut lowest: BTreeMap<(String, String), RateLimit> = BTreeMap::new();
        for (registry, credential, budget) in seen {
            lowest
                .entry((registry.to_string(), credential))
                .and_modify(|kept| {
                    if budget.remaining < kept.remaining {
                        *kept = budget;
                    }
                })
                .or_insert(budget);
        }
        lowest.into_iter().map(|((registry, credential), budget)| Self { registry, credential, budget }).collect()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub images: Vec<ImageReport>,
    pub summary: Summary,
    /// Inputs that could not be read; present only when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub input_errors: Vec<InputError>,
    /// Why the check could not look at what it was asked to (kinds that could not be listed,
    /// no workload found): one line per cause, and exit 2. Present only when there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What limits the answer without stopping it: kinds RBAC hides, pull secrets missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// The warnings as a person reads them: a cause several kinds share said once.
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Report {
    /// Problems first, then by image; the summary counted from the entries.
    pub fn new(mut images: Vec<ImageReport>) -> Self {
        images.sort_by(|a, b| a.state.cmp(&b.state).then_with(|| a.image.cmp(&b.image)));
        let mut states = BTreeMap::new();
        for image in &images {
            *states.entry(image.state).or_insert(0) += 1;
        }
        Report { images, summary: Summary { states, rate_limits: Vec::new() }, ..Report::default() }
    }

    /// 0 every image available, 1 some image not, 2 some input could not be read or the check
    /// could not look (`errors`).
    pub fn exit_code(&self) -> u8 {
        if !self.input_errors.is_empty() || !self.errors.is_empty() {
            2
        } else if self.images.iter().any(|i| i.state != State::Available) {
            1
        } else {
            0
        }
    }

    /// The report as JSON into `out`, written as it is serialized: at 25,000 images the whole
    /// text held in one string was a third of `check -A`'s peak (docs/architecture.md, "At
    /// Kubernetes' limits").
    pub fn write_json(&self, out: impl std::io::Write) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(out);
        serde_json::to_writer_pretty(&mut out, self)?;
        std::io::Write::write_all(&mut out, b"\n")?;
        std::io::Write::flush(&mut out)
    }

    /// Problems first; one line per image, with where it is used and why it failed.
    pub fn to_table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .images
            .iter()
            .map(|i| {
                let first = i.workloads.first().map_or_else(String::new, |w| w.user.to_string());
                let more =
                    if i.workloads.len() > 1 { format!(" +{} more", i.workloads.len() - 1) } else { String::new() };
                let mut detail = match (&i.error, &i.digest) {
                    (Some(e), _) => e.clone(),
                    (None, Some(d)) => d.clone(),
                    (None, None) => String::new(),
                };
                if let Some(r) = &i.replacement {
                    let why = if r.moved { "moved repository" } else { "deprecated registry" };
                    let note = format!("{why}: {} is {}", r.image, r.state);
                    detail = if detail.is_empty() { note } else { format!("{note}; {detail}") };
                }
                let drifted = i.workloads.iter().filter(|w| w.drift == Some(true)).count();
                if drifted > 0 {
                    let note = format!("DRIFT: {drifted} of its containers run another digest than the tag's");
                    detail = if detail.is_empty() { note } else { format!("{note}; {detail}") };
                }
                let image = i.canonical.as_deref().unwrap_or(&i.image);
                [
                    i.state.to_string(),
                    visible(image).into_owned(),
                    visible(&first).into_owned() + &more,
                    visible(&detail).into_owned(),
                ]
            })
            .collect();
        let header = ["STATE", "IMAGE", "USED BY", "DETAIL"].map(String::from);
        let mut widths = [0usize; 3];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            for (cell, w) in row.iter().zip(widths) {
                out.push_str(&format!("{cell:<w$}  "));
            }
            out.push_str(&row[3]);
            out.push('\n');
        }
        let counts: Vec<String> = self.summary.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        out.push_str(&format!("\n{} images: {}\n", self.images.len(), counts.join(", ")));
        for r in &self.summary.rate_limits {
            let window = r.budget.window_seconds.map_or_else(String::new, |w| format!(" per {w}s"));
            out.push_str(&format!(
                "rate limit: {} has {} of {}{window} left for {}\n",
                r.registry, r.budget.remaining, r.budget.limit, r.credential
            ));
        }
        for e in &self.input_errors {
            out.push_str(&format!("input error: {}\n", visible(&e.to_string())));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {}\n", visible(e)));
        }
        for note in &self.notes {
            out.push_str(&format!("warning: {}\n", visible(note)));
        }
        out
    }
}

/// Text from the inputs as a terminal may show it: every control character (C0, DEL, C1)
/// and every character that reorders or hides text (bidirectional overrides, line and
/// paragraph separators) written as a visible escape (`\x1b`, `\n`, `\u{202e}`), so that a
/// manifest can neither drive the reader's terminal nor add lines to the table.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(visible("docker.io/library/nginx:1.27"), "docker.io/library/nginx:1.27");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)), "nothing copied when nothing to escape");
        assert_eq!(visible("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(visible("bell\u{7}nul\0del\u{7f}"), "bell\\x07nul\\x00del\\x7f");
        assert_eq!(visible("row\r\nnext\ttab"), "row\\r\\nnext\\ttab");
        assert_eq!(visible("csi\u{9b}31m"), "csi\\u{9b}31m");
        assert_eq!(visible("evil\u{202e}gnp.exe\u{2028}"), "evil\\u{202e}gnp.exe\\u{2028}");
        assert_eq!(visible("日本語 é"), "日本語 é", "printable text is kept");
    }

    #[test]
    fn a_table_row_stays_one_line() {
        let image = ImageReport {
            image: "app:v1\r\navailable  x".into(),
            canonical: None,
            state: State::BadImageFormat,
            digest: None,
            registry: None,
            duration_ms: 0,
            error: Some("bad \u{1b}[31m".into()),
            credential: None,
            workloads: Vec::new(),
            replacement: None,
        };
        let mut report = Report::new(vec![image]);
        report.errors.push("cannot list\n\u{7}".into());
        let table = report.to_table();
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(!table.chars().any(|c| c != '\n' && c.is_control()), "{table:?}");
        assert!(table.contains("app:v1\\r\\navailable  x") && table.contains("bad \\x1b[31m"), "{table}");
    }
}
