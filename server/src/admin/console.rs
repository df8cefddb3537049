//! The supervisor console: a page on the admin listener that signs in with the admin key once
//! and then holds a session cookie, so the key is never kept in the browser. The page does
//! everything through the admin API scripts use; the API takes the cookie as it takes the key.
//!
//! The cookie is stateless: an expiry and an HMAC of it keyed with the admin key. A restart
//! keeps supervisors signed in, and a new admin key (the key file replaced, or
//! `AGENT_EDGE_ADMIN_KEY` changed) signs every session out. It is `HttpOnly` (the page's
//! script cannot read it), `SameSite=Strict` (no other site's page sends it), and `Secure`
//! when the request came over TLS through a proxy (`X-Forwarded-Proto: https`); a request
//! authenticated by it that changes something must also carry `X-AE-Console: 1`, which no
//! other origin can add without a CORS preflight this API never grants.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::api::{AdminState, problem};

const PAGE: &str = include_str!("../../../agent-web/console.html");
const STYLE: &str = include_str!("../../../agent-web/console.css");
/// uPlot and the console's script, bundled by `build.rs`.
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/console.js"));
const CHART_STYLE: &str = include_str!(concat!(env!("OUT_DIR"), "/uPlot.min.css"));

pub const COOKIE: &str = "ae_console";
/// The header a cookie-authenticated request that changes something must carry.
pub const CSRF_HEADER: &str = "x-ae-console";
/// How long a console session lasts: a supervisor's shift.
const SESSION_S: u64 = 12 * 3600;

/// The console runs only its own script and style, connects only to its own origin, is
/// never framed and sends no Referer.
const HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

fn with_headers(mut resp: Response) -> Response {
    for (name, value) in HEADERS {
        resp.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    with_headers(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn chart_style() -> Response {
    asset("text/css; charset=utf-8", CHART_STYLE)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(admin_key: &str, expires: u64) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, admin_key.as_bytes());
    hmac::sign(
        &key,
        format!("agent-edge console session {expires}").as_bytes(),
    )
}

/// A session cookie's value, valid until `expires` for this admin key.
pub fn session_value(admin_key: &str, expires: u64) -> String {
    format!(
        "{expires}.{}",
        URL_SAFE_NO_PAD.encode(mac(admin_key, expires).as_ref())
    )
}

/// Whether `value` is a session of this admin key, unexpired at `now`.
pub fn session_valid(admin_key: &str, value: &str, now: u64) -> bool {
    let Some((expires, tag)) = value.split_once('.') else {
        return false;
    };
    let (Ok(expires), Ok(tag)) = (expires.parse::<u64>(), URL_SAFE_NO_PAD.decode(tag)) else {
        return false;
    };
    if expires <= now || expires > now + SESSION_S {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, admin_key.as_bytes());
    let message = format!("agent-edge console session {expires}");
    hmac::verify(&key, message.as_bytes(), &tag).is_ok()
}

/// The console cookie's value in a request, if it has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// How a request to the private API proved itself, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorized {
    Key,
    Session,
    /// A session cookie on a request that changes something, without the console's header.
    SessionWithoutHeader,
    No,
}

pub fn authorize(admin_key: &str, method: &Method, headers: &HeaderMap) -> Authorized {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(presented) = presented {
        let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
            presented.as_bytes(),
            admin_key.as_bytes(),
        )
        .is_ok();
        return if ok { Authorized::Key } else { Authorized::No };
    }
    if !cookie(headers).is_some_and(|v| session_valid(admin_key, v, unix_now())) {
        return Authorized::No;
    }
    let safe = matches!(*method, Method::GET | Method::HEAD);
    if safe || headers.get(CSRF_HEADER).is_some_and(|v| v == "1") {
        Authorized::Session
    } else {
        Authorized::SessionWithoutHeader
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    key: String,
}

fn set_cookie(headers: &HeaderMap, value: &str, max_age: u64) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /console/session`: the admin key for a session cookie.
pub async fn sign_in(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(SignIn { key }) = serde_json::from_slice::<SignIn>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "expected {\"key\": \"<admin key>\"}",
        );
    };
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        key.trim().as_bytes(),
        state.admin_key.as_bytes(),
    )
    .is_ok();
    if !ok {
        tracing::warn!("console sign-in with a wrong admin key");
        return problem(StatusCode::UNAUTHORIZED, "that is not the admin key");
    }
    let value = session_value(&state.admin_key, unix_now() + SESSION_S);
    let mut resp = with_headers(StatusCode::NO_CONTENT.into_response());
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&headers, &value, SESSION_S));
    resp
}

/// `GET /console/session`: whether the cookie is a session (the page asks when it loads).
pub async fn check(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    match authorize(&state.admin_key, &Method::GET, &headers) {
        Authorized::Session => with_headers(StatusCode::NO_CONTENT.into_response()),
        _ => problem(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// `DELETE /console/session`: the browser forgets the cookie.
pub async fn sign_out(headers: HeaderMap) -> Response {
    let mut resp = with_headers(StatusCode::NO_CONTENT.into_response());
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&headers, "", 0));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let cookie = format!("other=1; {COOKIE}={value}");
        h.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        h
    }

    #[test]
    fn a_session_is_bound_to_the_key_and_its_expiry() {
        let now = 1_800_000_000;
        let value = session_value(KEY, now + 60);
        assert!(session_valid(KEY, &value, now));
        assert!(!session_valid("another key entirely, rotated", &value, now));
        assert!(!session_valid(KEY, &value, now + 61), "expired");
        let (expires, tag) = value.split_once('.').unwrap();
        let stretched = format!("{}.{tag}", expires.parse::<u64>().unwrap() + 1);
        assert!(!session_valid(KEY, &stretched, now), "an expiry is signed");
        let far = session_value(KEY, now + SESSION_S + 10);
        assert!(
            !session_valid(KEY, &far, now),
            "no longer than a session lasts"
        );
        for junk in ["", ".", "abc", "1.", "x.y", "99999999999999999999999.AAAA"] {
            assert!(!session_valid(KEY, junk, now), "{junk:?}");
        }
    }

    #[test]
    fn a_cookie_changes_nothing_without_the_consoles_header() {
        let value = session_value(KEY, unix_now() + 60);
        let mut headers = with_cookie(&value);
        assert_eq!(authorize(KEY, &Method::GET, &headers), Authorized::Session);
        assert_eq!(
            authorize(KEY, &Method::POST, &headers),
            Authorized::SessionWithoutHeader
        );
        headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert_eq!(authorize(KEY, &Method::POST, &headers), Authorized::Session);
        assert_eq!(
            authorize("rotated-key-rotated-key", &Method::GET, &headers),
            Authorized::No
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert_eq!(authorize(KEY, &Method::GET, &bearer), Authorized::No);
    }
}
