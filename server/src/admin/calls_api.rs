//! `/calls` and `/calls.csv` on the admin API: the call records, filtered by arrival time,
//! queue, agent and outcome, newest first, a page at a time (JSON) or all at once (CSV).
//! Every parameter is checked before any SQL runs: one that does not parse is a 400 problem
//! naming it, never a 500 or a silently ignored filter.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::Connection;
use serde_json::json;

use super::api::{AdminState, problem};
use crate::records::record::{CSV_HEADER, csv_line, rfc3339};
use crate::records::store::{self, Cursor, Filter, MAX_EXPORT};

/// A page's size when the request names none, and the largest a page may be.
const PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

const OUTCOMES: [&str; 4] = ["answered", "abandoned", "timed-out", "refused"];

/// The admin API's own connection to the store, for reading records.
#[derive(Debug, Clone)]
pub struct CallsDb(Arc<Mutex<Connection>>);

impl CallsDb {
    pub fn open(path: &Path) -> rusqlite::Result<CallsDb> {
        Ok(CallsDb(Arc::new(Mutex::new(store::open(path)?))))
    }

    async fn query(
        &self,
        filter: Filter,
    ) -> Result<(Vec<crate::records::CallRecord>, Option<Cursor>), Response> {
        let db = self.0.clone();
        let result = tokio::task::spawn_blocking(move || {
            let db = db.lock().unwrap_or_else(|p| p.into_inner());
            store::query(&db, &filter)
        })
        .await;
        match result {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(e)) => Err(read_failed(&e)),
            Err(e) => Err(read_failed(&e)),
        }
    }
}

/// A time parameter: RFC 3339, or Unix milliseconds.
fn time_param(name: &str, value: &str) -> Result<u64, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| format!("{name}: {value} is too large"));
    }
    rfc3339::parse(value).ok_or_else(|| {
        format!("{name}: {value:?} is neither an RFC 3339 time (2026-12-07T14:05:00Z) nor Unix milliseconds")
    })
}

/// The filter a request's parameters describe; `default_limit` when it names none.
fn filter(
    params: &HashMap<String, String>,
    default_limit: u32,
    max: u32,
) -> Result<Filter, String> {
    let mut f = Filter {
        limit: default_limit,
        ..Filter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "from" => f.from = Some(time_param(name, value)?),
            "to" => f.to = Some(time_param(name, value)?),
            "queue" => f.queue = Some(value.clone()),
            "agent" => f.agent = Some(value.clone()),
            "outcome" if OUTCOMES.contains(&value.as_str()) => f.outcome = Some(value.clone()),
            "outcome" => {
                return Err(format!(
                    "outcome: {value:?} is not one of {}",
                    OUTCOMES.join(", ")
                ));
            }
            "limit" => {
                f.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=max).contains(l))
                    .ok_or_else(|| format!("limit: {value:?} is not a number from 1 to {max}"))?;
            }
            "cursor" => {
                f.cursor = Some(Cursor::decode(value).ok_or_else(|| {
                    "cursor: not one this API gave (use `next` as it is)".to_owned()
                })?);
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: from, to, queue, agent, outcome, limit, cursor"
                ));
            }
        }
    }
    if let (Some(from), Some(to)) = (f.from, f.to)
        && from >= to
    {
        return Err("from must be before to".into());
    }
    Ok(f)
}

pub async fn list(
    State(state): State<AdminState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let f = match filter(&params, PAGE, MAX_PAGE) {
        Ok(f) => f,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    match state.calls.query(f).await {
        Ok((calls, next)) => {
            let body = json!({ "calls": calls, "next": next.map(Cursor::encode) });
            axum::Json(body).into_response()
        }
        Err(resp) => resp,
    }
}

/// `GET /calls/summary?from=&to=`: per queue, calls by outcome and those answered within
/// the service-level target, for the console's wallboard (service level today).
pub async fn summary(
    State(state): State<AdminState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut from = 0;
    let mut to = u64::MAX;
    for (name, value) in &params {
        let parsed = match name.as_str() {
            "from" => time_param(name, value).map(|t| from = t),
            "to" => time_param(name, value).map(|t| to = t),
            other => Err(format!("unknown parameter {other:?}: from, to")),
        };
        if let Err(detail) = parsed {
            return problem(StatusCode::BAD_REQUEST, &detail);
        }
    }
    let target = state.metrics.service_level();
    let target_ms = u64::try_from(target.as_millis()).unwrap_or(u64::MAX);
    let db = state.calls.0.clone();
    let result = tokio::task::spawn_blocking(move || {
        let db = db.lock().unwrap_or_else(|p| p.into_inner());
        store::summary(&db, from, to, target_ms)
    })
    .await;
    match result {
        Ok(Ok(queues)) => axum::Json(json!({
            "service_level_s": target.as_secs(),
            "queues": queues,
        }))
        .into_response(),
        Ok(Err(e)) => read_failed(&e),
        Err(e) => read_failed(&e),
    }
}

fn read_failed(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "reading call records failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "reading the call records failed",
    )
}

pub async fn csv(
    State(state): State<AdminState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let f = match filter(&params, MAX_EXPORT, MAX_EXPORT) {
        Ok(f) => f,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
    };
    match state.calls.query(f).await {
        Ok((calls, _)) => {
            let mut body = csv_line(CSV_HEADER.into_iter());
            for call in &calls {
                body.push_str(&call.csv_row());
            }
            let mut resp = (StatusCode::OK, body).into_response();
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            headers.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"calls.csv\""),
            );
            resp
        }
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_that_do_not_parse_are_named() {
        for (pairs, names) in [
            (vec![("from", "yesterday")], "from"),
            (vec![("to", "2026-13-01T00:00:00Z")], "to"),
            (vec![("limit", "abc")], "limit"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "1001")], "limit"),
            (vec![("cursor", "garbage!")], "cursor"),
            (vec![("outcome", "nonsense")], "outcome"),
            (vec![("queu", "x")], "queu"),
            (
                vec![
                    ("from", "2026-12-07T15:00:00Z"),
                    ("to", "2026-12-07T14:00:00Z"),
                ],
                "from",
            ),
        ] {
            let e = filter(&params(&pairs), PAGE, MAX_PAGE).unwrap_err();
            assert!(e.contains(names), "{pairs:?}: {e}");
        }
        let f = filter(
            &params(&[
                ("from", "1796652000000"),
                ("to", "2026-12-07T15:00:00Z"),
                ("limit", "5"),
            ]),
            PAGE,
            MAX_PAGE,
        )
        .unwrap();
        assert_eq!(
            (f.from, f.to, f.limit),
            (Some(1_796_652_000_000), Some(1_796_655_600_000), 5)
        );
    }
}
