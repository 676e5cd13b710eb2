//! The one place that turns errors into responses: one JSON shape, one status mapping.
//!
//! `{"error":{"status":404,"code":"no_route","message":"...","request_id":"..."}}`
//!
//! gRPC requests get the gRPC shape instead (a gRPC client reads no JSON): HTTP 200,
//! `content-type: application/grpc`, no body, and `grpc-status` / `grpc-message` in the
//! head (a "trailers-only" response).

use hyper::{
    Response, StatusCode,
    header::{CONTENT_TYPE, HeaderName, HeaderValue},
};

use super::body::{ProxyBody, empty, full};

/// Who caused a failure: decides the log level, the `fault` of the access log and the
/// `cause` label of `gateway_request_errors`, and whether an upstream target is blamed
/// (only `Upstream` failures count for passive ejection, the EWMA and upstream metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Client,
    Upstream,
    Gateway,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Client => "client",
            Cause::Upstream => "upstream",
            Cause::Gateway => "gateway",
        }
    }
}

/// Everything the pipeline can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The request is malformed in a way the HTTP parser let through.
    BadRequest,
    /// The request head is larger than `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The method is longer than `limits.max_method_bytes` or not in `limits.methods` (501).
    MethodNotImplemented,
    /// The request body is larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// The request body's framing is broken (chunk sizes, CRLFs, trailers, an HTTP/2
    /// content-length that DATA does not match).
    BodyMalformed,
    /// The request body did not arrive within `limits.body_read_timeout` /
    /// `limits.min_body_rate`.
    BodyTimeout,
    /// The client closed or reset its connection or stream before its body ended: nginx's
    /// 499, for the log and metrics (the client is gone).
    ClientClosed,
    /// The route's upstream has no target to send to.
    NoTarget,
    /// Connecting to or talking with the upstream failed.
    UpstreamFailed,
    /// The upstream did not connect or answer in time.
    UpstreamTimeout,
    /// TLS with the upstream failed: its certificate (unknown issuer, wrong name, expired),
    /// or it refused the gateway's (502, its own code so operators tell it from a crash).
    UpstreamTls,
    /// No valid credential (401; `WWW-Authenticate` says why, RFC 6750).
    Unauthorized,
    /// The route needs a verified client certificate (mTLS) and the connection showed none,
    /// or one without the identity the listener reads (401).
    ClientCertRequired,
    /// Authenticated, but not allowed here: scopes, claims, groups (403).
    InsufficientScope,
    /// The client certificate's identity is not among the route's `authorize.client_certs`
    /// (403).
    ClientCertDenied,
    /// The client's address may not use this route (403).
    SourceDenied,
    /// A CORS preflight the route's policy does not allow (403).
    CorsRejected,
    /// Over a rate limit (429; `Retry-After` and `RateLimit-*` say when to come back).
    RateLimited,
    /// A cluster-wide limit could not be checked: Redis is down and `cluster.on_redis_down`
    /// is "deny" (503).
    LimitUnavailable,
    /// A bug or an impossible state in the gateway.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::MethodNotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::BodyMalformed => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ClientClosed => CLIENT_CLOSED,
            ErrorKind::NoTarget => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamFailed | ErrorKind::UpstreamTls => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unauthorized | ErrorKind::ClientCertRequired => StatusCode::UNAUTHORIZED,
            ErrorKind::InsufficientScope
            | ErrorKind::ClientCertDenied
            | ErrorKind::SourceDenied
            | ErrorKind::CorsRejected => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code for clients.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::MethodNotImplemented => "method_not_implemented",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BodyMalformed => "malformed_body",
            ErrorKind::BodyTimeout => "body_timeout",
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::NoTarget => "no_upstream_target",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamTls => "upstream_tls_failed",
            ErrorKind::Unauthorized => "invalid_token",
            ErrorKind::ClientCertRequired => "client_cert_required",
            ErrorKind::InsufficientScope => "insufficient_scope",
            ErrorKind::ClientCertDenied => "client_cert_not_allowed",
            ErrorKind::SourceDenied => "source_denied",
            ErrorKind::CorsRejected => "cors_rejected",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::LimitUnavailable => "rate_limit_unavailable",
            ErrorKind::Internal => "internal_error",
        }
    }

    pub fn cause(self) -> Cause {
        match self {
            ErrorKind::NoRoute
            | ErrorKind::BadRequest
            | ErrorKind::HeadersTooLarge
            | ErrorKind::MethodNotImplemented
            | ErrorKind::BodyTooLarge
            | ErrorKind::BodyMalformed
            | ErrorKind::BodyTimeout
            | ErrorKind::ClientClosed
            | ErrorKind::Unauthorized
            | ErrorKind::ClientCertRequired
            | ErrorKind::InsufficientScope
            | ErrorKind::ClientCertDenied
            | ErrorKind::SourceDenied
            | ErrorKind::CorsRejected
            | ErrorKind::RateLimited => Cause::Client,
            ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamTls => {
                Cause::Upstream
            }
            ErrorKind::NoTarget | ErrorKind::LimitUnavailable | ErrorKind::Internal => {
                Cause::Gateway
            }
        }
    }

    /// Whether sending the same request again may succeed (for retries and for clients).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::NoTarget
                | ErrorKind::UpstreamFailed
                | ErrorKind::UpstreamTimeout
                | ErrorKind::UpstreamTls
        )
    }

    /// The gRPC status code clients of gRPC services get for this kind.
    pub fn grpc_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::BodyMalformed => 3, // INVALID_ARGUMENT
            ErrorKind::UpstreamTimeout | ErrorKind::BodyTimeout => 4, // DEADLINE_EXCEEDED
            ErrorKind::ClientClosed => 1,                          // CANCELLED
            ErrorKind::HeadersTooLarge | ErrorKind::BodyTooLarge | ErrorKind::RateLimited => 8, // RESOURCE_EXHAUSTED
            ErrorKind::InsufficientScope
            | ErrorKind::ClientCertDenied
            | ErrorKind::SourceDenied
            | ErrorKind::CorsRejected => 7, // PERMISSION_DENIED
            ErrorKind::Unauthorized | ErrorKind::ClientCertRequired => 16, // UNAUTHENTICATED
            ErrorKind::NoRoute | ErrorKind::MethodNotImplemented => 12,    // UNIMPLEMENTED
            ErrorKind::Internal => 13,                                     // INTERNAL
            ErrorKind::NoTarget
            | ErrorKind::UpstreamFailed
            | ErrorKind::UpstreamTls
            | ErrorKind::LimitUnavailable => 14, // UNAVAILABLE
        }
    }

    fn message(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route matches this request",
            ErrorKind::BadRequest => "the request is malformed",
            ErrorKind::HeadersTooLarge => "the request header fields are too large",
            ErrorKind::MethodNotImplemented => "this request method is not implemented",
            ErrorKind::BodyTooLarge => "the request body is too large",
            ErrorKind::BodyMalformed => "the request body is malformed",
            ErrorKind::BodyTimeout => "the request body did not arrive in time",
            ErrorKind::ClientClosed => "the client closed the request",
            ErrorKind::NoTarget => "no upstream target is available",
            ErrorKind::UpstreamFailed => "the upstream failed to answer",
            ErrorKind::UpstreamTimeout => "the upstream did not answer in time",
            ErrorKind::UpstreamTls => "the TLS connection to the upstream failed",
            ErrorKind::Unauthorized => "a valid credential is required",
            ErrorKind::ClientCertRequired => "a valid client certificate is required",
            ErrorKind::InsufficientScope => "the credential does not allow this request",
            ErrorKind::ClientCertDenied => "this client certificate is not allowed here",
            ErrorKind::SourceDenied => "this route is not open to your address",
            ErrorKind::CorsRejected => "this cross-origin request is not allowed",
            ErrorKind::RateLimited => "too many requests; retry later",
            ErrorKind::LimitUnavailable => "the rate limit cannot be checked now; retry later",
            ErrorKind::Internal => "internal gateway error",
        }
    }
}

