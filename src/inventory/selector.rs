//! Kubernetes label selectors in their string form (`team in (a,b),!skip,env=prod`), parsed as
//! `labels.Parse` does, for `--namespace-selector`.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    source: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector {selector:?}: {problem}")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |problem: String| SelectorError { selector: input.into(), problem };
        let mut requirements = Vec::new();
        for part in split_top_level(input).map_err(err)? {
            let part = part.trim();
            if part.is_empty() {
                if input.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".into()));
            }
            requirements.push(parse_requirement(part).map_err(err)?);
        }
        Ok(Self { requirements, source: input.trim().to_string() })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::GreaterThan(k, n) => labels.get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            Requirement::LessThan(k, n) => labels.get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_of(key.trim())?));
    }
    for (op, make) in [
        ("!=", Requirement::NotEquals as fn(String, String) -> Requirement),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = part.split_once(op) {
            return Ok(make(key_of(k.trim())?, value_of(v.trim())?));
        }
    }
    for (op, greater) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(op) {
            let n = v.trim().parse::<i64>().map_err(|_| format!("{op} needs an integer, not {:?}", v.trim()))?;
            let k = key_of(k.trim())?;
            return Ok(if greater { Requirement::GreaterThan(k, n) } else { Requirement::LessThan(k, n) });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words[..] {
        let rest = rest.trim_start();
        let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
            ("notin", l)
        } else if let Some(l) = rest.strip_prefix("in") {
            ("in", l)
        } else {
            return Err(format!("unknown operator in {part:?}"));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("{op} needs a parenthesised list in {part:?}"))?;
        let values = inner.split(',').map(|v| value_of(v.trim())).collect::<Result<Vec<_>, _>>()?;
        let key = key_of(key)?;
        return Ok(if op == "in" { Requirement::In(key, values) } else { Requirement::NotIn(key, values) });
    }
    Ok(Requirement::Exists(key_of(part)?))
}

/// `[prefix/]name`: prefix a DNS subdomain, name 1-63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
fn key_of(key: &str) -> Result<String, String> {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    });
    if prefix_ok && is_label_value(name) && !name.is_empty() {
        Ok(key.to_string())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn value_of(value: &str) -> Result<String, String> {
    if is_label_value(value) { Ok(value.to_string()) } else { Err(format!("invalid label value {value:?}")) }
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.is_empty()
        || (b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn full_syntax() {
        let s = LabelSelector::parse("team in (a, b),!skip,env=prod,tier!=web,owner,example.com/x notin (y)")
            .expect("valid");
        let ok = labels(&[("team", "a"), ("env", "prod"), ("tier", "db"), ("owner", "")]);
        assert!(s.matches(&ok));
        assert!(!s.matches(&labels(&[("team", "c"), ("env", "prod"), ("owner", "")])));
        let mut skipped = ok.clone();
        skipped.insert("skip".into(), "yes".into());
        assert!(!s.matches(&skipped));
        let mut excluded = ok.clone();
        excluded.insert("example.com/x".into(), "y".into());
        assert!(!s.matches(&excluded));
    }

    #[test]
    fn empty_matches_all_and_numbers_compare() {
        assert!(LabelSelector::parse("").expect("valid").matches(&labels(&[])));
        let s = LabelSelector::parse("tier>2,size<10").expect("valid");
        assert!(s.matches(&labels(&[("tier", "3"), ("size", "9")])));
        assert!(!s.matches(&labels(&[("tier", "2"), ("size", "9")])));
    }

    #[test]
    fn errors() {
        for bad in ["team in a,b", "team in (a", "a,,b", "-bad=x", "k=-v", "k>x", "team within (a)", "a)"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }
}
