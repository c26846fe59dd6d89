//! Kubernetes label selectors in their string form (`rack=a,gpu in (a100,h100),!headless`).
//!
//! The grammar and the checks on keys and values follow
//! `k8s.io/apimachinery/pkg/labels/selector.go`, so a selector that noderoll accepts is one
//! `kubectl get nodes -l` accepts too. It is a tokenizer plus a recursive-descent parser:
//! splitting on commas by hand breaks on `in (a,b)`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A parsed label selector: every requirement must hold (logical AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Why a selector string is not a valid selector; `position` is the character offset of the
/// offending token in the selector string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {})", .position + 1)]
pub struct SelectorError {
    /// What is wrong.
    pub message: String,
    /// Character offset into the selector string, from 0.
    pub position: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Equals,
    DoubleEquals,
    NotEquals,
    Not,
    In,
    NotIn,
    OpenParen,
    CloseParen,
    Comma,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Identifier(s) => write!(f, "`{s}`"),
            Token::Equals => f.write_str("`=`"),
            Token::DoubleEquals => f.write_str("`==`"),
            Token::NotEquals => f.write_str("`!=`"),
            Token::Not => f.write_str("`!`"),
            Token::In => f.write_str("`in`"),
            Token::NotIn => f.write_str("`notin`"),
            Token::OpenParen => f.write_str("`(`"),
            Token::CloseParen => f.write_str("`)`"),
            Token::Comma => f.write_str("`,`"),
            Token::End => f.write_str("the end of the selector"),
        }
    }
}

/// Splits a selector into (token, character offset) pairs.
fn tokenize(input: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let token = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Token::OpenParen,
            ')' => Token::CloseParen,
            ',' => Token::Comma,
            '=' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Token::DoubleEquals
            }
            '=' => Token::Equals,
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Token::NotEquals
            }
            '!' => Token::Not,
            _ => {
                while i + 1 < chars.len() && !is_special(chars[i + 1]) {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                match word.as_str() {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    _ => Token::Identifier(word),
                }
            }
        };
        tokens.push((token, start));
        i += 1;
    }
    tokens.push((Token::End, chars.len()));
    tokens
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | ',' | '=' | '!')
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &(Token, usize) {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> (Token, usize) {
        let token = self.peek().clone();
        self.at += 1;
        token
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (first, position) = self.next();
        let (key, key_position, negated) = match first {
            Token::Not => match self.next() {
                (Token::Identifier(key), at) => (key, at, true),
                (other, at) => return Err(unexpected(&other, at, "a label key after `!`")),
            },
            Token::Identifier(key) => (key, position, false),
            other => return Err(unexpected(&other, position, "a label key")),
        };
        validate_key(&key, key_position)?;
        if negated {
            return Ok(Requirement { key, op: Operator::DoesNotExist, values: BTreeSet::new() });
        }
        let (op, op_position) = match self.peek() {
            (Token::Comma | Token::End, _) => {
                return Ok(Requirement { key, op: Operator::Exists, values: BTreeSet::new() });
            }
            (Token::Equals | Token::DoubleEquals, at) => (Operator::Equals, *at),
            (Token::NotEquals, at) => (Operator::NotEquals, *at),
            (Token::In, at) => (Operator::In, *at),
            (Token::NotIn, at) => (Operator::NotIn, *at),
            (other, at) => {
                return Err(unexpected(other, *at, "`=`, `==`, `!=`, `in`, `notin`, `,` or the end"));
            }
        };
        self.next();
        let values = match op {
            Operator::In | Operator::NotIn => self.value_set(op_position)?,
            _ => BTreeSet::from([self.single_value()?]),
        };
        Ok(Requirement { key, op, values })
    }

    fn single_value(&mut self) -> Result<String, SelectorError> {
        match self.peek().clone() {
            (Token::Identifier(value), at) => {
                self.next();
                validate_value(&value, at)?;
                Ok(value)
            }
            (Token::In, _) | (Token::NotIn, _) => {
                let (token, at) = self.next();
                let value = if token == Token::In { "in" } else { "notin" };
                validate_value(value, at)?;
                Ok(value.to_owned())
            }
            // `key=` selects the empty value, as in Kubernetes.
            (Token::Comma | Token::End, _) => Ok(String::new()),
            (other, at) => Err(unexpected(&other, at, "a label value")),
        }
    }

    fn value_set(&mut self, op_position: usize) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            (Token::OpenParen, _) => {}
            (other, at) => return Err(unexpected(&other, at, "`(` to open the value list")),
        }
        let mut values = BTreeSet::new();
        loop {
            match self.next() {
                (Token::Identifier(value), at) => {
                    validate_value(&value, at)?;
                    values.insert(value);
                }
                (Token::CloseParen, at) if values.is_empty() => {
                    return Err(SelectorError {
                        message: "the value list is empty; `in` and `notin` need at least one value".into(),
                        position: at.max(op_position),
                    });
                }
                (other, at) => return Err(unexpected(&other, at, "a label value")),
            }
            match self.next() {
                (Token::Comma, _) => continue,
                (Token::CloseParen, _) => return Ok(values),
                (other, at) => return Err(unexpected(&other, at, "`,` or `)`")),
            }
        }
    }
}

