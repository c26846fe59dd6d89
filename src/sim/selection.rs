//! Which objects a request or a controller means: label selectors (the query string form,
//! parsed by the plan's own selector parser, and the `LabelSelector` object form used by
//! PDBs and workloads) and field selectors.

use std::collections::BTreeMap;

use serde_json::Value;

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

/// Whether a `LabelSelector` object (`matchLabels`, `matchExpressions`) selects `labels`.
/// An empty selector selects everything; a missing one selects nothing, as for PDBs.
pub(crate) fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    if selector.is_null() {
        return false;
    }
    let match_labels = selector["matchLabels"].as_object().into_iter().flatten();
    for (key, value) in match_labels {
        if labels.get(key).map(String::as_str) != value.as_str() {
            return false;
        }
    }
    let expressions = selector["matchExpressions"].as_array().into_iter().flatten();
    for expression in expressions {
        let key = expression["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            expression["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let present = labels.get(key);
        let holds = match expression["operator"].as_str().unwrap_or_default() {
            "In" => present.is_some_and(|v| values.contains(&v.as_str())),
            "NotIn" => present.is_none_or(|v| !values.contains(&v.as_str())),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            _ => false,
        };
        if !holds {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::resources::{RESOURCES, idx};
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_selector_objects() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selector_matches(&json!({}), &l));
        assert!(!selector_matches(&Value::Null, &l));
        assert!(selector_matches(&json!({"matchLabels": {"app": "web"}}), &l));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "db"}}), &l));
        let expr = |op: &str, values: &[&str]| json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]});
        assert!(selector_matches(&expr("In", &["front", "back"]), &l));
        assert!(!selector_matches(&expr("NotIn", &["front"]), &l));
        assert!(selector_matches(&expr("Exists", &[]), &l));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &l));
    }

    #[test]
    fn unsupported_field_labels_are_refused() {
        let pods = &RESOURCES[idx::PODS];
        let error = Filter::parse(pods, None, Some("spec.bogus=1")).expect_err("refused");
        assert_eq!(error.message, "field label not supported: spec.bogus");
        assert!(Filter::parse(pods, None, Some("spec.nodeName=n1,status.phase!=Succeeded")).is_ok());
        assert!(Filter::parse(&RESOURCES[idx::CONFIGMAPS], None, Some("spec.nodeName=n1")).is_err());
    }
}
