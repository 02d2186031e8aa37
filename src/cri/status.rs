//! Domain errors → gRPC status codes, one `From` per domain error type.
//! The message is the error's display chain, which names what failed.

use tonic::{Code, Status};

use crate::image::ImageError;

/// The error and its sources, joined with ": ".
fn message(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = match &e {
            ImageError::InvalidReference { .. }
            | ImageError::InvalidArgument(_)
            | ImageError::AmbiguousId { .. }
            | ImageError::Import { .. } => Code::InvalidArgument,
            ImageError::NotFound(_) | ImageError::RegistryNotFound { .. } => Code::NotFound,
            ImageError::Unauthorized { .. } => Code::Unauthenticated,
            ImageError::Forbidden { .. } => Code::PermissionDenied,
            ImageError::Network { .. } | ImageError::Registry { .. } => Code::Unavailable,
            ImageError::Verification { .. } => Code::DataLoss,
            ImageError::TooLarge { .. }
            | ImageError::Unsupported { .. }
            | ImageError::Malformed { .. }
            | ImageError::NoMatchingPlatform { .. }
            | ImageError::Unpack { .. } => Code::FailedPrecondition,
            ImageError::Io { .. } | ImageError::Internal(_) => Code::Internal,
        };
        Status::new(code, message(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_map_to_codes() {
        let s = Status::from(ImageError::NotFound("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        let s = Status::from(ImageError::Unauthorized {
            registry: "r".into(),
            reason: "the registry rejected the username or password".into(),
        });
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("username or password"));
        let s = Status::from(ImageError::io(
            "open",
            "/x",
            std::io::Error::from_raw_os_error(libc::EACCES),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("/x"), "{}", s.message());
    }
}
