//! One finding about a plan file, pointing at the YAML node it is about.
//!
//! A [`Diagnostic`] is plain data (path, line, column, message, help) so it can be rendered
//! by miette for people and serialized for `--output json`; it keeps the file's text so the
//! rendering can show the offending line with a caret.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceCode, SourceSpan};
use serde::Serialize;
use serde_saphyr::Location;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The plan cannot be used.
    Error,
    /// The plan can be used, but probably not as meant.
    Warning,
}

/// A plan file's path and text, shared by all diagnostics about it.
#[derive(Debug)]
pub struct SourceFile {
    path: String,
    named: NamedSource<String>,
    text_len: usize,
}

impl SourceFile {
    /// Wraps a file's display path and its text.
    pub fn new(path: impl Into<String>, text: String) -> Arc<Self> {
        let path = path.into();
        let text_len = text.len();
        Arc::new(Self { named: NamedSource::new(path.clone(), text).with_language("yaml"), path, text_len })
    }

    /// The path as given on the command line.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's text.
    pub fn text(&self) -> &str {
        self.named.inner()
    }
}

/// A finding with its place in a plan file.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// 1-based line; 0 when the finding is about the whole file.
    pub line: u64,
    /// 1-based column (characters); 0 when the finding is about the whole file.
    pub column: u64,
    span: Option<SourceSpan>,
    source: Arc<SourceFile>,
}

impl Diagnostic {
    /// An error at a location serde-saphyr reported.
    pub fn error(source: &Arc<SourceFile>, at: Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, source, at, message.into())
    }

    /// A warning at a location serde-saphyr reported.
    pub fn warning(source: &Arc<SourceFile>, at: Location, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, source, at, message.into())
    }

    /// An error about the whole file (unreadable, not text, empty).
    pub fn file_error(source: &Arc<SourceFile>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, source, Location::UNKNOWN, message.into())
    }

    /// An error at a 1-based line and column of a file whose text cannot be shown (it is
    /// not text), for faults found before YAML parsing.
    pub fn error_at_line(source: &Arc<SourceFile>, line: u64, column: u64, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            help: None,
            line,
            column,
            span: None,
            source: Arc::clone(source),
        }
    }

    fn new(severity: Severity, source: &Arc<SourceFile>, at: Location, message: String) -> Self {
        let span = (at.line() > 0).then(|| {
            let span = at.span();
            let offset = span.byte_offset().map_or(0, |o| usize::try_from(o).unwrap_or(0));
            let len = span.byte_len().map_or(0, |l| usize::try_from(l).unwrap_or(0));
            let offset = offset.min(source.text_len);
            SourceSpan::new(offset.into(), len.min(source.text_len - offset))
        });
        Self { severity, message, help: None, line: at.line(), column: at.column(), span, source: Arc::clone(source) }
    }

    /// Adds advice on how to fix the fault.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The file the finding is about.
    pub fn path(&self) -> &str {
        &self.source.path
    }

    /// `PATH:LINE:COL`, or just the path for whole-file findings.
    pub fn position(&self) -> String {
        if self.line == 0 {
            self.source.path.clone()
        } else {
            format!("{}:{}:{}", self.source.path, self.line, self.column)
        }
    }

    /// The machine-readable form used by `--output json`.
    pub fn to_record(&self) -> DiagnosticRecord<'_> {
        DiagnosticRecord {
            severity: self.severity,
            message: &self.message,
            path: self.path(),
            line: self.line,
            column: self.column,
            help: self.help.as_deref(),
        }
    }
}

/// One diagnostic as `check --output json` prints it.
#[derive(Debug, Serialize)]
pub struct DiagnosticRecord<'a> {
    /// `error` or `warning`.
    pub severity: Severity,
    /// What is wrong.
    pub message: &'a str,
    /// The plan file.
    pub path: &'a str,
    /// 1-based line, 0 for the whole file.
    pub line: u64,
    /// 1-based column, 0 for the whole file.
    pub column: u64,
    /// How to fix it, when known.
    pub help: Option<&'a str>,
}

/// The message starts with the position so that plain-text output (no colours, piped into a
/// file or an editor's error parser) still says `PATH:LINE:COL`.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position(), self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.span.is_some().then_some(&self.source.named as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.span.map(|span| {
            Box::new(std::iter::once(LabeledSpan::new_primary_with_span(Some("here".into()), span)))
                as Box<dyn Iterator<Item = LabeledSpan>>
        })
    }
}