/// A failed request: the kind (for the client) and the detail (for the log only: it may
/// name internal addresses).
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", kind.code())]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub detail: String,
    /// Whether the request may have reached the upstream (a retry is then only safe for
    /// idempotent methods).
    pub sent: bool,
    /// The upstream closed or reset the connection before any response head: it processed
    /// nothing it answered, so an idempotent request may be sent again (RFC 9110 9.2.2).
    pub unanswered: bool,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> ProxyError {
        ProxyError {
            kind,
            detail: detail.into(),
            sent: false,
            unanswered: false,
        }
    }

    /// Whose fault this is.
    pub fn cause(&self) -> Cause {
        self.kind.cause()
    }

    /// Whether sending the request again is safe and may succeed: it never reached the
    /// upstream, or it is idempotent and the upstream dropped it unanswered.
    pub fn retry_allowed(&self, idempotent: bool) -> bool {
        self.kind.retryable() && (!self.sent || idempotent && self.unanswered)
    }
}

/// The response a client gets for `error`.
pub fn respond(error: &ProxyError, request_id: &str) -> Response<ProxyBody> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: Fields<'a>,
    }
    #[derive(serde::Serialize)]
    struct Fields<'a> {
        status: u16,
        code: &'a str,
        message: &'a str,
        request_id: &'a str,
    }
    let status = error.kind.status();
    let body = Body {
        error: Fields {
            status: status.as_u16(),
            code: error.kind.code(),
            message: error.kind.message(),
            request_id,
        },
    };
    let json = serde_json::to_string(&body).expect("plain strings and numbers serialize");
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The response a gRPC client gets for `error`: the same kind and message, gRPC-shaped.
pub fn respond_grpc(error: &ProxyError, request_id: &str) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(error.kind.grpc_status()));
    // Printable ASCII: only `%` needs percent-encoding (a client's request id may hold one).
    let message = format!("{} (request id {request_id})", error.kind.message()).replace('%', "%25");
    let message = HeaderValue::from_str(&message)
        .unwrap_or_else(|_| HeaderValue::from_static(error.kind.message()));
    headers.insert(GRPC_MESSAGE, message);
    response
}

