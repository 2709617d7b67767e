//! YAML as pullcheck reads it from files it is handed (manifests, the registry config): with
//! limits that make a refusal cheap, and errors that say where, never what (docs/check.md,
//! "Inputs"). serde-saphyr's own Display quotes up to three source lines around an error, and
//! some of its messages a scalar or a key: in a Secret or a registry config, its credentials.

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeOwned;

/// Events aliases may replay in one document. A manifest reusing an anchored env list or
/// resources block a few times replays hundreds; billion laughs needs millions, and is refused
/// after a few MiB instead of after building them.
pub const MAX_REPLAYED_EVENTS: usize = 10_000;

/// Parses one document, without a source snippet in its error and with the alias limit.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        alias_limits: serde_saphyr::alias_limits! { max_total_replayed_events: MAX_REPLAYED_EVENTS },
    };
    serde_saphyr::from_str_with_options(text, options)
}

/// An error as pullcheck says it: its place and a problem that carries nothing of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// 1-based line and column within the text parsed, when known.
    pub at: Option<(usize, usize)>,
    pub problem: Cow<'static, str>,
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line} column {column}: {}", self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

pub fn describe(error: &serde_saphyr::Error) -> Described {
    let at = error
        .location()
        .filter(|at| at.line() > 0)
        .map(|at| (usize::try_from(at.line()).unwrap_or(usize::MAX), usize::try_from(at.column()).unwrap_or(0)));
    Described { at, problem: problem(error) }
}

/// The problem in fixed words, or in words of pullcheck's own types (a field's expected type,
/// the fields a mapping may have) and an unknown key — never a scalar, tag or character of the
/// input, nor the lines around the error.
fn problem(error: &serde_saphyr::Error) -> Cow<'static, str> {
    use serde_saphyr::granit_parser::ErrorKind as Scan;
    use serde_saphyr::{Error as E, ExternalMessageSource};
    let fixed = match error.without_snippet() {
        E::AliasError { error, .. } => return problem(error),
        E::ExternalMessage { source, .. } => match &**source {
            ExternalMessageSource::Parser(scan) => match scan.kind() {
                // The kinds that carry text or a character of the input.
                Scan::Custom(_)
                | Scan::InputIo { .. }
                | Scan::InputDecoding { .. }
                | Scan::UnexpectedCharacter { .. } => "YAML syntax error",
                kind => return kind.to_string().into(),
            },
            _ => "YAML syntax error",
        },
        E::SerdeInvalidType { expected, .. } | E::SerdeInvalidValue { expected, .. } => {
            return format!("a value of the wrong type or form: expected {expected}").into();
        }
        E::InvalidScalar { ty, .. } => return format!("a value of the wrong type or form: expected {ty}").into(),
        E::SerdeMissingField { field, .. } => return format!("missing field `{field}`").into(),
        // A key is the shape of the document, not a value in it: a typo is named.
        E::SerdeUnknownField { field, expected, .. } => {
            return format!("unknown field `{field}`, expected one of {}", expected.join(", ")).into();
        }
        E::SerdeUnknownVariant { expected, .. } => {
            return format!("an unknown value: expected one of {}", expected.join(", ")).into();
        }
        E::Eof { .. } => "unexpected end of the document",
        E::Budget { .. } => "larger or deeper than pullcheck reads in one document",
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => "aliases expand past pullcheck's limit",
        E::UnknownAnchor { .. } => "an alias to an unknown anchor",
        E::DuplicateMappingKey { .. } => "a duplicate mapping key",
        E::NonFiniteFloat { .. } => "a number out of range",
        E::InvalidUtf8Input => "not UTF-8 text",
        _ => "malformed YAML",
    };
    fixed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Auth {
        username: String,
        port: u16,
    }

    fn error_of<T: DeserializeOwned + fmt::Debug>(text: &str) -> String {
        from_str::<T>(text).map(|v| format!("parsed: {v:?}")).unwrap_or_else(|e| describe(&e).to_string())
    }

    #[test]
    fn errors_carry_nothing_of_the_input() {
        for (text, said) in [
            ("port: 1\nusername: s3cr3t: x\n", "line 2 column 17: mapping values are not allowed in this context"),
            ("username: s3cr3t\nport: s3cr3t\n", "line 2 column 7: a value of the wrong type or form: expected u16"),
            (
                "username: u\nport: 1\nuser: s3cr3t\n",
                "line 3 column 1: unknown field `user`, expected one of username, port",
            ),
            ("username: u\nusername: s3cr3t\nport: 1\n", "line 2 column 1: a duplicate mapping key"),
            (
                "username: \"s3cr3t\\q\"\nport: 1\n",
                "line 1 column 11: while parsing a quoted scalar, found unknown escape character",
            ),
            ("username: *s3cr3t\nport: 1\n", "line 1 column 11: an alias to an unknown anchor"),
        ] {
            let error = error_of::<Auth>(text);
            assert!(!error.contains("s3cr3t"), "{error}");
            assert_eq!(error, said, "{text}");
        }
        assert_eq!(error_of::<serde_json::Value>("n: 1e999\n"), "line 1 column 4: a number out of range");
    }
}