fn unexpected(token: &Token, position: usize, expected: &str) -> SelectorError {
    SelectorError { message: format!("found {token}, expected {expected}"), position }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn validate_key(key: &str, position: usize) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(SelectorError {
            message: format!(
                "`{key}` has an invalid prefix `{prefix}`: it must be a DNS subdomain such as `example.com`"
            ),
            position,
        });
    }
    if !is_label_name(name) {
        return Err(SelectorError {
            message: format!(
                "`{key}` is not a valid label key: the name part must be 1 to 63 characters of letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
            ),
            position,
        });
    }
    Ok(())
}

fn validate_value(value: &str, position: usize) -> Result<(), SelectorError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(SelectorError {
            message: format!(
                "`{value}` is not a valid label value: at most 63 characters of letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
            ),
            position,
        })
    }
}

/// Kubernetes' "qualified name" part: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, ≤ 63.
pub(crate) fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain, as Kubernetes uses for node names and label prefixes.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label, as Kubernetes uses for namespace names: lowercase letters, digits and
/// `-`, starting and ending alphanumeric, at most 63.
pub(crate) fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut parser = Parser { tokens: tokenize(input), at: 0 };
        let mut requirements = Vec::new();
        if parser.peek().0 == Token::End {
            return Err(SelectorError {
                message: "the selector is empty; an empty selector would select every node".into(),
                position: 0,
            });
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                (Token::End, _) => break,
                (Token::Comma, _) => continue,
                (other, at) => return Err(unexpected(&other, at, "`,` or the end of the selector")),
            }
        }
        Ok(Selector { requirements })
    }
}

impl Selector {
    /// The smallest label set that satisfies the selector: each `=`/`in` key with its
    /// first value, each existence key with `true`. A rehearsal labels generated nodes so.
    pub fn example_labels(&self) -> BTreeMap<String, String> {
        self.requirements
            .iter()
            .filter_map(|r| match r.op {
                Operator::Equals | Operator::In => r.values.first().map(|v| (r.key.clone(), v.clone())),
                Operator::Exists => Some((r.key.clone(), "true".to_owned())),
                Operator::NotEquals | Operator::NotIn | Operator::DoesNotExist => None,
            })
            .collect()
    }

    /// Whether a set of labels satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.op {
                Operator::Equals | Operator::In => value.is_some_and(|v| r.values.contains(v)),
                Operator::NotEquals | Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// The canonical string form, as `kubectl` and the API server's `labelSelector` take it.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let values = || r.values.iter().cloned().collect::<Vec<_>>().join(",");
            match r.op {
                Operator::Equals => write!(f, "{}={}", r.key, values())?,
                Operator::NotEquals => write!(f, "{}!={}", r.key, values())?,
                Operator::In => write!(f, "{} in ({})", r.key, values())?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, values())?,
                Operator::Exists => f.write_str(&r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn parse(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn every_operator_parses_and_matches() {
        let node = labels(&[("rack", "a"), ("gpu", "a100"), ("juno-innovations.com/workstation", "true")]);
        for (selector, expected) in [
            ("rack=a", true),
            ("rack==a", true),
            ("rack!=a", false),
            ("rack!=b", true),
            ("gpu in (a100, h100)", true),
            ("gpu notin (a100,h100)", false),
            ("juno-innovations.com/workstation", true),
            ("!juno-innovations.com/headless", true),
            ("!rack", false),
            ("rack=a,gpu in (h100)", false),
            ("rack = a , gpu in (a100)", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
            ("missing in (x)", false),
        ] {
            assert_eq!(parse(selector).matches(&node), expected, "{selector}");
        }
    }

    #[test]
    fn commas_inside_value_lists_are_not_requirement_separators() {
        let s = parse("a in (x,y,z),b");
        assert_eq!(s.requirements.len(), 2);
        assert_eq!(s.to_string(), "a in (x,y,z),b");
    }

    #[test]
    fn display_round_trips() {
        for s in ["a=b", "a!=b", "a in (x,y)", "a notin (x)", "a", "!a", "a=b,!c,d in (e)"] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
    }

    #[test]
    fn errors_point_at_the_offending_character() {
        for (selector, position, fragment) in [
            ("", 0, "empty"),
            ("rack=a,", 7, "expected a label key"),
            ("rack in a", 8, "expected `(`"),
            ("rack in ()", 9, "value list is empty"),
            ("rack in (a b)", 11, "expected `,` or `)`"),
            ("rack=a b", 7, "expected `,` or the end"),
            ("-bad=x", 0, "not a valid label key"),
            ("Bad_Prefix/x=y", 0, "invalid prefix"),
            ("rack=-x", 5, "not a valid label value"),
            ("rack (a)", 5, "expected `=`"),
            ("!", 1, "after `!`"),
        ] {
            let err = selector.parse::<Selector>().expect_err(selector);
            assert_eq!(err.position, position, "{selector}: {err}");
            assert!(err.message.contains(fragment), "{selector}: {err}");
        }
    }
}
