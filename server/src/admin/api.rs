//! The admin HTTP API on the distributor: agents, their tokens, revocation, the live view and
//! the public keys. Bound to loopback by default; every route but the public keys and the
//! OpenAPI description needs `Authorization: Bearer <admin key>`, compared in constant time.
//! Errors are RFC 9457 problem details.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::store::{Agent, Store};
use super::tokens::TokenIssuer;
use crate::acd::{Presence, Profile};
use crate::distributor::service::Command;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<Store>,
    pub issuer: TokenIssuer,
    pub token_ttl_s: u64,
    pub admin_key: Arc<str>,
    pub commands: mpsc::Sender<Command>,
    /// The edges exposed on the distributor's public listener, for the live view.
    pub exposures: crate::transport::exposure::Exposures,
    /// The caller media relay of exposed edges, for the live view.
    pub relay: crate::transport::media_relay::MediaRelay,
    /// Agents' TURN over TLS on the public listener, for the live view.
    pub turn: crate::transport::turn_tls::TurnServer,
    /// What `/metrics` exposes.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The call records, read by `/calls`.
    pub calls: super::calls_api::CallsDb,
    /// The agent page's address, for sign-in links (`?token=`), once known.
    pub agent_page: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// Longest a revocation is remembered: the longest lifetime a token can be issued with.
const REVOCATION_KEPT_S: u64 = super::tokens::MAX_AGENT_TOKEN_TTL_S;

const OPENAPI: &str = include_str!("openapi.json");

/// Binds the admin API and serves it in the background.
pub async fn listen(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "the admin API listens beyond loopback; put it behind TLS");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(local)
}

pub fn router(state: AdminState) -> Router {
    let private = Router::new()
        .route("/agents", get(list_agents).post(create_agent))
        .route(
            "/agents/{id}",
            get(get_agent).put(put_agent).delete(delete_agent),
        )
        .route("/agents/{id}/tokens", post(issue_token))
        .route(
            "/agents/{id}/sip-password",
            post(super::sip_passwords::create).delete(super::sip_passwords::delete),
        )
        .route("/tokens/revoke", post(revoke_token))
        .route("/keys/rotate", post(rotate_keys))
        .route("/live", get(live))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/calls", get(super::calls_api::list))
        .route("/calls.csv", get(super::calls_api::csv))
        .route("/calls/summary", get(super::calls_api::summary))
        .route("/agents/{id}/presence", axum::routing::put(put_presence))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    use super::console;
    Router::new()
        .route("/console", get(console::page))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/uPlot.min.css", get(console::chart_style))
        .route(
            "/console/session",
            get(console::check)
                .post(console::sign_in)
                .delete(console::sign_out),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi))
        .merge(private)
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such resource") })
        .with_state(state)
}

/// An RFC 9457 problem: `title` is the status's phrase, `detail` says what happened.
pub(super) fn problem(status: StatusCode, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// The admin key as a bearer token, or the console's session cookie (see
/// [`super::console`]).
async fn require_key(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    use super::console::{Authorized, authorize};
    let auth = authorize(&state.admin_key, request.method(), request.headers());
    if auth == Authorized::SessionWithoutHeader {
        return problem(
            StatusCode::FORBIDDEN,
            "a console session changes nothing without the X-AE-Console header",
        );
    }
    if auth == Authorized::No {
        let mut resp = problem(
            StatusCode::UNAUTHORIZED,
            "the admin key is missing or wrong",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"agent-edge-admin\""),
        );
        return resp;
    }
    next.run(request).await
}

pub(super) fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin store failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "the agent store failed")
}

/// What is wrong with an agent record, if anything.
fn agent_problem(agent: &Agent) -> Option<&'static str> {
    if !proto_tunnel::valid_id(&agent.id, 128) {
        return Some("id must be 1-128 visible characters without spaces");
    }
    if agent.name.is_empty() || agent.name.len() > 200 || agent.name.chars().any(char::is_control) {
        return Some("name must be 1-200 printable characters");
    }
    if !(1..=100).contains(&agent.max_calls) {
        return Some("max_calls must be 1-100");
    }
    let bad_skill =
        |(s, l): (&String, &u8)| !proto_tunnel::valid_id(s, 64) || !(1..=100).contains(l);
    if agent.skills.iter().any(bad_skill) {
        return Some("skills map names without spaces to levels 1-100");
    }
    None
}

