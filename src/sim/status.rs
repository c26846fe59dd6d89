//! API errors as the real API server reports them: a `Status` object with code, reason and
//! message, so kubectl prints the messages operators know and kube-rs decodes an
//! `ErrorResponse`.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed API request.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
    /// Seconds for the `Retry-After` header (injected 429s).
    pub(crate) retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified())).about(rt, name)
    }

    pub(crate) fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", rt.qualified())).about(rt, name)
    }

    pub(crate) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your \
                 changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {}", rt.kind, message.into())).about(rt, name)
    }

    /// A JSON patch that cannot be applied (a path that does not exist, a failed test).
    pub(crate) fn invalid_patch(message: String) -> Self {
        Self::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {message}"))
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    pub(crate) fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The eviction refusal, word for word as the API server sends it.
    pub(crate) fn disruption_budget(pdb: &str, message: String) -> Self {
        let mut e =
            Self::new(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
        e.details = Some(
            json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {pdb} {message}")}]}),
        );
        e
    }

    pub(crate) fn throttled() -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later (simulated)",
        );
        e.details = Some(json!({"retryAfterSeconds": 1}));
        e.retry_after = Some(1);
        e
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` body.
    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// A successful `Status`, as returned by eviction and some deletions.
pub(crate) fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}