/// nginx's "client closed request": logged, never really sent (the client is gone).
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[test]
    fn status_mapping_is_pinned() {
        let table = [
            (ErrorKind::NoRoute, 404, "no_route", Cause::Client, false),
            (
                ErrorKind::BadRequest,
                400,
                "bad_request",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::HeadersTooLarge,
                431,
                "headers_too_large",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::BodyTooLarge,
                413,
                "body_too_large",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::BodyMalformed,
                400,
                "malformed_body",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::BodyTimeout,
                408,
                "body_timeout",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::ClientClosed,
                499,
                "client_closed",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::NoTarget,
                503,
                "no_upstream_target",
                Cause::Gateway,
                true,
            ),
            (
                ErrorKind::UpstreamFailed,
                502,
                "upstream_failed",
                Cause::Upstream,
                true,
            ),
            (
                ErrorKind::UpstreamTimeout,
                504,
                "upstream_timeout",
                Cause::Upstream,
                true,
            ),
            (
                ErrorKind::UpstreamTls,
                502,
                "upstream_tls_failed",
                Cause::Upstream,
                true,
            ),
            (
                ErrorKind::Internal,
                500,
                "internal_error",
                Cause::Gateway,
                false,
            ),
            (
                ErrorKind::Unauthorized,
                401,
                "invalid_token",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::InsufficientScope,
                403,
                "insufficient_scope",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::ClientCertRequired,
                401,
                "client_cert_required",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::ClientCertDenied,
                403,
                "client_cert_not_allowed",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::SourceDenied,
                403,
                "source_denied",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::CorsRejected,
                403,
                "cors_rejected",
                Cause::Client,
                false,
            ),
            (
                ErrorKind::RateLimited,
                429,
                "rate_limited",
                Cause::Client,
                false,
            ),
        ];
        for (kind, status, code, cause, retryable) in table {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.code(), code, "{kind:?}");
            assert_eq!(kind.cause(), cause, "{kind:?}");
            assert_eq!(kind.retryable(), retryable, "{kind:?}");
        }
    }

    #[test]
    fn a_sent_request_is_not_retried_blindly() {
        let mut error = ProxyError::new(ErrorKind::UpstreamTimeout, "slow");
        assert!(error.retry_allowed(false));
        error.sent = true;
        assert!(!error.retry_allowed(false) && !error.retry_allowed(true));
        // Dropped unanswered: safe again for idempotent requests only.
        let mut error = ProxyError::new(ErrorKind::UpstreamFailed, "reset");
        (error.sent, error.unanswered) = (true, true);
        assert!(error.retry_allowed(true) && !error.retry_allowed(false));
        // A client's fault is never retried.
        let mut error = ProxyError::new(ErrorKind::BodyMalformed, "bad chunk");
        error.unanswered = true;
        assert!(!error.retry_allowed(true));
    }

    #[test]
    fn grpc_errors_are_grpc_shaped() {
        let table = [
            (ErrorKind::NoRoute, "12"),
            (ErrorKind::BadRequest, "3"),
            (ErrorKind::HeadersTooLarge, "8"),
            (ErrorKind::BodyTooLarge, "8"),
            (ErrorKind::BodyMalformed, "3"),
            (ErrorKind::BodyTimeout, "4"),
            (ErrorKind::ClientClosed, "1"),
            (ErrorKind::NoTarget, "14"),
            (ErrorKind::UpstreamFailed, "14"),
            (ErrorKind::UpstreamTimeout, "4"),
            (ErrorKind::Internal, "13"),
            (ErrorKind::Unauthorized, "16"),
            (ErrorKind::InsufficientScope, "7"),
            (ErrorKind::SourceDenied, "7"),
            (ErrorKind::ClientCertRequired, "16"),
            (ErrorKind::ClientCertDenied, "7"),
            (ErrorKind::CorsRejected, "7"),
            (ErrorKind::RateLimited, "8"),
        ];
        for (kind, grpc_status) in table {
            let response = respond_grpc(&ProxyError::new(kind, "detail"), "abc");
            assert_eq!(response.status(), 200, "{kind:?}");
            let headers = response.headers();
            assert_eq!(headers[CONTENT_TYPE], "application/grpc", "{kind:?}");
            assert_eq!(headers[GRPC_STATUS], grpc_status, "{kind:?}");
            assert!(
                headers[GRPC_MESSAGE].to_str().unwrap().contains("abc"),
                "{kind:?}"
            );
        }
    }

    #[tokio::test]
    async fn one_json_shape() {
        let response = respond(&ProxyError::new(ErrorKind::NoRoute, "GET /x"), "abc");
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"error":{"status":404,"code":"no_route","message":"no route matches this request","request_id":"abc"}}"#
        );
    }
}
