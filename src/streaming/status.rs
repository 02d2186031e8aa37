//! The Kubernetes `metav1.Status` object written on the error channel, in
//! the JSON form Go's encoder gives it (empty fields left out, `metadata`
//! always present), which kubectl, crictl and the Python client parse for
//! the exit code.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    metadata: Empty,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
struct Empty {}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Details {
    pub causes: Vec<Cause>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cause {
    /// `StatusCause.Type`, whose JSON name is `reason`.
    #[serde(skip_serializing_if = "is_empty")]
    pub reason: &'static str,
    pub message: String,
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

impl Status {
    pub fn success() -> Self {
        Self {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        }
    }

    /// A command that exited with a non-zero code (or a signal).
    pub fn exit_code(code: i32, cmd: &[String]) -> Self {
        Self {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: command {cmd:?} exited with {code}"
            )),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: "ExitCode",
                    message: code.to_string(),
                }],
            }),
            code: None,
        }
    }

    /// Anything else that went wrong (kubelet's `NewInternalError`).
    pub fn internal(message: &str) -> Self {
        Self {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!("Internal error occurred: {message}")),
            reason: Some("InternalError"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: "",
                    message: message.to_string(),
                }],
            }),
            code: Some(500),
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == "Success"
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The text pre-v4 protocols put on the error stream (nothing on
    /// success).
    pub fn legacy_text(&self) -> Option<String> {
        if self.is_success() {
            None
        } else {
            self.message.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_what_clients_parse() {
        assert_eq!(
            String::from_utf8(Status::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let s = Status::exit_code(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(v["metadata"], serde_json::json!({}));
        assert!(v.get("code").is_none());
        let i: serde_json::Value =
            serde_json::from_slice(&Status::internal("boom").to_json()).unwrap();
        assert_eq!(i["code"], 500);
        assert_eq!(i["reason"], "InternalError");
        assert_eq!(Status::success().legacy_text(), None);
        assert!(
            Status::internal("boom")
                .legacy_text()
                .unwrap()
                .contains("boom")
        );
    }
}