async fn list_agents(State(state): State<AdminState>) -> Response {
    match state.store.agents() {
        Ok(agents) => Json(agents).into_response(),
        Err(e) => store_error(e),
    }
}

async fn create_agent(State(state): State<AdminState>, body: Option<Json<Agent>>) -> Response {
    let Some(Json(agent)) = body else {
        return problem(StatusCode::BAD_REQUEST, "the body must be a JSON agent");
    };
    if let Some(why) = agent_problem(&agent) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    match state.store.agent(&agent.id) {
        Ok(Some(_)) => return problem(StatusCode::CONFLICT, "an agent with this id exists"),
        Ok(None) => {}
        Err(e) => return store_error(e),
    }
    match state.store.put_agent(&agent) {
        Ok(_) => (StatusCode::CREATED, Json(agent)).into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_agent(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.store.agent(&id) {
        Ok(Some(agent)) => Json(agent).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "no such agent"),
        Err(e) => store_error(e),
    }
}

async fn put_agent(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Option<Json<Agent>>,
) -> Response {
    let Some(Json(agent)) = body else {
        return problem(StatusCode::BAD_REQUEST, "the body must be a JSON agent");
    };
    if agent.id != id {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body's id differs from the path's",
        );
    }
    if let Some(why) = agent_problem(&agent) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    match state.store.put_agent(&agent) {
        Ok(created) => {
            let profile = Profile {
                skills: agent.skills.clone(),
                max_calls: agent.max_calls,
            };
            let _ = state
                .commands
                .send(Command::Profile {
                    agent: agent.id.clone(),
                    profile: Some(profile),
                })
                .await;
            if created {
                (StatusCode::CREATED, Json(agent)).into_response()
            } else {
                Json(agent).into_response()
            }
        }
        Err(e) => store_error(e),
    }
}

async fn delete_agent(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    // Her SIP password goes with her: the phones registered with it are signed out.
    let password = match state.store.sip_password(&id) {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    match state.store.delete_agent(&id) {
        Ok(true) => {
            if let Some(password) = password
                && let Err(response) = super::sip_passwords::revoke(&state, password.id).await
            {
                return response;
            }
            let _ = state
                .commands
                .send(Command::Profile {
                    agent: id,
                    profile: None,
                })
                .await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => problem(StatusCode::NOT_FOUND, "no such agent"),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    ttl_s: Option<u64>,
}

async fn issue_token(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // The body is optional: no body means the default lifetime.
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        match serde_json::from_slice::<TokenRequest>(&body) {
            Ok(r) => r,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("bad request body: {e}")),
        }
    };
    let ttl = request.ttl_s.unwrap_or(state.token_ttl_s);
    if !(60..=REVOCATION_KEPT_S).contains(&ttl) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ttl_s must be 60 s to 31 days",
        );
    }
    let agent = match state.store.agent(&id) {
        Ok(Some(agent)) => agent,
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such agent"),
        Err(e) => return store_error(e),
    };
    match state
        .issuer
        .issue_claims(&agent.id, Some(&agent.name), &agent.skills, ttl)
    {
        Ok((token, claims)) => Json(json!({
            "link": state.agent_page.get().map(|page| format!("{page}?token={token}")),
            "token": token,
            "jti": claims.jti,
            "expires": claims.exp,
        }))
        .into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    jti: String,
}

async fn revoke_token(
    State(state): State<AdminState>,
    body: Option<Json<RevokeRequest>>,
) -> Response {
    let Some(Json(RevokeRequest { jti })) = body else {
        return problem(StatusCode::BAD_REQUEST, "the body must be {\"jti\": \"…\"}");
    };
    if !proto_tunnel::valid_id(&jti, 128) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "jti is not a token id");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = state.store.revoke(&jti, now + REVOCATION_KEPT_S) {
        return store_error(e);
    }
    if state.commands.send(Command::Revoke { jti }).await.is_err() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the distributor is stopping",
        );
    }
    StatusCode::NO_CONTENT.into_response()
}

/// New tokens are signed with a new key; the old key stays published (and every edge keeps
/// accepting its tokens) until they expire.
async fn rotate_keys(State(state): State<AdminState>) -> Response {
    if let Err(e) = state.issuer.rotate() {
        tracing::error!(error = %e, "key rotation failed");
        return problem(StatusCode::INTERNAL_SERVER_ERROR, "key rotation failed");
    }
    let settings = state.issuer.verifier_settings();
    let json = match serde_json::to_string(&settings) {
        Ok(j) => j,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if state.commands.send(Command::Keys { json }).await.is_err() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the distributor is stopping",
        );
    }
    Json(settings.jwks).into_response()
}

