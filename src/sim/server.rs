//! The HTTP/1.1 server: accepts connections, applies injected faults, hands requests to the
//! API or the control API, logs them to the audit log, and ticks the simulated cluster.
//!
//! It is hyper without a framework because one fault needs hyper itself: a dropped
//! connection is a service that fails, which makes hyper close the connection without an
//! answer, exactly what a client sees when an API server dies mid-request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Shared;
use super::api::{self, Reply, Request};
use super::audit::Entry;
use super::controllers;
use super::faults::Verdict;
use super::status::ApiError;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Real time between cluster ticks: timers fire and controllers react within this.
const TICK: Duration = Duration::from_millis(10);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The error that makes hyper drop a connection.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
struct Dropped;

pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let ticker = tokio::spawn(tick(shared.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Watch events are small writes; without this, Nagle's algorithm and the
                // client's delayed ACK hold each one back for about 40 ms.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |request| respond(shared.clone(), request));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    // A connection that ends in an error (a dropped one, a client gone) is over either way.
                    let _ = connection.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
    ticker.abort();
    // Watches never end on their own; give answers in flight a moment, then stop.
    let _ = tokio::time::timeout(Duration::from_millis(500), graceful.shutdown()).await;
}

async fn tick(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        interval.tick().await;
        controllers::tick(&mut shared.lock());
    }
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect()
}

async fn respond(shared: Arc<Shared>, request: http::Request<Incoming>) -> Result<http::Response<Body>, Dropped> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let raw_query = request.uri().query().unwrap_or_default().to_owned();
    let query = query(request.uri());
    let header = |name: http::HeaderName| {
        request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };
    let user_agent = header(http::header::USER_AGENT);
    let accept = header(http::header::ACCEPT);
    let content_type = header(http::header::CONTENT_TYPE);
    let route = api::route(&path);
    let verb = api::verb(&method, &route, &query);
    let control = path.starts_with("/sim/");
    let audit = |status: u16| {
        if shared.audit.enabled() {
            shared.audit.record(&Entry {
                time: jiff::Timestamp::now().to_string(),
                verb: if control { "control" } else { verb },
                method: method.to_string(),
                path: path.clone(),
                query: raw_query.clone(),
                status,
                user_agent: user_agent.clone(),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            });
        }
    };
    let (verdict, latency) = if control {
        (Verdict::Serve, std::time::Duration::ZERO)
    } else {
        let mut faults = shared.faults();
        (faults.verdict(method.as_str(), &path), faults.latency())
    };
    if !control {
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let injected = match verdict {
            Verdict::Serve | Verdict::LoseAnswer => None,
            Verdict::Drop => {
                audit(0);
                return Err(Dropped);
            }
            Verdict::Error => Some(ApiError::internal("simulated internal error (fault injection)")),
            Verdict::Throttle => Some(ApiError::throttled()),
        };
        if let Some(error) = injected {
            audit(error.code);
            return Ok(status_response(&error));
        }
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let error =
                ApiError::bad_request(format!("the request body is unreadable or larger than {MAX_BODY} bytes"));
            audit(error.code);
            return Ok(status_response(&error));
        }
    };
    let lose_answer = verdict == Verdict::LoseAnswer;
    let reply = if control {
        super::control::handle(&shared, &method, &path, &body).await
    } else {
        api::handle(&shared, &Request { method: method.clone(), path: path.clone(), query, accept, content_type, body })
    };
    let response = to_response(reply);
    if lose_answer {
        audit(0);
        return Err(Dropped);
    }
    audit(response.status().as_u16());
    Ok(response)
}

fn status_response(error: &ApiError) -> http::Response<Body> {
    let mut response = to_response(Reply::Json(error.code, Bytes::from(error.to_status().to_string())));
    if let Some(seconds) = error.retry_after {
        response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    response
}

fn to_response(reply: Reply) -> http::Response<Body> {
    let (code, content_type, body) = match reply {
        Reply::Json(code, bytes) => (code, "application/json", Full::new(bytes).boxed_unsync()),
        Reply::Text(code, text) => {
            (code, "text/plain; charset=utf-8", Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync())
        }
        Reply::Watch(receiver) => {
            let stream = futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), receiver))
            });
            (200, "application/json", StreamBody::new(stream.boxed()).boxed_unsync())
        }
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
