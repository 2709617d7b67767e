//! Property tests of image reference parsing: it never panics, canonical forms are fixed points,
//! every reference the grammar allows parses, and the result agrees with oci-spec's parser
//! (what oci-client uses) on everything both accept.

use proptest::prelude::*;
use pullcheck::image::ImageRef;

fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}[a-z0-9]\\.(io|com|example)",
        Just("localhost".to_string()),
        "[a-z]{1,8}\\.[a-z]{2,5}:[0-9]{2,5}",
        "localhost:[0-9]{2,5}",
        Just("[::1]:5000".to_string()),
    ]
}

fn reference() -> impl Strategy<Value = String> {
    (
        proptest::option::of(host()),
        prop::collection::vec(component(), 1..4),
        proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        proptest::option::of("[0-9a-f]{64}"),
    )
        .prop_map(|(host, mut path, tag, digest)| {
            // Without a host, a first component with a dot would be read as one.
            if host.is_none() {
                path[0] = path[0].replace('.', "-");
            }
            let mut s = host.map(|h| format!("{h}/")).unwrap_or_default();
            s.push_str(&path.join("/"));
            if let Some(t) = tag {
                s.push(':');
                s.push_str(&t);
            }
            if let Some(d) = digest {
                s.push_str("@sha256:");
                s.push_str(&d);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn never_panics(s in ".{0,300}") {
        let _ = ImageRef::parse(&s);
    }

    #[test]
    fn never_panics_on_reference_like_bytes(s in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,80}") {
        if let Ok(r) = ImageRef::parse(&s) {
            // Canonical forms are fixed points.
            let again = ImageRef::parse(&r.to_string());
            prop_assert_eq!(again.as_ref(), Ok(&r), "{} → {}", s, r);
        }
    }

    #[test]
    fn grammar_references_parse_and_round_trip(s in reference()) {
        let r = ImageRef::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(ImageRef::parse(&r.to_string()), Ok(r.clone()));
        prop_assert!(r.tag().is_some() || r.digest().is_some());
        prop_assert!(!r.repository().is_empty());
    }

    #[test]
    fn agrees_with_oci_spec(s in reference()) {
        let ours = ImageRef::parse(&s).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        // oci-spec has no IPv6 hosts; it answers for everything else.
        if let Ok(theirs) = s.parse::<oci_client::Reference>() {
            prop_assert_eq!(ours.registry(), theirs.registry(), "{}", s);
            prop_assert_eq!(ours.repository(), theirs.repository(), "{}", s);
            prop_assert_eq!(ours.digest(), theirs.digest(), "{}", s);
            if theirs.digest().is_none() || theirs.tag().is_some() {
                prop_assert_eq!(ours.tag(), theirs.tag(), "{}", s);
            }
        } else {
            prop_assert!(s.contains('['), "oci-spec refused {} that we accept", s);
        }
    }
}
