//! The response body type shared by every stage.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a streaming body can end with (an upstream cut mid-transfer, a failed read).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: fixed bytes, or a stream from a file or an upstream.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body (HEAD, 304).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
