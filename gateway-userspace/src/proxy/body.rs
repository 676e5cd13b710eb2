//! The one body type the pipeline passes around, in both directions.

use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed request or response body of any origin (client, upstream, gateway).
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Boxes a body from hyper (client request or upstream response).
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}