async fn live(State(state): State<AdminState>) -> Response {
    let (reply, answer) = oneshot::channel();
    if state.commands.send(Command::Live { reply }).await.is_err() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the distributor is stopping",
        );
    }
    match answer.await {
        Ok(view) => {
            let mut view = serde_json::to_value(view).unwrap_or_default();
            if let Some(object) = view.as_object_mut() {
                let exposed = serde_json::to_value(state.exposures.view()).unwrap_or_default();
                object.insert("exposed".into(), exposed);
                let relay = state.relay.overview();
                let connections = serde_json::to_value(&relay.connections).unwrap_or_default();
                object.insert("media_relay".into(), connections);
                let ice_tcp = serde_json::json!({
                    "passed": relay.ice_tcp_passed,
                    "refused": relay.ice_tcp_refused,
                });
                object.insert("ice_tcp".into(), ice_tcp);
                let turn = serde_json::to_value(state.turn.view()).unwrap_or_default();
                object.insert("turn".into(), turn);
            }
            Json(view).into_response()
        }
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the distributor is stopping",
        ),
    }
}

fn stopping() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the distributor is stopping",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[serde(tag = "state")]
enum PresenceRequest {
    Available,
    Away { reason: Option<String> },
}

/// A supervisor sets an agent available or away (with a reason).
async fn put_presence(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Option<Json<PresenceRequest>>,
) -> Response {
    let Some(Json(request)) = body else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the body must be {\"state\": \"available\"} or {\"state\": \"away\", \"reason\": \"…\"}",
        );
    };
    let presence = match request {
        PresenceRequest::Available => Presence::Available,
        PresenceRequest::Away { reason } => {
            let reason = reason.unwrap_or_else(|| "away".into());
            if reason.is_empty() || reason.len() > 100 || reason.chars().any(char::is_control) {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "reason must be 1-100 printable characters",
                );
            }
            Presence::Away { reason }
        }
    };
    let (reply, answer) = oneshot::channel();
    let command = Command::Presence {
        agent: id,
        presence,
        reply,
    };
    if state.commands.send(command).await.is_err() {
        return stopping();
    }
    match answer.await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::CONFLICT, "the agent is not signed in"),
        Err(_) => stopping(),
    }
}

/// The live event stream (server-sent events): first the whole state (`"type": "snapshot"`),
/// then every change as the ACD publishes it (agents, queues, calls).
async fn events(State(state): State<AdminState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;

    let (reply, answer) = oneshot::channel();
    if state
        .commands
        .send(Command::Subscribe { reply })
        .await
        .is_err()
    {
        return stopping();
    }
    let Ok((view, receiver)) = answer.await else {
        return stopping();
    };
    let mut snapshot = serde_json::to_value(&view).unwrap_or_default();
    if let Some(map) = snapshot.as_object_mut() {
        map.insert("type".into(), "snapshot".into());
    }
    let first = Event::default().data(snapshot.to_string());
    let rest = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let data = match receiver.recv().await {
            Ok(json) => json.to_string(),
            Err(RecvError::Lagged(missed)) => {
                json!({"type": "lagged", "missed": missed}).to_string()
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Event::default().data(data), receiver))
    });
    use futures_util::StreamExt;
    let stream = futures_util::stream::once(async { first })
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The Prometheus metrics (scraped with the admin key as a bearer token): OpenMetrics text
/// for a client that asks for it, as Prometheus does, the Prometheus text format otherwise.
async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    use crate::metrics::{OPENMETRICS, PROMETHEUS_TEXT};
    if !state.metrics.enabled() {
        return problem(
            StatusCode::NOT_FOUND,
            "metrics are off ([metrics] enabled = false)",
        );
    }
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (encoded, media_type) = if open_metrics {
        (state.metrics.encode(), OPENMETRICS)
    } else {
        (state.metrics.encode_prometheus_text(), PROMETHEUS_TEXT)
    };
    match encoded {
        Ok(text) => {
            let mut resp = text.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
            resp
        }
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        ),
    }
}

async fn jwks(State(state): State<AdminState>) -> Response {
    Json(state.issuer.verifier_settings().jwks).into_response()
}

async fn openapi() -> Response {
    let mut resp = OPENAPI.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
