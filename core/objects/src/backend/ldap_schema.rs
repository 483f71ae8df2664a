//! What the directory's schema says about attribute values: each attribute type's
//! syntax (RFC 4512 §4.1.2, RFC 4517), read once from the subschema entry, so a value
//! the server would refuse ("value #0 invalid per syntax") is refused before anything is
//! written, with the attribute and the reason.

use std::collections::HashMap;

/// The syntaxes Clacks checks; the others are left to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// IA5 String: ASCII only (`gecos`, `homeDirectory`, `mail`, …).
    Ia5,
    /// Printable String: letters, digits and `'()+,-./:=? `.
    Printable,
    /// Integer: an optional minus and digits.
    Integer,
    /// Numeric String: digits and spaces.
    Numeric,
    /// Boolean: `TRUE` or `FALSE`.
    Boolean,
    /// Directory String: any UTF-8.
    DirectoryString,
}

impl Syntax {
    fn from_oid(oid: &str) -> Option<Syntax> {
        Some(match oid.strip_prefix("1.3.6.1.4.1.1466.115.121.1.")? {
            "26" => Syntax::Ia5,
            "44" => Syntax::Printable,
            "27" => Syntax::Integer,
            "36" => Syntax::Numeric,
            "7" => Syntax::Boolean,
            "15" => Syntax::DirectoryString,
            _ => return None,
        })
    }

    /// Why `value` does not fit, if it does not.
    pub fn refuses(self, value: &str) -> Option<String> {
        if value.is_empty() {
            return Some("an empty value is not allowed".to_owned());
        }
        let bad = |allowed: fn(char) -> bool| value.chars().find(|c| !allowed(*c));
        match self {
            Syntax::Ia5 => bad(|c| c.is_ascii())
                .map(|c| format!("'{c}' is not ASCII, and the directory stores this attribute as ASCII only (IA5)")),
            Syntax::Printable => bad(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
                .map(|c| format!("'{c}' is not allowed in the directory's Printable String syntax")),
            Syntax::Numeric => {
                bad(|c| c.is_ascii_digit() || c == ' ').map(|c| format!("'{c}' is not allowed: only digits and spaces"))
            }
            Syntax::Integer => {
                let digits = value.strip_prefix('-').unwrap_or(value);
                (digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()))
                    .then(|| "not a whole number".to_owned())
            }
            Syntax::Boolean => {
                (value != "TRUE" && value != "FALSE").then(|| "the directory takes TRUE or FALSE".to_owned())
            }
            Syntax::DirectoryString => None,
        }
    }
}

/// The checked syntax of every attribute type (names lowercased, aliases included),
/// read from the subschema entry's `attributeTypes` values. A type without `SYNTAX`
/// takes its superior's.
pub fn syntaxes<'a>(definitions: impl IntoIterator<Item = &'a str>) -> HashMap<String, Syntax> {
    let parsed: Vec<(Vec<String>, Option<String>, Option<String>)> =
        definitions.into_iter().filter_map(parse_attribute_type).collect();
    let mut by_name: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    for (names, sup, syntax) in &parsed {
        for name in names {
            by_name.insert(name.to_lowercase(), (sup.clone(), syntax.clone()));
        }
    }
    let mut out = HashMap::new();
    for name in by_name.keys() {
        let mut current = name.clone();
        // A superior chain is short (name → cn); a cycle in a broken schema ends here.
        for _ in 0..16 {
            let Some((sup, syntax)) = by_name.get(&current) else { break };
            if let Some(oid) = syntax {
                if let Some(checked) = Syntax::from_oid(oid) {
                    out.insert(name.clone(), checked);
                }
                break;
            }
            match sup {
                Some(sup) => current = sup.to_lowercase(),
                None => break,
            }
        }
    }
    out
}

/// `(names, superior, syntax OID)` of one `attributeTypes` value.
fn parse_attribute_type(definition: &str) -> Option<(Vec<String>, Option<String>, Option<String>)> {
    let tokens = tokenize(definition);
    let (mut names, mut sup, mut syntax) = (Vec::new(), None, None);
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "NAME" if tokens.get(i + 1).is_some_and(|t| t == "(") => {
                i += 2;
                while i < tokens.len() && tokens[i] != ")" {
                    names.push(tokens[i].clone());
                    i += 1;
                }
            }
            "NAME" => {
                names.extend(tokens.get(i + 1).cloned());
                i += 1;
            }
            "SUP" => {
                sup = tokens.get(i + 1).cloned();
                i += 1;
            }
            "SYNTAX" => {
                // `1.3.6.1.4.1.1466.115.121.1.15{32768}`: the length bound is not ours to check.
                syntax = tokens.get(i + 1).map(|t| t.split('{').next().unwrap_or_default().to_owned());
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    (!names.is_empty()).then_some((names, sup, syntax))
}

/// Words, quoted strings (without their quotes) and parentheses.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '(' | ')' => tokens.push(c.to_string()),
            '\'' => tokens.push(chars.by_ref().take_while(|c| *c != '\'').collect()),
            c if c.is_whitespace() => {}
            c => {
                let mut word = c.to_string();
                while let Some(next) = chars.peek().filter(|n| !n.is_whitespace() && **n != '(' && **n != ')') {
                    word.push(*next);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &[
        "( 2.5.4.41 NAME 'name' DESC 'RFC4519: common supertype of name attributes' EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{32768} )",
        "( 2.5.4.3 NAME ( 'cn' 'commonName' ) DESC 'RFC4519: common name(s) for which the entity is known by' SUP name )",
        "( 1.3.6.1.1.1.1.2 NAME 'gecos' DESC 'The GECOS field; the common name' EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )",
        "( 1.3.6.1.1.1.1.0 NAME 'uidNumber' DESC 'An integer uniquely identifying a user' EQUALITY integerMatch ORDERING integerOrderingMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )",
        "( 2.5.4.35 NAME 'userPassword' EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40{128} )",
        "( 9.9 NAME 'loopA' SUP loopB )",
        "( 9.8 NAME 'loopB' SUP loopA )",
    ];

    #[test]
    fn syntaxes_come_from_the_schema_and_its_superiors() {
        let found = syntaxes(SCHEMA.iter().copied());
        assert_eq!(found.get("gecos"), Some(&Syntax::Ia5));
        assert_eq!(found.get("commonname"), Some(&Syntax::DirectoryString), "an alias, through SUP");
        assert_eq!(found.get("uidnumber"), Some(&Syntax::Integer));
        assert_eq!(found.get("userpassword"), None, "octet strings are left to the server");
        assert_eq!(found.get("loopa"), None, "a broken superior chain ends");
    }

    #[test]
    fn values_are_checked_as_the_server_would() {
        let check = |syntax: Syntax, value: &str, refused: bool| {
            assert_eq!(syntax.refuses(value).is_some(), refused, "{syntax:?} {value:?}: {:?}", syntax.refuses(value));
        };
        check(Syntax::Ia5, "Jose Muller", false);
        check(Syntax::Ia5, "José Müller", true);
        check(Syntax::Integer, "-12", false);
        check(Syntax::Integer, "12a", true);
        check(Syntax::Integer, "", true);
        check(Syntax::Boolean, "TRUE", false);
        check(Syntax::Boolean, "yes", true);
        check(Syntax::Printable, "A-1 (x)", false);
        check(Syntax::Printable, "a@b", true);
        check(Syntax::Numeric, "12 34", false);
        check(Syntax::DirectoryString, "漢字", false);
        check(Syntax::DirectoryString, "", true);
        assert_eq!(Syntax::Ia5.refuses(""), Some("an empty value is not allowed".to_owned()));
    }
}
