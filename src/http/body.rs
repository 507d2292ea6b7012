//! The response body type shared by every stage.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

/// Errors a streaming body can end with (an upstream cut mid-transfer, a failed read).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: bytes known up front, or a stream from a file or an upstream. The bytes are held inline,
/// so answering from memory allocates no body.
#[derive(Debug)]
pub enum Body {
    /// Bytes known up front (a document held in memory, an error's problem+json); `None` once sent, or empty.
    Full(Option<Bytes>),
    /// A stream: a file read in chunks, an upstream's body.
    Stream(BoxBody<Bytes, BoxError>),
}

impl Body {
    /// A stream of data frames.
    pub fn stream<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Body::Stream(body.boxed())
    }
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    Body::Full((!bytes.is_empty()).then_some(bytes))
}

/// An empty body (HEAD, 304).
pub fn empty() -> Body {
    Body::Full(None)
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn full_bodies_send_their_bytes_once_and_say_their_length() {
        let b = full("abc");
        assert_eq!(b.size_hint().exact(), Some(3));
        assert!(!b.is_end_stream());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "abc");
        let e = full("");
        assert!(e.is_end_stream());
        assert_eq!(e.size_hint().exact(), Some(0));
        assert!(empty().collect().await.unwrap().to_bytes().is_empty());
    }
}
