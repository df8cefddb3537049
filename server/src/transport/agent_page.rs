//! The agent page's files and the headers it is served with. The edge serves them on its own
//! HTTPS listener and, for an exposed edge, answers the distributor's requests for them over
//! the tunnel; the distributor sets the same headers on what it relays.

use axum::http::header;
use axum::response::Response;

const PAGE: &str = include_str!("../../../agent-web/index.html");
const STYLE: &str = include_str!("../../../agent-web/style.css");
/// JsSIP and the page's script, bundled by `build.rs`.
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/app.js"));

/// The file at `path` (relative to the page: `""`, `app.js`, `style.css`) and its media type.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "" | "index.html" => Some(("text/html; charset=utf-8", PAGE)),
        "app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "style.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// The page holds the agent's token and its microphone: it runs only its own script and
/// style (no inline code, so injected markup cannot run), connects only to its own origin and
/// secure WebSockets, is never framed (clickjacking), and leaks nothing in a Referer.
const HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; connect-src 'self' wss:; media-src 'self' blob:; \
         img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'none'",
    ),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Adds the page's security headers to a response (an axum `map_response` layer).
pub async fn with_headers(mut response: Response) -> Response {
    for (name, value) in HEADERS {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    response
}
