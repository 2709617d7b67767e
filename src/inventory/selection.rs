//! Which workloads and images are checked: namespaces by name and labels, disabled workloads,
//! and image patterns. One place for every "is this one ours?" question of `check` and `run`.

use std::collections::BTreeMap;
use std::str::FromStr;

use regex::Regex;

use super::selector::LabelSelector;
use super::{WorkloadKind, WorkloadRecord};

/// Which workloads and images are checked.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub namespace_selector: LabelSelector,
    pub include_disabled: IncludeDisabled,
    pub images: ImageFilter,
}

impl Selection {
    /// Whether a workload is checked, given its namespace's labels (`None`: not known).
    pub fn admits(&self, record: &WorkloadRecord, namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
        self.admits_namespace(&record.workload.namespace, namespace_labels) && self.include_disabled.admits(record)
    }

    /// Whether namespace labels must be known to decide: a `--namespace-selector` was given.
    pub fn needs_namespace_labels(&self) -> bool {
        !self.namespace_selector.is_empty()
    }

    /// Whether a namespace is ours by name (its labels not known here).
    pub fn admits_namespace_name(&self, namespace: &str) -> bool {
        (self.include_namespaces.is_empty() || self.include_namespaces.iter().any(|n| n == namespace))
            && !self.exclude_namespaces.iter().any(|n| n == namespace)
    }

    fn admits_namespace(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        let empty = BTreeMap::new();
        (self.include_namespaces.is_empty() || self.include_namespaces.iter().any(|n| n == namespace))
            && !self.exclude_namespaces.iter().any(|n| n == namespace)
            && (self.namespace_selector.is_empty() || self.namespace_selector.matches(labels.unwrap_or(&empty)))
    }
}

/// One value of `--include-disabled`: a workload kind, or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisabledKind {
    All,
    Kind(WorkloadKind),
}

impl FromStr for DisabledKind {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("all") {
            return Ok(DisabledKind::All);
        }
        WorkloadKind::from_kind_ignoring_case(value)
            .map(DisabledKind::Kind)
            .ok_or_else(|| format!("unknown kind {value:?} (a workload kind such as Deployment, or all)"))
    }
}

/// `--include-disabled KIND,...|all`: which disabled (scaled to zero, suspended) workloads are
/// still checked.
#[derive(Clone, Debug, Default)]
pub struct IncludeDisabled {
    all: bool,
    kinds: Vec<WorkloadKind>,
}

impl IncludeDisabled {
    pub fn new(values: &[DisabledKind]) -> Self {
        let mut include = IncludeDisabled::default();
        for value in values {
            match value {
                DisabledKind::All => include.all = true,
                DisabledKind::Kind(kind) => include.kinds.push(*kind),
            }
        }
        include
    }

    pub fn all() -> Self {
        IncludeDisabled { all: true, kinds: Vec::new() }
    }

    pub fn admits(&self, record: &WorkloadRecord) -> bool {
        !record.is_disabled() || self.all || self.kinds.contains(&record.workload.kind)
    }
}

/// `--ignore-images` / `--allow-images`, matched against the reference as written and its
/// canonical form: an image is checked when no ignore pattern matches and, if allow patterns
/// are given, one of them does.
#[derive(Clone, Debug, Default)]
pub struct ImageFilter {
    ignore: Vec<Regex>,
    allow: Vec<Regex>,
}

impl ImageFilter {
    pub fn new(ignore: Vec<Regex>, allow: Vec<Regex>) -> Self {
        Self { ignore, allow }
    }

    /// No pattern given: every image is admitted, and nothing needs formatting to say so.
    pub fn is_empty(&self) -> bool {
        self.ignore.is_empty() && self.allow.is_empty()
    }

    pub fn admits(&self, as_written: &str, canonical: Option<&str>) -> bool {
        let matches = |r: &Regex| r.is_match(as_written) || canonical.is_some_and(|c| r.is_match(c));
        !self.ignore.iter().any(matches) && (self.allow.is_empty() || self.allow.iter().any(matches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::WorkloadRef;

    fn record(kind: WorkloadKind, replicas: Option<i32>, suspended: bool) -> WorkloadRecord {
        WorkloadRecord {
            workload: WorkloadRef { kind, namespace: "ns".into(), name: "w".into() },
            containers: Box::default(),
            pull_secrets: Box::default(),
            service_account: "default".into(),
            replicas,
            suspended,
            platforms: None,
        }
    }

    fn kinds(values: &[&str]) -> Result<IncludeDisabled, String> {
        let parsed: Result<Vec<DisabledKind>, String> = values.iter().map(|v| v.parse()).collect();
        parsed.map(|v| IncludeDisabled::new(&v))
    }

    fn regexes(patterns: &[&str]) -> Vec<Regex> {
        patterns.iter().map(|p| Regex::new(p).expect("valid test regex")).collect()
    }

    #[test]
    fn disabled_workloads_are_left_out_unless_asked_for() {
        let scaled_down = record(WorkloadKind::Deployment, Some(0), false);
        let suspended = record(WorkloadKind::CronJob, None, true);
        let running = record(WorkloadKind::Deployment, Some(2), false);
        let none = IncludeDisabled::default();
        assert!(!none.admits(&scaled_down) && !none.admits(&suspended) && none.admits(&running));
        let some = kinds(&["cronjob"]).expect("valid");
        assert!(!some.admits(&scaled_down) && some.admits(&suspended));
        let all = kinds(&["Deployment", "all"]).expect("valid");
        assert!(all.admits(&scaled_down) && all.admits(&suspended));
        assert!(kinds(&["Service"]).is_err());
    }

    #[test]
    fn image_filters() {
        let f = ImageFilter::new(regexes(&["^docker.io/library/"]), vec![]);
        assert!(!f.admits("nginx", Some("docker.io/library/nginx:latest")));
        assert!(f.admits("quay.io/a/b", Some("quay.io/a/b:latest")));
        let f = ImageFilter::new(vec![], regexes(&["quay\\.io"]));
        assert!(f.admits("quay.io/a/b", None));
        assert!(!f.admits("nginx", Some("docker.io/library/nginx:latest")));
    }
}
