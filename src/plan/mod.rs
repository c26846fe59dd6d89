//! The plan as data: the document as written ([`model`]), reading it with source spans
//! ([`load`]), and validating it into a [`Plan`] ([`validate`]) with diagnostics that point at
//! the YAML.

pub mod defaults;
pub mod diagnostic;
pub mod duration;
pub mod load;
pub mod model;
pub mod resolved;
pub mod selector;
pub mod template;
pub mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Severity, SourceFile};
pub use resolved::Plan;

/// The result of reading and validating one plan file.
#[derive(Debug)]
pub struct Checked {
    /// The plan, when it has no error.
    pub plan: Option<Plan>,
    /// Every error and warning, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The file's text, for hashing and for later diagnostics.
    pub source: Option<std::sync::Arc<SourceFile>>,
}

impl Checked {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Reads, parses and validates a plan file.
pub fn check_file(path: &Path) -> Checked {
    finish(load::read_file(path))
}

/// Parses and validates plan text; `display` names it in diagnostics.
pub fn check_str(display: &str, text: &str) -> Checked {
    finish(load::parse_bytes(display, text.as_bytes().to_vec()))
}

fn finish(loaded: Result<(std::sync::Arc<SourceFile>, model::PlanDocument), Vec<Diagnostic>>) -> Checked {
    match loaded {
        Err(diagnostics) => Checked { plan: None, diagnostics, source: None },
        Ok((source, document)) => {
            let (plan, mut diagnostics) = validate::validate(&source, &document);
            diagnostics.sort_by_key(|d| (d.line, d.column));
            // Settings from `defaults` are layered into every batch; a fault in them is one
            // fault, reported once.
            diagnostics.dedup_by(|a, b| a.line == b.line && a.column == b.column && a.message == b.message);
            Checked { plan, diagnostics, source: Some(source) }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    const EXAMPLE: &str = include_str!("../../plans/servicelb-round-robin.yaml");

    #[test]
    fn a_soak_is_layered_from_defaults_and_a_batch_turns_it_off_with_zero() {
        use super::model::SoakScope;
        let text = "apiVersion: noderoll.io/v1alpha1\nkind: UpgradePlan\nmetadata: {name: soak}\nspec:\n  loadBalancer: {mode: external}\n  defaults: {upgrade: {command: [up, \"{node}\"]}, soak: 10m}\n  batches:\n    - {name: cp, role: service, nodes: [cp1, cp2, cp3]}\n    - {name: a, role: workstation, nodes: [ws1], soakPer: batch}\n    - {name: b, role: workstation, nodes: [ws2], soak: 0s}\n    - {name: c, role: workstation, nodes: [ws3], soak: 1h}\n";
        let checked = super::check_str("soak.yaml", text);
        let plan = checked.plan.unwrap_or_else(|| panic!("{:?}", checked.diagnostics));
        let soaks: Vec<Option<(u64, SoakScope)>> =
            plan.batches.iter().map(|b| b.settings.soak.map(|s| (s.duration.as_secs(), s.per))).collect();
        assert_eq!(
            soaks,
            [Some((600, SoakScope::Node)), Some((600, SoakScope::Batch)), None, Some((3600, SoakScope::Node))]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the bytes, reading a plan returns diagnostics; it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let checked = super::finish(super::load::parse_bytes("fuzz.yaml", bytes));
            prop_assert!(checked.plan.is_some() || checked.has_errors());
        }

        /// Small edits of a real plan (bytes replaced, removed or inserted) never panic, and
        /// every error they cause has a position inside the file.
        #[test]
        fn mutated_plans_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)) {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for (at, kind, byte) in edits {
                let i = at.index(bytes.len().max(1));
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 if i < bytes.len() => { bytes.remove(i); }
                    _ => bytes.insert(i.min(bytes.len()), byte),
                }
            }
            let lines = bytes.split(|b| *b == b'\n').count() as u64;
            let checked = super::finish(super::load::parse_bytes("fuzz.yaml", bytes));
            for d in &checked.diagnostics {
                prop_assert!(d.line <= lines + 1, "{d} is past the end ({lines} lines)");
            }
        }
    }
}
