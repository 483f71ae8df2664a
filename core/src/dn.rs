//! Distinguished names as Clacks reads them: the parent, the first RDN, a subtree moved
//! elsewhere, RDN value escaping (RFC 4514) and the key two spellings of one DN share.
//! DNs are part of the wire (ACL targets, object references), so the object layer and
//! the ACL engine both use these rules and neither owns them.

/// The parent of `dn` (`""` for a top entry). Escaped commas (`\,`) are respected.
pub fn parent_dn(dn: &str) -> &str {
    split_rdn(dn).1
}

/// Splits `dn` into its first RDN and the rest.
pub fn split_rdn(dn: &str) -> (&str, &str) {
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => return (&dn[..i], dn[i + 1..].trim_start()),
            _ => i += 1,
        }
    }
    (dn, "")
}

/// The DN `dn` gets when the subtree at `old` moves to `new`: its own leading RDNs,
/// then `new`. `None` when `dn` is not `old` or below it.
pub fn rebase_dn(dn: &str, old: &str, new: &str) -> Option<String> {
    let components = |d: &str| {
        let mut parts = Vec::new();
        let mut rest = d.trim();
        while !rest.is_empty() {
            let (rdn, tail) = split_rdn(rest);
            parts.push(rdn.trim().to_owned());
            rest = tail;
        }
        parts
    };
    let (own, old_parts) = (components(dn), components(old));
    let keep = own.len().checked_sub(old_parts.len())?;
    let same_tail = own[keep..].iter().zip(&old_parts).all(|(a, b)| a.to_lowercase() == b.to_lowercase());
    if !same_tail {
        return None;
    }
    let mut moved = own[..keep].to_vec();
    moved.push(new.to_owned());
    Some(moved.join(","))
}

/// Escapes a value for use in an RDN (RFC 4514).
pub fn escape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A DN in the form used for comparisons: attribute names lowercased, spaces after
/// commas dropped. Values keep their case (LDAP compares most of them case-insensitively,
/// so the store lowercases the whole key where it needs a lookup key).
pub fn dn_key(dn: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = dn.trim();
    while !rest.is_empty() {
        let (rdn, tail) = split_rdn(rest);
        parts.push(rdn.trim().to_lowercase());
        rest = tail;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_split_and_escape() {
        assert_eq!(split_rdn("cn=a\\,b,ou=people,dc=x"), ("cn=a\\,b", "ou=people,dc=x"));
        assert_eq!(parent_dn("dc=x"), "");
        assert_eq!(escape_rdn_value("Smith, John"), "Smith\\, John");
        assert_eq!(escape_rdn_value(" lead"), "\\ lead");
        assert_eq!(dn_key("CN=Ada, OU=People,dc=X"), "cn=ada,ou=people,dc=x");
        assert_eq!(
            rebase_dn("uid=a,OU=People,dc=x", "ou=people,dc=x", "ou=staff,dc=x").as_deref(),
            Some("uid=a,ou=staff,dc=x")
        );
        assert_eq!(rebase_dn("ou=people,dc=x", "ou=people,dc=x", "ou=staff,dc=y").as_deref(), Some("ou=staff,dc=y"));
        assert_eq!(rebase_dn("uid=a,ou=other,dc=x", "ou=people,dc=x", "ou=staff,dc=x"), None);
    }
}
