//! Distinguished names as Clacks reads them (RFC 4514): the parent, the first RDN, a
//! subtree moved elsewhere, RDN values with their `\c` and `\XX` escapes, and the key
//! every spelling of one DN shares. Writing a value into a DN is `ldap3::dn_escape`'s
//! job, in the object layer.
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

/// The value an RDN value spells: `\c` stands for `c`, `\XX` for the byte with that
/// hex code (RFC 4514 §2.4; multi-byte UTF-8 characters come as several `\XX`). Both
/// spellings of a value read the same, so `cn=a\,b` and `cn=a\2Cb` name one entry.
pub fn unescape_rdn_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        // Two hex digits exactly (`from_str_radix` alone would also take a sign).
        let hex = bytes.get(i + 1..i + 3).filter(|pair| pair.iter().all(u8::is_ascii_hexdigit));
        match hex.and_then(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                // `\c`: the character itself (all of it, when it is multi-byte).
                let next = value[i + 1..].chars().next();
                if let Some(c) = next {
                    out.extend_from_slice(c.to_string().as_bytes());
                }
                i += 1 + next.map_or(0, char::len_utf8);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The splits of `text` at `separator` where it is not escaped.
fn split_unescaped(text: &str, separator: u8) -> Vec<&str> {
    let bytes = text.as_bytes();
    let (mut parts, mut start, mut i) = (Vec::new(), 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == separator => {
                parts.push(&text[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    parts.push(&text[start.min(text.len())..]);
    parts
}

/// A value in the one spelling keys use: the characters RFC 4514 requires escaped as
/// `\c`, everything else as itself.
fn key_spelling(value: &str) -> String {
    let count = value.chars().count();
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == count && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `dn` is `base` or lies below it, however either is spelled.
pub fn is_at_or_below(dn: &str, base: &str) -> bool {
    let (key, base_key) = (dn_key(dn), dn_key(base));
    base_key.is_empty() || key == base_key || key.ends_with(&format!(",{base_key}"))
}

/// A DN in the form used for comparisons and lookups: attribute names and values
/// lowercased (LDAP compares names and most values case-insensitively), spaces around
/// separators dropped, and every value in one spelling whatever escapes it was written
/// with.
pub fn dn_key(dn: &str) -> String {
    // Most DNs hold nothing to unescape or re-spell: keyed directly, as the general path
    // below would key them (search keys every hit).
    let plain = |b: u8| b.is_ascii_alphanumeric() || b" ,=.-_@".contains(&b);
    if dn.bytes().all(plain) {
        let rdns = dn.trim().split(',').map(|rdn| match rdn.split_once('=') {
            Some((attr, value)) => format!("{}={}", attr.trim(), value.trim()),
            None => rdn.trim().to_owned(),
        });
        return rdns.collect::<Vec<_>>().join(",").to_lowercase();
    }
    let mut parts = Vec::new();
    let mut rest = dn.trim();
    while !rest.is_empty() {
        let (rdn, tail) = split_rdn(rest);
        let avas: Vec<String> = split_unescaped(rdn, b'+')
            .into_iter()
            .map(|ava| match ava.split_once('=') {
                Some((attr, value)) => {
                    // Trailing spaces count only when escaped, and then the unescaping keeps them.
                    let value = unescape_rdn_value(trim_unescaped_end(value.trim_start()));
                    format!("{}={}", attr.trim(), key_spelling(&value))
                }
                None => ava.trim().to_owned(),
            })
            .collect();
        parts.push(avas.join("+").to_lowercase());
        rest = tail;
    }
    parts.join(",")
}

/// `text` without trailing spaces that are not escaped.
fn trim_unescaped_end(text: &str) -> &str {
    let mut end = text.len();
    while end > 0 && text.as_bytes()[end - 1] == b' ' {
        let backslashes = text.as_bytes()[..end - 1].iter().rev().take_while(|b| **b == b'\\').count();
        if backslashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_split_and_escape() {
        assert_eq!(split_rdn("cn=a\\,b,ou=people,dc=x"), ("cn=a\\,b", "ou=people,dc=x"));
        assert_eq!(parent_dn("dc=x"), "");
        assert_eq!(dn_key("CN=Ada, OU=People,dc=X"), "cn=ada,ou=people,dc=x");
        assert_eq!(
            rebase_dn("uid=a,OU=People,dc=x", "ou=people,dc=x", "ou=staff,dc=x").as_deref(),
            Some("uid=a,ou=staff,dc=x")
        );
        assert_eq!(rebase_dn("ou=people,dc=x", "ou=people,dc=x", "ou=staff,dc=y").as_deref(), Some("ou=staff,dc=y"));
        assert_eq!(rebase_dn("uid=a,ou=other,dc=x", "ou=people,dc=x", "ou=staff,dc=x"), None);
    }

    #[test]
    fn every_spelling_of_a_value_reads_the_same() {
        let check = |escaped: &str, value: &str| assert_eq!(unescape_rdn_value(escaped), value, "{escaped}");
        check("Smith\\, John", "Smith, John");
        check("Smith\\2C John", "Smith, John");
        check("Smith\\2c John", "Smith, John");
        check("Jos\\C3\\A9", "José");
        check("Jos\\é", "José");
        check("a\\+b\\\\c", "a+b\\c");
        check("trailing\\", "trailing");

        let same = |a: &str, b: &str| assert_eq!(dn_key(a), dn_key(b), "{a} vs {b}");
        same("cn=Smith\\, John,dc=x", "CN=smith\\2C john, DC=X");
        same("uid=jos\\c3\\a9,dc=x", "uid=José,dc=x");
        same("cn=a+sn=b,dc=x", "CN=A + SN=B,dc=x");
        same("cn=a\\+b,dc=x", "cn=a\\2bb,dc=x");
        assert_ne!(dn_key("cn=a+sn=b,dc=x"), dn_key("cn=a\\+sn=b,dc=x"), "an escaped + is part of the value");
        assert_ne!(dn_key("cn=a\\ ,dc=x"), dn_key("cn=a,dc=x"), "an escaped trailing space counts");
        assert_eq!(dn_key("cn=a ,dc=x"), dn_key("cn=a,dc=x"), "an unescaped one does not");
        // The plain path and the general one agree.
        same("cn = Ada , ou=People,dc=x", "cn=ada,ou=people,dc=\\78");
        // Keys of DNs Clacks wrote before hex escapes were read stay as they were.
        assert_eq!(dn_key("uid=Smith\\, John,ou=People,dc=x"), "uid=smith\\, john,ou=people,dc=x");
    }
}
