//! The API server's validation of objects, where a client of the simulator could come to
//! rely on its absence: the size limit of a ConfigMap (the ConfigMap journal lives in one).

use base64::Engine;
use serde_json::Value;

use super::resources::{RESOURCES, idx};
use super::status::ApiError;

/// The most a ConfigMap's values may hold, `data` and decoded `binaryData` together (keys do
/// not count): `MaxSecretSize` in kube-apiserver's core validation, 1 MiB.
pub(crate) const MAX_CONFIG_MAP_BYTES: usize = 1024 * 1024;

/// Refuses an object the real API server would refuse, with its message.
pub(crate) fn validate(resource: usize, value: &Value) -> Result<(), ApiError> {
    if resource == idx::CONFIGMAPS {
        let text: usize =
            value["data"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_str()).map(str::len).sum();
        let binary: usize = value["binaryData"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, v)| v.as_str())
            .map(|v| base64::engine::general_purpose::STANDARD.decode(v).map_or(v.len(), |b| b.len()))
            .sum();
        if text + binary > MAX_CONFIG_MAP_BYTES {
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::invalid(
                &RESOURCES[resource],
                name,
                format!("[]: Too long: may not be more than {MAX_CONFIG_MAP_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(data: &str, binary: &[u8]) -> Value {
        serde_json::json!({
            "metadata": {"name": "journal"},
            "data": {"a": data},
            "binaryData": {"b": base64::engine::general_purpose::STANDARD.encode(binary)},
        })
    }

    #[test]
    fn a_config_map_may_hold_one_mebibyte_of_values_and_not_a_byte_more() {
        let half = MAX_CONFIG_MAP_BYTES / 2;
        assert!(validate(idx::CONFIGMAPS, &config_map(&"x".repeat(half), &vec![0; half])).is_ok());
        let refused = validate(idx::CONFIGMAPS, &config_map(&"x".repeat(half), &vec![0; half + 1])).expect_err("over");
        assert_eq!(refused.code, 422);
        assert!(
            refused.message.ends_with("is invalid: []: Too long: may not be more than 1048576 bytes"),
            "{}",
            refused.message
        );
    }
}
