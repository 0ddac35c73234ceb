//! Kubernetes name and label syntax, checked the way the API server checks it.
//!
//! The config names namespaces, Services and label keys that end up inside
//! patches; a typo there must fail at load time with the field named, not as
//! an API server rejection of every Deployment the webhook touches later.
//! Written here: neither kube nor k8s-openapi carries the API server's
//! validation, and each check is a few lines.

/// DNS-1123 label: namespaces. Lower-case alphanumerics and `-`, at most 63
/// characters, starting and ending with an alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1035 label: Service names. Like DNS-1123 but must start with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// The name half of a qualified name (label keys): at most 63 characters of
/// alphanumerics, `-`, `_`, `.`, beginning and ending with an alphanumeric.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label key: `[prefix/]name` with a DNS-1123 subdomain prefix.
pub fn is_label_key(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// A label value: empty, or a qualified-name part.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names() {
        assert!(is_dns1123_label("shop-1"));
        assert!(!is_dns1123_label("Shop"));
        assert!(!is_dns1123_label("-shop"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1035_label("orders"));
        assert!(!is_dns1035_label("1orders"));
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("app.kubernetes.io/"));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("bad key"));
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3"));
        assert!(!is_label_value("-x"));
    }
}
