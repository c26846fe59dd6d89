//! Hook commands with `{placeholder}`s, checked when the plan is read so that a typo such
//! as `{nodes}` fails `check` instead of running `ssh {nodes}` at 2 a.m.

use std::collections::BTreeMap;
use std::fmt;

/// An argv whose arguments may contain placeholders; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    args: Vec<Vec<Segment>>,
    source: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Placeholder(String),
}

/// Why an argument is not a valid template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name}` where `name` is not offered.
    #[error("unknown placeholder `{{{name}}}`")]
    Unknown {
        /// The placeholder's name.
        name: String,
        /// Its index among the arguments.
        arg: usize,
    },
    /// A `{` without `}` or a lone `}`.
    #[error("unbalanced brace in `{text}`")]
    Unbalanced {
        /// The argument.
        text: String,
        /// Its index among the arguments.
        arg: usize,
    },
}

impl TemplateError {
    /// Index of the faulty argument.
    pub fn arg(&self) -> usize {
        match self {
            TemplateError::Unknown { arg, .. } | TemplateError::Unbalanced { arg, .. } => *arg,
        }
    }
}

impl CommandTemplate {
    /// Parses `args`, allowing only the placeholders in `allowed`.
    pub fn parse(args: &[String], allowed: &[&str]) -> Result<Self, TemplateError> {
        let parsed = args.iter().enumerate().map(|(i, arg)| parse_arg(arg, i, allowed)).collect::<Result<_, _>>()?;
        Ok(Self { args: parsed, source: args.to_vec() })
    }

    /// The arguments as written.
    pub fn as_written(&self) -> &[String] {
        &self.source
    }

    /// The argv with every placeholder replaced. Placeholders missing from `values` render as
    /// empty strings; [`CommandTemplate::parse`] has already rejected unknown names.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> Vec<String> {
        self.args
            .iter()
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(text) => text.as_str(),
                        Segment::Placeholder(name) => values.get(name.as_str()).map_or("", String::as_str),
                    })
                    .collect()
            })
            .collect()
    }
}

impl fmt::Display for CommandTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self
            .source
            .iter()
            .map(|a| {
                if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:{}=@,+".contains(c)) {
                    a.clone()
                } else {
                    format!("'{}'", a.replace('\'', r"'\''"))
                }
            })
            .collect();
        f.write_str(&quoted.join(" "))
    }
}

fn parse_arg(arg: &str, index: usize, allowed: &[&str]) -> Result<Vec<Segment>, TemplateError> {
    let unbalanced = || TemplateError::Unbalanced { text: arg.to_owned(), arg: index };
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err(unbalanced()),
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(unbalanced()),
                        Some(c) => name.push(c),
                    }
                }
                if !allowed.contains(&name.as_str()) {
                    return Err(TemplateError::Unknown { name, arg: index });
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Placeholder(name));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() || segments.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn renders_placeholders_and_escaped_braces() {
        let t =
            CommandTemplate::parse(&args(&["ssh", "{node}", "echo {{x}}", "--batch={batch}", ""]), &["node", "batch"])
                .expect("valid");
        let values = BTreeMap::from([("node", "ws01".to_owned()), ("batch", "rack-a".to_owned())]);
        assert_eq!(t.render(&values), args(&["ssh", "ws01", "echo {x}", "--batch=rack-a", ""]));
    }

    #[test]
    fn rejects_unknown_and_unbalanced() {
        assert_eq!(
            CommandTemplate::parse(&args(&["ssh", "{nodes}"]), &["node"]),
            Err(TemplateError::Unknown { name: "nodes".into(), arg: 1 })
        );
        for bad in ["{node", "node}", "{no{de}"] {
            assert!(matches!(
                CommandTemplate::parse(&args(&[bad]), &["node"]),
                Err(TemplateError::Unbalanced { arg: 0, .. })
            ));
        }
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let t = CommandTemplate::parse(&args(&["sh", "-c", "echo it's {node}"]), &["node"]).expect("valid");
        assert_eq!(t.to_string(), r"sh -c 'echo it'\''s {node}'");
    }
}
