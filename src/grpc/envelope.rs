//! The envelope of every call, the outermost layer around the gRPC routes (issue 12):
//! - the request id: the caller's `x-request-id` (1 to 128 printable ASCII characters) or a new
//!   UUID, put in the request headers, on the RPC span (made here, so that it carries the same
//!   id) and in the `x-request-id` header of every response, success or error, unary or stream;
//! - every error, trailers-only or in a stream's trailers, carries `ErrorInfo` (one is added
//!   to tonic's bare errors) and `RequestInfo` with that id (see [`details`]);
//! - while the server drains, a new call is answered UNAVAILABLE `SERVER_DRAINING` with
//!   `RetryInfo` instead of reaching a handler (health checks still answer, NOT_SERVING);
//! - a call whose `grpc-timeout` runs out before it answers gets DEADLINE_EXCEEDED with its
//!   reason: tonic's own timeout sits outside every layer and would answer a bare CANCELLED.
//!   This layer's timer starts before tonic's and is polled first, so it answers first.
//!
//! Successes are not decoded: the body passes through and only a trailers frame is looked at.

mod details;
#[cfg(test)]
mod tests;

pub use details::fallback_reason;

use super::policy::Rpc;
use super::{deadline, status, trace};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// The request and response header of the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id taken from a caller.
const MAX_REQUEST_ID: usize = 128;
/// Health answers during a drain (NOT_SERVING is what tells balancers to go elsewhere).
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
/// The path prefix of the enrollment service's methods (for the call counter).
const SERVICE_PREFIX: &str = "/c2p.enrollment.v1.EnrollmentService/";

/// The layer; `drain` is the server's drain token.
#[derive(Clone)]
pub struct EnvelopeLayer {
    drain: CancellationToken,
}

impl EnvelopeLayer {
    /// The envelope of a server that drains when `drain` is cancelled.
    pub fn new(drain: CancellationToken) -> Self {
        Self { drain }
    }
}

impl<S> tower::Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope {
            inner,
            drain: self.drain.clone(),
        }
    }
}

/// The service of [`EnvelopeLayer`].
#[derive(Clone)]
pub struct Envelope<S> {
    inner: S,
    drain: CancellationToken,
}

/// The caller's request id, when it is 1 to 128 printable ASCII characters (anything else could
/// forge log fields or grow every log line).
fn callers_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(X_REQUEST_ID)?;
    let bytes = value.as_bytes();
    let usable = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    usable.then(|| value.clone())
}

/// The request id of a call: the caller's, or `call`'s UUID that replaces an unusable one in
/// the request headers (so that the handlers read the id the response carries).
fn request_id(headers: &mut HeaderMap, call: trace::CallId) -> HeaderValue {
    if let Some(id) = callers_request_id(headers) {
        return id;
    }
    let id = HeaderValue::from_str(&call.request_id())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Envelope<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<EnvelopeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // One random draw per call for the ids it makes itself.
        let call = trace::CallId::draw();
        let id = request_id(request.headers_mut(), call);
        let path = request.uri().path();
        let span = trace::rpc_span(
            path,
            request.headers(),
            id.to_str().unwrap_or_default(),
            call,
        );
        let rpc = path.strip_prefix(SERVICE_PREFIX).and_then(Rpc::from_name);
        let (state, deadline) = if self.drain.is_cancelled() && !path.starts_with(HEALTH_PREFIX) {
            let status = Some(status::draining());
            (State::Answer { status }, None)
        } else {
            let deadline = deadline::of_headers(request.headers()).map(tokio::time::sleep);
            // Inside the span: what the inner layers log when called (the auth layer's
            // refusals) carries the request id.
            let future = span.in_scope(|| self.inner.call(request));
            (State::Call { future }, deadline)
        };
        ResponseFuture {
            state,
            deadline,
            request_id: id,
            span,
            rpc,
            started: Instant::now(),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Call { #[pin] future: F },
        // Answered here; `None` once taken.
        Answer { status: Option<tonic::Status> },
    }
}

pin_project! {
    /// The response future of [`Envelope`]; polled inside the RPC span.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        #[pin]
        deadline: Option<Sleep>,
        request_id: HeaderValue,
        span: tracing::Span,
        rpc: Option<Rpc>,
        started: Instant,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<EnvelopeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let answer = match this.state.project() {
            StateProj::Answer { status } => status.take().unwrap_or_else(|| {
                tonic::Status::internal("the envelope's answer was polled after completion")
            }),
            StateProj::Call { future } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    return Poll::Ready(result.map(|r| respond(r, this.request_id)));
                }
                let passed = this
                    .deadline
                    .as_pin_mut()
                    .is_some_and(|sleep| sleep.poll(cx).is_ready());
                if !passed {
                    return Poll::Pending;
                }
                status::deadline_passed()
            }
        };
        // Answered without a handler: recorded and counted as a handler would.
        this.span
            .record("rpc.grpc.status_code", answer.code() as i32);
        this.span.record("outcome", "error");
        if let Some(rpc) = this.rpc {
            crate::metrics::rpc(
                rpc.name(),
                trace::code_name(answer.code()),
                trace::status_reason(&answer),
                *this.started,
            );
        }
        let (parts, ()) = answer.into_http::<()>().into_parts();
        let empty = Response::from_parts(parts, None);
        Poll::Ready(Ok(respond_with(empty, this.request_id)))
    }
}

/// The inner service's response with the request id, its error (if trailers-only) completed,
/// and its body watched for error trailers.
fn respond<B>(response: Response<B>, request_id: &HeaderValue) -> Response<EnvelopeBody<B>> {
    respond_with(response.map(Some), request_id)
}

fn respond_with<B>(
    response: Response<Option<B>>,
    request_id: &HeaderValue,
) -> Response<EnvelopeBody<B>> {
    let (mut parts, body) = response.into_parts();
    details::complete(&mut parts.headers, request_id.to_str().unwrap_or_default());
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let body = EnvelopeBody {
        inner: body,
        request_id: request_id.clone(),
    };
    Response::from_parts(parts, body)
}

pin_project! {
    /// A response body whose error trailers get `ErrorInfo` and `RequestInfo`; data frames
    /// pass through untouched. `None`: the empty body of an answer made here.
    pub struct EnvelopeBody<B> {
        #[pin]
        inner: Option<B>,
        request_id: HeaderValue,
    }
}

impl<B: Body> Body for EnvelopeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let mut frame = ready!(inner.poll_frame(cx));
        if let Some(trailers) = frame
            .as_mut()
            .and_then(|f| f.as_mut().ok())
            .and_then(Frame::trailers_mut)
        {
            details::complete(trailers, this.request_id.to_str().unwrap_or_default());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
