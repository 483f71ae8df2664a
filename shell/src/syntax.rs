//! A light scanner for Rhai input lines: enough to tell whether input is complete
//! (multi-line entry), whether the cursor sits in a string (path completion), where the
//! call around the cursor starts (signature hints) and how to colour tokens.

/// What a stretch of the line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Word,
    Number,
    Str,
    Comment,
    Punct,
    Space,
}

/// A token: its kind and byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The scanner's view of a piece of input.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) tokens: Vec<Token>,
    /// Open brackets at the end, innermost last: (bracket, byte offset).
    pub(crate) open: Vec<(char, usize)>,
    /// The quote of a string still open at the end, and where it started.
    pub(crate) open_string: Option<(char, usize)>,
    /// A block comment still open at the end.
    pub(crate) open_comment: bool,
}

impl Scan {
    /// Whether more lines are needed before the input can be run.
    pub(crate) fn is_incomplete(&self) -> bool {
        !self.open.is_empty() || self.open_string.is_some() || self.open_comment
    }
}

/// Scans `text`.
pub(crate) fn scan(text: &str) -> Scan {
    let mut scan = Scan::default();
    let bytes: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let end_of = |i: usize| bytes.get(i).map(|(o, _)| *o).unwrap_or(text.len());
    while i < bytes.len() {
        let (start, c) = bytes[i];
        let next = bytes.get(i + 1).map(|(_, c)| *c);
        let (kind, j) = if c == '/' && next == Some('/') {
            let mut j = i;
            while j < bytes.len() && bytes[j].1 != '\n' {
                j += 1;
            }
            (Kind::Comment, j)
        } else if c == '/' && next == Some('*') {
            let mut j = i + 2;
            loop {
                if j + 1 >= bytes.len() {
                    scan.open_comment = true;
                    j = bytes.len();
                    break;
                }
                if bytes[j].1 == '*' && bytes[j + 1].1 == '/' {
                    j += 2;
                    break;
                }
                j += 1;
            }
            (Kind::Comment, j)
        } else if c == '"' || c == '`' || c == '\'' {
            let mut j = i + 1;
            let mut closed = false;
            while j < bytes.len() {
                match bytes[j].1 {
                    '\\' => j += 2,
                    q if q == c => {
                        closed = true;
                        j += 1;
                        break;
                    }
                    _ => j += 1,
                }
            }
            if !closed {
                scan.open_string = Some((c, start));
            }
            (Kind::Str, j.min(bytes.len()))
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < bytes.len() && (bytes[j].1.is_ascii_alphanumeric() || bytes[j].1 == '.' || bytes[j].1 == '_') {
                j += 1;
            }
            (Kind::Number, j)
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < bytes.len() && (bytes[j].1.is_alphanumeric() || bytes[j].1 == '_') {
                j += 1;
            }
            (Kind::Word, j)
        } else if c.is_whitespace() {
            let mut j = i;
            while j < bytes.len() && bytes[j].1.is_whitespace() {
                j += 1;
            }
            (Kind::Space, j)
        } else {
            match c {
                '(' | '[' | '{' => scan.open.push((c, start)),
                ')' | ']' | '}' => {
                    scan.open.pop();
                }
                // `#{` opens a map literal; the brace is handled on its own.
                _ => {}
            }
            (Kind::Punct, i + 1)
        };
        scan.tokens.push(Token { kind, start, end: end_of(j) });
        i = j.max(i + 1);
    }
    scan
}

/// The identifier a call opened at byte `paren` belongs to, if any.
pub(crate) fn callee_before(text: &str, paren: usize) -> Option<&str> {
    let before = text[..paren].trim_end();
    let start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map(|i| i + 1).unwrap_or(0);
    let name = &before[start..];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completeness() {
        for complete in ["", "1 + 2", "let x = #{a: [1, 2]};", "print(\"a(b\")", "// (", "fn f() { 1 }", "`x${1}`"] {
            assert!(!scan(complete).is_incomplete(), "{complete}");
        }
        for open in ["fn f() {", "let x = [1,", "print(\"abc", "/* comment", "if x {\n  y("] {
            assert!(scan(open).is_incomplete(), "{open}");
        }
    }

    #[test]
    fn callees() {
        let text = "let n = getMethods(\"a\", ";
        let scan = scan(text);
        assert_eq!(scan.open.last().map(|(c, _)| *c), Some('('));
        assert_eq!(scan.open.last().and_then(|(_, at)| callee_before(text, *at)), Some("getMethods"));
        assert_eq!(callee_before("x = (", 4), None);
    }
}
