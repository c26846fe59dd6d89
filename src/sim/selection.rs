//! Which objects a list or watch means: label selectors (the query string form, parsed by
//! the plan's own selector parser) and field selectors.

use super::resources::ResourceType;
use super::status::ApiError;
use super::store::Meta;
use crate::plan::selector::Selector;

/// The `labelSelector` and `fieldSelector` of a list or watch.
#[derive(Debug, Default)]
pub(crate) struct Filter {
    labels: Option<Selector>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    /// Parses both selectors, rejecting field labels the type does not support as the API
    /// server does (`field label not supported`).
    pub(crate) fn parse(rt: &ResourceType, labels: Option<&str>, fields: Option<&str>) -> Result<Filter, ApiError> {
        let labels = match labels.map(str::trim).filter(|s| !s.is_empty()) {
            Some(text) => Some(
                text.parse::<Selector>()
                    .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            ),
            None => None,
        };
        let mut parsed = Vec::new();
        for term in fields.unwrap_or_default().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!("invalid selector: '{term}'; can't understand '{term}'")));
            };
            let key = key.trim();
            if !matches!(key, "metadata.name" | "metadata.namespace") && !rt.fields.contains(&key) {
                return Err(ApiError::bad_request(format!("field label not supported: {key}")));
            }
            parsed.push((key.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Filter { labels, fields: parsed })
    }

    pub(crate) fn matches(&self, rt: &ResourceType, meta: &Meta) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches(&meta.labels))
            && self.fields.iter().all(|(key, equal, value)| (meta.field(rt, key) == Some(value.as_str())) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::super::resources::{RESOURCES, idx};
    use super::*;

    #[test]
    fn unsupported_field_labels_are_refused() {
        let pods = &RESOURCES[idx::PODS];
        let error = Filter::parse(pods, None, Some("spec.bogus=1")).expect_err("refused");
        assert_eq!(error.message, "field label not supported: spec.bogus");
        assert!(Filter::parse(pods, None, Some("spec.nodeName=n1,status.phase!=Succeeded")).is_ok());
        assert!(Filter::parse(&RESOURCES[idx::CONFIGMAPS], None, Some("spec.nodeName=n1")).is_err());
    }
}
