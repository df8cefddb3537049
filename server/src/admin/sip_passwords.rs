//! Agents' SIP passwords, for desk phones and softphones that register with SIP Digest
//! instead of a bearer token. A password is shown once, when it is made; the store keeps only
//! its HA1 hashes. Each has an id that revocation treats as a token's `jti`, so signing an
//! agent out (or replacing her password) ends every registration made with it.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::api::{AdminState, problem, store_error};
use super::store::SipPassword;
use crate::distributor::service::Command;
use crate::sip::digest::{self, Algorithm};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /agents/{id}/sip-password`: a new password (160 random bits), replacing and
/// revoking the one she had.
pub async fn create(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.store.agent(&id) {
        Ok(Some(_)) => {}
        Ok(None) => return problem(StatusCode::NOT_FOUND, "no such agent"),
        Err(e) => return store_error(e),
    }
    let password = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 20]>());
    let kept = SipPassword {
        id: format!("sip-{:024x}", rand::random::<u128>() >> 32),
        ha1_md5: digest::ha1(Algorithm::Md5, &id, digest::REALM, &password),
        ha1_sha256: digest::ha1(Algorithm::Sha256, &id, digest::REALM, &password),
        created: unix_now(),
    };
    let replaced = match state.store.set_sip_password(&id, &kept) {
        Ok(replaced) => replaced,
        Err(e) => return store_error(e),
    };
    if let Some(old) = replaced
        && let Err(response) = revoke(&state, old).await
    {
        return response;
    }
    tracing::info!(agent = %id, password = %kept.id, "SIP password issued");
    let algorithms: Vec<&str> = Algorithm::OFFERED.iter().map(|a| a.name()).collect();
    let body = json!({
        "username": id,
        "realm": digest::REALM,
        "password": password,
        "id": kept.id,
        "algorithms": algorithms,
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `DELETE /agents/{id}/sip-password`: no more Digest registrations for her, and the phones
/// registered with the password are signed out.
pub async fn delete(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.store.delete_sip_password(&id) {
        Ok(Some(old)) => match revoke(&state, old).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(response) => response,
        },
        Ok(None) => problem(StatusCode::NOT_FOUND, "the agent has no SIP password"),
        Err(e) => store_error(e),
    }
}

/// Revokes a password's id as a token's: remembered as long as any token, and told to the
/// distributor, which signs out the agents it proved and tells every edge.
pub async fn revoke(state: &AdminState, id: String) -> Result<(), Response> {
    let until = unix_now() + super::tokens::MAX_AGENT_TOKEN_TTL_S;
    state.store.revoke(&id, until).map_err(store_error)?;
    state
        .commands
        .send(Command::Revoke { jti: id })
        .await
        .map_err(|_| {
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the distributor is stopping",
            )
        })
}
