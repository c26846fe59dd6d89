//! Reading a plan file into a [`PlanDocument`], with every failure turned into a
//! [`Diagnostic`] that points at the file, line and column.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_saphyr::{Location, Options};

use super::diagnostic::{Diagnostic, SourceFile};
use super::model::PlanDocument;

/// Plans larger than this are refused before parsing. A 10,000-node plan that lists every
/// node by name is well under 1 MiB; anything this large is not a plan.
pub const MAX_PLAN_BYTES: u64 = 8 * 1024 * 1024;

/// Reads and parses a plan file. The text is returned alongside so that later diagnostics
/// can show it.
pub fn read_file(path: &Path) -> Result<(Arc<SourceFile>, PlanDocument), Vec<Diagnostic>> {
    let display = path.display().to_string();
    let bytes = read_bounded(path)
        .map_err(|message| vec![Diagnostic::file_error(&SourceFile::new(display.clone(), String::new()), message)])?;
    parse_bytes(&display, bytes)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the plan: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PLAN_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read the plan: {e}"))?;
    if bytes.len() as u64 > MAX_PLAN_BYTES {
        return Err(format!(
            "the file is larger than {} MiB, which no plan needs; is this the right file?",
            MAX_PLAN_BYTES / 1024 / 1024
        ));
    }
    Ok(bytes)
}

/// Parses plan text that is already in memory (`display` names it in diagnostics).
pub fn parse_bytes(display: &str, bytes: Vec<u8>) -> Result<(Arc<SourceFile>, PlanDocument), Vec<Diagnostic>> {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let (line, column) = line_column(valid);
            let source = SourceFile::new(display, String::new());
            return Err(vec![
                Diagnostic::error_at_line(
                    &source,
                    line,
                    column,
                    "the plan is not UTF-8 text (binary data or another encoding)",
                )
                .with_help("a plan is a YAML file; save it as UTF-8"),
            ]);
        }
    };
    let source = SourceFile::new(display, text);
    if has_no_content(source.text()) {
        return Err(vec![
            Diagnostic::file_error(&source, "the plan is empty").with_help("start from an example in plans/"),
        ]);
    }
    match serde_saphyr::from_str_with_options::<PlanDocument>(source.text(), parse_options()) {
        Ok(document) => Ok((source, document)),
        Err(error) => Err(vec![from_parse_error(&source, &error)]),
    }
}

fn parse_options() -> Options {
    let mut options = Options::default();
    options.with_snippet = false;
    options
}

fn line_column(valid: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(valid);
    let line = text.matches('\n').count() as u64 + 1;
    let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
    (line, column)
}

/// Turns a serde-saphyr error into a diagnostic, adding a "did you mean" for unknown fields
/// and variants.
fn from_parse_error(source: &Arc<SourceFile>, error: &serde_saphyr::Error) -> Diagnostic {
    let location = error.location().unwrap_or(Location::UNKNOWN);
    let message = error.without_snippet().to_string();
    let message = strip_location_suffix(&message);
    if let Some(root) = non_mapping_root(source.text())
        && location.line() <= 1 + first_content_line(source.text())
    {
        return Diagnostic::error(source, location, format!("the plan is {root}, not a mapping")).with_help(
            "a plan is a mapping with apiVersion, kind, metadata and spec; start from an example in plans/",
        );
    }
    let diagnostic = Diagnostic::error(source, location, message.clone());
    match suggestion(&message) {
        Some(help) => diagnostic.with_help(help),
        None => diagnostic,
    }
}

/// Blank, or only comments and document markers.
fn has_no_content(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

fn is_content(line: &str) -> bool {
    let l = line.trim_start();
    !l.is_empty() && !l.starts_with('#') && !l.starts_with("---") && !l.starts_with('%')
}

fn first_content_line(text: &str) -> u64 {
    text.lines().position(is_content).unwrap_or(0) as u64
}

/// What the document's root is when it is plainly not a mapping: a list or a single value.
fn non_mapping_root(text: &str) -> Option<&'static str> {
    let first = text.lines().find(|l| is_content(l))?.trim_start();
    if first.starts_with('-') || first.starts_with('[') {
        Some("a YAML list")
    } else if !first.contains(':') && !first.starts_with('{') && !first.starts_with('?') {
        Some("a single value")
    } else {
        None
    }
}

/// serde-saphyr appends " at line L, column C" to its messages; the diagnostic carries the
/// position already.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(", column ") => message[..at].to_owned(),
        _ => message.to_owned(),
    }
}

/// For "unknown field `x`, expected one of a, b" (and "unknown variant"), the closest
/// expected name, or the full list when nothing is close.
fn suggestion(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("unknown variant `"))?;
    let (found, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = match rest.strip_prefix(", expected one of ").or_else(|| rest.strip_prefix(", expected "))
    {
        Some(list) => list.split(", ").map(|e| e.trim_matches('`')).collect(),
        None => return Some("this place takes no fields".into()),
    };
    let best = expected
        .iter()
        .map(|candidate| (strsim::jaro_winkler(&found.to_lowercase(), &candidate.to_lowercase()), *candidate))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, candidate)) if score >= 0.8 => Some(format!("did you mean `{candidate}`?")),
        _ => Some(format!("expected one of: {}", expected.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_field() {
        let help = suggestion("unknown field `maxUnavailabel`, expected one of name, role, maxUnavailable");
        assert_eq!(help.as_deref(), Some("did you mean `maxUnavailable`?"));
    }

    #[test]
    fn lists_the_fields_when_nothing_is_close() {
        let help = suggestion("unknown field `zzz`, expected one of name, role");
        assert_eq!(help.as_deref(), Some("expected one of: name, role"));
    }

    #[test]
    fn other_messages_get_no_suggestion() {
        assert_eq!(suggestion("invalid type: string, expected a mapping"), None);
    }

    #[test]
    fn position_of_invalid_utf8_is_reported() {
        let err = parse_bytes("p.yaml", b"a: 1\nbb: \xff\n".to_vec()).expect_err("binary");
        assert_eq!((err[0].line, err[0].column), (2, 5));
    }
}
